// Packed sequences: the packing helper (data/packing.h), attention with segment ids where a
// query meets no key at all, and whole models — a packed row must compute exactly what its
// examples compute alone: logits, loss (token-weighted) and every parameter gradient.
// The op itself is checked against PyTorch in test_ops.cpp (ops_reference.py's "_packed" and
// "_scattered" cases) and by finite differences in test_gradcheck.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "data/packing.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "ops/ops.h"
#include "tests/test_util.h"

using namespace kotoba;
using namespace kotoba::testing;

namespace {

// n_examples random examples of 2..max_len tokens in [0, vocab); each masks a random prompt
// prefix (labels -100) that always leaves its last token as a target.
std::vector<data::PackingExample> random_examples(Generator& gen, int n_examples, int max_len, int32_t vocab) {
  std::vector<data::PackingExample> examples;
  for (int i = 0; i < n_examples; ++i) {
    const int n = 2 + int(gen.uniform() * float(max_len - 1)) % (max_len - 1);
    const int prompt = int(gen.uniform() * float(n - 1)) % (n - 1);
    data::PackingExample e;
    for (int t = 0; t < n; ++t) {
      e.ids.push_back(int32_t(gen.uniform() * float(vocab)) % vocab);
      e.labels.push_back(t < prompt ? -100 : e.ids.back());
    }
    examples.push_back(std::move(e));
  }
  return examples;
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

TEST(Packing, RowsHoldEveryExampleOnceWithPositionsSegmentsAndShiftedTargets) {
  Generator gen(test_seed() ^ 0x9ac1);
  const int64_t L = 24;
  auto examples = random_examples(gen, 40, int(L), 1000);
  examples.push_back({std::vector<int32_t>(size_t(L), 7), std::vector<int32_t>(size_t(L), 7)});  // fills a row
  const data::PackedExamples packed = data::pack_examples(examples, L, /*pad_id=*/-1);
  const int64_t R = int64_t(packed.rows.size());
  ASSERT_EQ(packed.batch.ids.shape(), Shape({R, L}));
  for (const Tensor* t : {&packed.batch.targets, &packed.batch.positions, &packed.batch.segments})
    ASSERT_EQ(t->shape(), Shape({R, L}));
  const auto ids = ints(packed.batch.ids), targets = ints(packed.batch.targets),
             positions = ints(packed.batch.positions), segments = ints(packed.batch.segments);
  std::vector<int> seen(examples.size(), 0);
  int64_t tokens = 0;
  for (int64_t r = 0; r < R; ++r) {
    int64_t at = r * L, row_tokens = 0;
    int32_t segment = 0;
    for (size_t index : packed.rows[size_t(r)]) {
      ASSERT_LT(index, examples.size());
      ++seen[index];
      ++segment;
      const auto& e = examples[index];
      const int64_t n = int64_t(e.ids.size());
      row_tokens += n;
      ASSERT_LE(row_tokens, L) << "row " << r << " exceeds max_length";
      for (int64_t t = 0; t < n; ++t) {
        const size_t i = size_t(at + t);
        EXPECT_EQ(ids[i], e.ids[size_t(t)]) << "example " << index << " token " << t;
        EXPECT_EQ(positions[i], t) << "example " << index << " token " << t;
        EXPECT_EQ(segments[i], segment) << "example " << index << " token " << t;
        // the last token must not predict the next example's first token
        EXPECT_EQ(targets[i], t + 1 < n ? e.labels[size_t(t + 1)] : -100) << "example " << index << " token " << t;
      }
      at += n;
    }
    for (int64_t i = at; i < (r + 1) * L; ++i) {  // padding
      EXPECT_EQ(ids[size_t(i)], -1);
      EXPECT_EQ(segments[size_t(i)], 0);
      EXPECT_EQ(positions[size_t(i)], 0);
      EXPECT_EQ(targets[size_t(i)], -100);
    }
    tokens += row_tokens;
  }
  for (size_t i = 0; i < examples.size(); ++i) EXPECT_EQ(seen[i], 1) << "example " << i;
  // First fit: no example could have gone into an earlier row than the one it is in.
  std::vector<int64_t> used(size_t(R), 0);
  std::map<size_t, int64_t> row_of;
  for (int64_t r = 0; r < R; ++r)
    for (size_t index : packed.rows[size_t(r)]) row_of[index] = r;
  for (size_t i = 0; i < examples.size(); ++i) {
    const int64_t n = int64_t(examples[i].ids.size()), r = row_of[i];
    for (int64_t earlier = 0; earlier < r; ++earlier)
      EXPECT_GT(used[size_t(earlier)] + n, L) << "example " << i << " fits row " << earlier << " but went to " << r;
    used[size_t(r)] += n;
  }
  EXPECT_LT(R * L - tokens, L * 2 + tokens / 2) << "first fit left far too much padding";
}

TEST(Packing, RejectsExamplesItCannotPackNamingTheIndex) {
  std::vector<data::PackingExample> examples = {{{1, 2}, {1, 2}}, {{1, 2, 3, 4, 5}, {1, 2, 3, 4, 5}}};
  try {
    data::pack_examples(examples, 4);
    FAIL() << "an example longer than max_length was packed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("example 1 has 5 tokens"), std::string::npos) << e.what();
  }
  examples[1] = {{1, 2}, {1}};
  EXPECT_THROW(data::pack_examples(examples, 4), Error);
  examples[1] = {{}, {}};
  EXPECT_THROW(data::pack_examples(examples, 4), Error);
  EXPECT_EQ(data::pack_examples({}, 4).batch.ids.shape(), Shape({0, 4}));
}

// A query row whose every key is masked (key_mask drops its whole segment) gets output 0 and
// no gradient, and nothing becomes NaN.
TEST(PackedAttention, FullyMaskedQueriesGiveZeroNotNaN) {
  Generator gen(test_seed() ^ 0x9ac2);
  const int64_t B = 1, H = 2, T = 6, D = 8;
  Tensor q = random_normal({B, H, T, D}, gen).set_requires_grad(true);
  Tensor k = random_normal({B, H, T, D}, gen).set_requires_grad(true);
  Tensor v = random_normal({B, H, T, D}, gen).set_requires_grad(true);
  Tensor segments = Tensor::from_vector_i32({1, 1, 1, 2, 2, 2}, {B, T});
  Tensor key_mask = Tensor::from_vector_i32({1, 1, 1, 0, 0, 0}, {B, T});  // segment 2 sees nothing
  for (bool causal : {true, false}) {
    Tensor out = scaled_dot_product_attention(q, k, v, causal, key_mask, std::numeric_limits<float>::quiet_NaN(), 0,
                                              segments);
    sum(mul(out, random_normal(out.shape(), gen))).backward();
    const auto o = out.to_vector();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) {
          const float x = o[size_t((h * T + t) * D + d)];
          ASSERT_TRUE(std::isfinite(x));
          if (t >= 3) {
            EXPECT_EQ(x, 0.0f) << "masked query " << t;
          }
        }
    const auto dq = q.grad().to_vector();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) {
          ASSERT_TRUE(std::isfinite(dq[size_t((h * T + t) * D + d)]));
          if (t >= 3) {
            EXPECT_EQ(dq[size_t((h * T + t) * D + d)], 0.0f);
          }
        }
    for (const Tensor* g : {&k, &v})
      for (float x : g->grad().to_vector()) ASSERT_TRUE(std::isfinite(x));
    for (Tensor* t : {&q, &k, &v}) t->zero_grad();
  }
}

TEST(PackedAttention, RejectsSegmentsItCannotUse) {
  Generator gen(test_seed() ^ 0x9ac3);
  Tensor q = random_normal({1, 2, 4, 8}, gen), kv = random_normal({1, 2, 6, 8}, gen);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // against a cache (T != S) there is no one row of segment ids for queries and keys
  EXPECT_THROW(scaled_dot_product_attention(q, kv, kv, true, Tensor(), nan, 0, Tensor::from_vector_i32(
                   std::vector<int32_t>(6, 1), {1, 6})), Error);
  EXPECT_THROW(scaled_dot_product_attention(q, q, q, true, Tensor(), nan, 0, Tensor::from_vector_i32(
                   std::vector<int32_t>(5, 1), {1, 5})), Error);
  EXPECT_THROW(attention_packed_qkv(random_normal({1, 4, 24}, gen), 2, true, Tensor(),
                                    Tensor::from_vector({1, 1, 1, 1}, {1, 4})), Error);
  clear_tape();
}

// ---- models ----

// max |a - b| / rms(b) over the whole tensor.
double relative_to_rms(const std::vector<float>& a, const std::vector<float>& b) {
  double sq = 0, worst = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    sq += double(b[i]) * b[i];
    worst = std::max(worst, std::abs(double(a[i]) - double(b[i])));
  }
  const double rms = std::sqrt(sq / double(std::max<size_t>(1, b.size())));
  return rms > 0 ? worst / rms : worst;
}

// Runs the packed batch and each example alone through `model` and compares logits, the loss
// and every parameter gradient.
void expect_packed_equals_separate(nn::CausalLM& model, const std::vector<data::PackingExample>& examples,
                                   int64_t max_length) {
  const data::PackedExamples packed = data::pack_examples(examples, max_length);
  ASSERT_GE(packed.rows.size(), 2u) << "the test wants several rows";
  const int64_t V = model.vocab_size(), L = max_length;

  // Logits: each example's slice of its packed row equals its logits alone.
  const auto packed_logits = model.packed_logits(packed.batch.ids, packed.batch.positions, packed.batch.segments)
                                 .to_vector();
  clear_tape();
  for (size_t r = 0; r < packed.rows.size(); ++r) {
    int64_t at = int64_t(r) * L;
    for (size_t index : packed.rows[r]) {
      const auto& e = examples[index];
      const int64_t n = int64_t(e.ids.size());
      const auto alone = model.logits(Tensor::from_vector_i32(e.ids, {1, n})).to_vector();
      clear_tape();
      const std::vector<float> slice(packed_logits.begin() + at * V, packed_logits.begin() + (at + n) * V);
      EXPECT_LE(relative_to_rms(slice, alone), 1e-5) << model.model_type() << " example " << index << " (" << n
                                                     << " tokens) in row " << r << " at " << at - int64_t(r) * L;
      at += n;
    }
  }

  // Loss and gradients: the packed loss against the token-weighted mean of the examples' losses,
  // whose gradient is the sum of each example's gradient weighted by its share of the targets.
  std::vector<std::pair<std::string, Tensor>> params = model.named_parameters();
  model.zero_grad();
  Tensor packed_loss = model.packed_loss(packed.batch);
  const double packed_value = packed_loss.to_vector()[0];
  packed_loss.backward();
  std::vector<std::vector<float>> packed_grads;
  for (auto& [name, p] : params) {
    ASSERT_TRUE(p.grad().defined()) << name << " got no gradient from the packed loss";
    packed_grads.push_back(p.grad().to_vector());
  }

  model.zero_grad();
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const auto& e : examples) {
    int64_t c = 0;
    for (size_t t = 1; t < e.labels.size(); ++t) c += e.labels[t] != -100;
    counts.push_back(c);
    total += c;
  }
  double weighted = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    if (counts[i] == 0) continue;
    const auto& e = examples[i];
    const int64_t n = int64_t(e.ids.size());
    std::vector<int32_t> targets(size_t(n), -100);
    for (int64_t t = 0; t + 1 < n; ++t) targets[size_t(t)] = e.labels[size_t(t + 1)];
    Tensor loss = model.loss(Tensor::from_vector_i32(e.ids, {1, n}), Tensor::from_vector_i32(targets, {1, n}));
    const double share = double(counts[i]) / double(total);
    weighted += share * loss.to_vector()[0];
    scale(loss, float(share)).backward();
  }
  EXPECT_NEAR(packed_value, weighted, 1e-5 * std::abs(weighted)) << model.model_type();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor g = params[i].second.grad();
    ASSERT_TRUE(g.defined()) << params[i].first;
    EXPECT_LE(relative_to_rms(packed_grads[i], g.to_vector()), 1e-5) << model.model_type() << " " << params[i].first;
  }
  model.zero_grad();
}

TEST(PackedModels, Gpt2PackedRowsEqualExamplesAlone) {
  Generator gen(test_seed() ^ 0x9ac4);
  nn::GPT2 model({.vocab_size = 61, .n_positions = 32, .n_embd = 32, .n_layer = 2, .n_head = 4,
                  .seed = test_seed() ^ 0x61e2});
  expect_packed_equals_separate(model, random_examples(gen, 9, 12, 61), 20);
}

TEST(PackedModels, LlamaPackedRowsEqualExamplesAlone) {
  Generator gen(test_seed() ^ 0x9ac5);
  nn::LlamaConfig c;
  c.vocab_size = 53;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // GQA
  c.max_position_embeddings = 64;
  c.seed = test_seed() ^ 0x61e2;
  nn::Llama llama(c);
  expect_packed_equals_separate(llama, random_examples(gen, 9, 12, 53), 20);
}

// Mistral's window counts positions within the example: a packed row matches the examples alone
// with a window shorter than they are.
TEST(PackedModels, MistralSlidingWindowStaysWithinTheExample) {
  Generator gen(test_seed() ^ 0x9ac6);
  nn::LlamaConfig c;
  c.model_type = "mistral";
  c.vocab_size = 47;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  c.sliding_window = 3;
  c.seed = test_seed() ^ 0x61e2;
  nn::Llama mistral(c);
  expect_packed_equals_separate(mistral, random_examples(gen, 8, 12, 47), 20);
}

TEST(PackedModels, RejectsPositionsOutsideTheModel) {
  nn::GPT2 model({.vocab_size = 11, .n_positions = 8, .n_embd = 16, .n_layer = 1, .n_head = 2});
  Tensor ids = Tensor::from_vector_i32({1, 2, 3, 4}, {1, 4}), segments = Tensor::from_vector_i32({1, 1, 2, 2}, {1, 4});
  EXPECT_THROW(model.packed_logits(ids, Tensor::from_vector_i32({0, 1, 0, 8}, {1, 4}), segments), Error);
  EXPECT_THROW(model.packed_logits(ids, Tensor::from_vector_i32({0, 1, 0}, {1, 3}), segments), Error);
  EXPECT_THROW(model.packed_logits(ids, Tensor::from_vector_i32({0, 1, 0, 1}, {1, 4}), Tensor()), Error);
  clear_tape();
}

}  // namespace
