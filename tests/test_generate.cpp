// Generation: the KV cache against full recomputation and against PyTorch greedy decoding
// (tests/reference/generate_reference.py), the logits processors and samplers against float64
// computations of HF transformers' semantics, batched decoding against one prompt at a time,
// stop strings and text streaming. (tests/test_generate_hf.cpp compares with transformers itself.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <set>

#include "infer/generate.h"
#include "io/safetensors.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "small_models.h"
#include "test_util.h"

using namespace kotoba;
using infer::GenerationOptions;

namespace {

std::vector<int32_t> ids_of(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = int32_t(gen.uniform() * float(vocab)) % int32_t(vocab);
  return ids;
}

using kotoba::testing::small_gpt2;
using kotoba::testing::small_llama;

// Softmax in float64 (-inf -> 0).
std::vector<double> probabilities(const std::vector<float>& scores) {
  double top = *std::max_element(scores.begin(), scores.end()), total = 0;
  std::vector<double> p(scores.size(), 0.0);
  for (size_t i = 0; i < p.size(); ++i) total += p[i] = std::exp(double(scores[i]) - top);
  for (auto& x : p) x /= total;
  return p;
}

}  // namespace

TEST(GPT2, GreedyDecodingWithKVCacheMatchesPyTorch) {
  auto path = std::filesystem::path(KOTOBA_REFERENCE_DIR) / "generate_golden.safetensors";
  ASSERT_TRUE(std::filesystem::exists(path))
      << "missing " << path << ": the PyTorch reference was not generated. Run scripts/test (it creates "
      << "~/.cache/kotoba-ref with PyTorch) or: python3 tests/reference/generate_reference.py " << KOTOBA_REFERENCE_DIR;
  SafeTensors golden = load_safetensors(path.string());
  auto meta = [&](const char* key) { return std::stoll(golden.metadata.at(key)); };
  const std::string seed = golden.metadata.at("seed");
  nn::GPT2 model({.vocab_size = meta("vocab_size"),
                  .n_positions = meta("n_positions"),
                  .n_embd = meta("n_embd"),
                  .n_layer = meta("n_layer"),
                  .n_head = meta("n_head")});
  for (auto& [name, p] : model.named_parameters()) {
    auto it = golden.tensors.find("param." + name);
    ASSERT_NE(it, golden.tensors.end()) << "reference lacks parameter " << name;
    ASSERT_EQ(it->second.shape(), p.shape()) << name;
    p.copy_from(it->second);
  }
  std::vector<int32_t> prompt = ids_of(golden.tensors.at("prompt"));
  std::vector<int32_t> expected = ids_of(golden.tensors.at("greedy"));
  std::vector<int32_t> streamed;
  GenerationOptions greedy{.max_new_tokens = int64_t(expected.size())};
  auto result = infer::generate(model, prompt, greedy, [&](int32_t id) {
    streamed.push_back(id);
    return true;
  });
  EXPECT_EQ(result.ids, expected) << "seed " << seed;
  EXPECT_EQ(streamed, result.ids);
  EXPECT_EQ(result.finish_reason, infer::FinishReason::length);

  GenerationOptions penalised = greedy;
  penalised.repetition_penalty = std::stof(golden.metadata.at("repetition_penalty"));
  EXPECT_EQ(infer::generate(model, prompt, penalised).ids, ids_of(golden.tensors.at("greedy_penalty")))
      << "seed " << seed;

  // The cached logits of the whole decoded sequence (prefill, then one token at a time) against
  // PyTorch's float64 logits.
  std::vector<int32_t> sequence = prompt;
  sequence.insert(sequence.end(), expected.begin(), expected.end());
  nn::GPT2KVCache cache = model.make_kv_cache(1);
  const int64_t P = int64_t(prompt.size()), V = model.config().vocab_size;
  std::vector<float> cached = model.logits_cached(Tensor::from_vector_i32(prompt, {1, P}), cache).to_vector();
  for (size_t t = prompt.size(); t < sequence.size(); ++t) {
    auto step = model.logits_cached(Tensor::from_vector_i32({sequence[t]}, {1, 1}), cache).to_vector();
    cached.insert(cached.end(), step.begin(), step.end());
  }
  const Tensor& ref = golden.tensors.at("logits");
  ASSERT_EQ(int64_t(cached.size()), ref.numel());
  ASSERT_EQ(ref.size(1), V);
  const double* r = ref.data<double>();
  for (size_t i = 0; i < cached.size(); ++i)
    ASSERT_NEAR(cached[i], r[i], 1e-4 + 1e-4 * std::abs(r[i]))
        << "logit " << i % size_t(V) << " of position " << i / size_t(V) << ", seed " << seed;
}

TEST(Generate, KVCacheLogitsEqualFullRecompute) {
  auto model = small_gpt2(21);
  const int64_t B = 2, T = 32, P = 9;  // 9 + 11 single steps + 4 chunks of 3
  std::vector<int32_t> ids = random_ids(B * T, 89, 5);
  Tensor full;
  {
    NoGradGuard no_grad;
    model->eval();
    full = model->logits(Tensor::from_vector_i32(ids, {B, T}));
    model->train();
  }
  const int64_t V = full.size(2);
  const float* f = full.data<float>();
  // Grad mode on and the model in training mode: the cached path must still record nothing.
  nn::GPT2KVCache cache = model->make_kv_cache(B, T);
  int64_t t = 0;
  double worst = 0;
  while (t < T) {
    const int64_t n = t == 0 ? P : (t < 20 ? 1 : 3);  // prefill, single tokens, then chunks
    std::vector<int32_t> chunk;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < n; ++i) chunk.push_back(ids[size_t(b * T + t + i)]);
    Tensor step = model->logits_cached(Tensor::from_vector_i32(chunk, {B, n}), cache);
    EXPECT_FALSE(step.requires_grad());
    ASSERT_EQ(step.shape(), Shape({B, n, V}));
    ASSERT_EQ(cache.length, t + n);
    const float* s = step.data<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t v = 0; v < V; ++v) {
          double d = std::abs(double(s[(b * n + i) * V + v]) - double(f[(b * T + t + i) * V + v]));
          worst = std::max(worst, d);
        }
    t += n;
  }
  EXPECT_LE(worst, 1e-5) << "largest |cached - recomputed| logit difference";
  EXPECT_THROW(model->logits_cached(Tensor::from_vector_i32({1, 2}, {B, 1}), cache), Error) << "cache is full";

  // last_only returns the final position's row.
  nn::GPT2KVCache again = model->make_kv_cache(B, T);
  Tensor last = model->logits_cached(Tensor::from_vector_i32(ids, {B, T}), again, /*last_only=*/true);
  ASSERT_EQ(last.shape(), Shape({B, 1, V}));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t v = 0; v < V; ++v) EXPECT_NEAR(last.data<float>()[b * V + v], f[(b * T + T - 1) * V + v], 1e-5);
}

TEST(Generate, CachedAndRecomputedDecodingChooseTheSameTokens) {
  auto model = small_gpt2(4, /*dropout=*/0.1f);  // the decoder must switch dropout off
  std::vector<int32_t> prompt = random_ids(5, 89, 8);
  GenerationOptions o{.max_new_tokens = 30, .do_sample = true, .top_k = 20, .top_p = 0.9f, .seed = 77};
  auto cached = infer::generate(*model, prompt, o);
  o.use_kv_cache = false;
  auto recomputed = infer::generate(*model, prompt, o);
  EXPECT_EQ(cached.ids, recomputed.ids);
  EXPECT_EQ(cached.ids.size(), 30u);
  EXPECT_TRUE(model->training()) << "generate must restore the model's mode";
}

TEST(Generate, TopKOneEqualsGreedy) {
  auto model = small_gpt2(12);
  std::vector<int32_t> prompt = random_ids(4, 89, 3);
  auto greedy = infer::generate(*model, prompt, {.max_new_tokens = 25});
  for (uint64_t seed : {1, 2, 3}) {
    GenerationOptions o{.max_new_tokens = 25, .do_sample = true, .temperature = 1.7f, .top_k = 1, .seed = seed};
    EXPECT_EQ(infer::generate(*model, prompt, o).ids, greedy.ids) << "seed " << seed;
  }
}

TEST(Generate, TemperatureTowardsZeroApproachesGreedy) {
  auto model = small_gpt2(13);
  std::vector<int32_t> prompt = random_ids(6, 89, 4);
  auto greedy = infer::generate(*model, prompt, {.max_new_tokens = 25});
  GenerationOptions o{.max_new_tokens = 25, .do_sample = true, .temperature = 1e-3f, .seed = 9};
  EXPECT_EQ(infer::generate(*model, prompt, o).ids, greedy.ids);
  // On one distribution: the argmax's share of samples grows to 1 as the temperature falls.
  std::vector<float> logits = {1.0f, 2.0f, 1.5f, 0.3f};
  double previous_share = 0;
  for (float temperature : {2.0f, 1.0f, 0.3f, 0.05f}) {
    Generator gen(5);
    int hits = 0;
    for (int i = 0; i < 4000; ++i) {
      std::vector<float> s = logits;
      infer::Temperature(temperature).apply({}, s);
      hits += infer::sample_from_scores(s, gen) == 1;
    }
    double share = hits / 4000.0;
    EXPECT_GT(share, previous_share) << "temperature " << temperature;
    previous_share = share;
  }
  EXPECT_GT(previous_share, 0.999);
}

TEST(Generate, SamplingIsDeterministicForASeed) {
  auto model = small_gpt2(14);
  std::vector<int32_t> prompt = random_ids(3, 89, 6);
  GenerationOptions o{.max_new_tokens = 40, .do_sample = true, .temperature = 1.2f, .seed = 1234};
  auto a = infer::generate(*model, prompt, o), b = infer::generate(*model, prompt, o);
  EXPECT_EQ(a.ids, b.ids);
  o.seed = 4321;
  EXPECT_NE(infer::generate(*model, prompt, o).ids, a.ids);
}

TEST(Generate, TopPMatchesHFSemanticsInFloat64) {
  // HF TopPLogitsWarper, written out in float64: sort ascending, cumulative softmax, remove the
  // tokens whose cumulative probability is <= 1 - top_p, never the most probable one.
  auto hf_keep = [](const std::vector<float>& scores, double top_p) {
    std::vector<size_t> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
    std::vector<double> p = probabilities(scores);
    std::vector<bool> keep(scores.size(), true);
    double cum = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      cum += p[order[i]];
      if (cum <= 1.0 - top_p && i + 1 < order.size()) keep[order[i]] = false;
    }
    return keep;
  };
  Generator gen(31);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t V = 2 + size_t(gen.uniform() * 60);
    std::vector<float> scores(V);
    for (auto& s : scores) s = 3.0f * gen.normal();
    const float top_p = trial % 10 == 0 ? 1e-4f : 0.05f + 0.9f * gen.uniform();
    std::vector<bool> expected = hf_keep(scores, double(top_p));
    std::vector<float> filtered = scores;
    infer::TopP(top_p).apply({}, filtered);
    size_t kept = 0;
    double mass = 0;
    std::vector<double> p = probabilities(scores);
    for (size_t i = 0; i < V; ++i) {
      ASSERT_EQ(std::isfinite(filtered[i]), bool(expected[i])) << "trial " << trial << " token " << i;
      if (expected[i]) {
        ASSERT_EQ(filtered[i], scores[i]);
        ++kept, mass += p[i];
      }
    }
    EXPECT_GE(kept, 1u);
    // The smallest set: the kept mass reaches top_p, and without its least probable member it would not.
    if (kept > 1) {
      double least = 1;
      for (size_t i = 0; i < V; ++i)
        if (expected[i]) least = std::min(least, p[i]);
      EXPECT_GE(mass, double(top_p) - 1e-12);
      EXPECT_LT(mass - least, double(top_p) + 1e-12);
    }
  }
  // Hand-made: probabilities 0.5, 0.25, 0.15, 0.1.
  std::vector<float> scores = {std::log(0.15f), std::log(0.5f), std::log(0.1f), std::log(0.25f)};
  auto kept_with = [&](float top_p) {
    std::vector<float> s = scores;
    infer::TopP(top_p).apply({}, s);
    std::vector<int> kept;
    for (size_t i = 0; i < s.size(); ++i)
      if (std::isfinite(s[i])) kept.push_back(int(i));
    return kept;
  };
  EXPECT_EQ(kept_with(0.3f), std::vector<int>({1}));
  EXPECT_EQ(kept_with(0.6f), std::vector<int>({1, 3}));
  EXPECT_EQ(kept_with(0.8f), std::vector<int>({0, 1, 3}));
  EXPECT_EQ(kept_with(0.95f), std::vector<int>({0, 1, 2, 3}));
  EXPECT_EQ(kept_with(1e-6f), std::vector<int>({1})) << "always at least one token";
}

TEST(Generate, TopKKeepsTheKLargestAndTheirTies) {
  std::vector<float> s = {0.5f, 3.0f, -1.0f, 2.0f, 2.0f, 0.1f};
  infer::TopK(2).apply({}, s);
  EXPECT_TRUE(std::isinf(s[0]) && std::isinf(s[2]) && std::isinf(s[5]));
  EXPECT_EQ(s[1], 3.0f);
  EXPECT_EQ(s[3], 2.0f);
  EXPECT_EQ(s[4], 2.0f) << "a tie with the k-th largest is kept, as in HF";
  std::vector<float> all = {1, 2, 3};
  infer::TopK(10).apply({}, all);
  EXPECT_EQ(all, std::vector<float>({1, 2, 3}));
  EXPECT_THROW(infer::TopK(0), Error);
}

TEST(Generate, TopKSampleFrequenciesMatchRenormalisedProbabilities) {
  Generator draw(17);
  std::vector<float> logits(40);
  for (auto& l : logits) l = 1.5f * draw.normal();
  const int64_t k = 6;
  std::vector<float> filtered = logits;
  infer::TopK(k).apply({}, filtered);
  std::vector<double> expected = probabilities(filtered);  // renormalised over the top k
  Generator gen(99);
  const int N = 60000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < N; ++i) ++counts[size_t(infer::sample_from_scores(filtered, gen))];
  double chi2 = 0;
  int cells = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (expected[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the top k";
      continue;
    }
    double e = expected[i] * N;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  EXPECT_EQ(cells, k);
  // k - 1 = 5 degrees of freedom: P(chi2 > 30) is about 1.5e-5.
  EXPECT_LT(chi2, 30.0) << "sample frequencies differ from the renormalised top-k probabilities";
}

TEST(Generate, RepetitionPenaltyFollowsHF) {
  std::vector<float> s = {2.0f, -1.0f, 0.5f, 3.0f};
  std::vector<int32_t> context = {0, 1, 1, 0};  // repeated tokens are penalised once
  infer::RepetitionPenalty(2.0f).apply(context, s);
  EXPECT_EQ(s, std::vector<float>({1.0f, -2.0f, 0.5f, 3.0f}));
  EXPECT_THROW(infer::RepetitionPenalty(0.0f), Error);
}

TEST(Generate, StopsOnEosMaxNewTokensContextAndCallback) {
  auto model = small_gpt2(15);
  std::vector<int32_t> prompt = random_ids(10, 89, 7);
  auto greedy = infer::generate(*model, prompt, {.max_new_tokens = 12});
  ASSERT_EQ(greedy.ids.size(), 12u);
  EXPECT_EQ(greedy.finish_reason, infer::FinishReason::length);

  // EOS: the first occurrence of the token greedy emits 5th ends generation, EOS included.
  int32_t eos = greedy.ids[4];
  size_t first = size_t(std::find(greedy.ids.begin(), greedy.ids.end(), eos) - greedy.ids.begin());
  auto stopped = infer::generate(*model, prompt, {.max_new_tokens = 12, .eos_token_ids = {eos}});
  EXPECT_EQ(stopped.finish_reason, infer::FinishReason::eos);
  EXPECT_EQ(stopped.ids, std::vector<int32_t>(greedy.ids.begin(), greedy.ids.begin() + long(first) + 1));

  // The callback stops after three tokens.
  int seen = 0;
  auto by_callback = infer::generate(*model, prompt, {.max_new_tokens = 12}, [&](int32_t) { return ++seen < 3; });
  EXPECT_EQ(by_callback.ids.size(), 3u);
  EXPECT_EQ(by_callback.finish_reason, infer::FinishReason::stopped);

  // n_positions 48, a 40-token prompt: positions 40..47 take 8 more tokens, and the last one's
  // prediction makes 9.
  auto long_prompt = random_ids(40, 89, 8);
  auto full = infer::generate(*model, long_prompt, {.max_new_tokens = 100});
  EXPECT_EQ(full.ids.size(), 9u);
  EXPECT_EQ(full.finish_reason, infer::FinishReason::context_full);

  EXPECT_TRUE(infer::generate(*model, prompt, {.max_new_tokens = 0}).ids.empty());
  EXPECT_THROW(infer::generate(*model, std::vector<int32_t>{}, {}), Error);
  EXPECT_THROW(infer::generate(*model, std::vector<int32_t>{89}, {}), Error);
  EXPECT_THROW(infer::generate(*model, prompt, {.do_sample = true, .temperature = 0.0f}), Error);
  EXPECT_THROW(infer::generate(*model, prompt, {.do_sample = true, .top_p = 1.5f}), Error);
}

namespace {

// The tests below draw their models and prompts from the printed per-run seed (KOTOBA_TEST_SEED
// replays one).
uint64_t fresh(uint64_t salt) { return kotoba::testing::test_seed() * 0x9e3779b97f4a7c15ull + salt; }


std::vector<std::unique_ptr<nn::CausalLM>> both_families(uint64_t seed) {
  std::vector<std::unique_ptr<nn::CausalLM>> models;
  models.push_back(small_gpt2(seed));
  models.push_back(small_llama(seed + 1));
  return models;
}

// Chi-square of sample counts against probabilities (cells with p = 0 must stay empty).
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int n, int& cells) {
  double chi2 = 0;
  cells = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " was removed but sampled";
      continue;
    }
    const double e = p[i] * n;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  return chi2;
}

}  // namespace

TEST(Generate, NoRepeatNGramAndMinPFollowHF) {
  // n = 2: the last token 3 was followed by 4 and by 1 before, so both are banned.
  std::vector<float> s(6, 0.5f);
  infer::NoRepeatNGram(2).apply(std::vector<int32_t>{3, 4, 2, 3, 1, 0, 3}, s);
  EXPECT_TRUE(std::isinf(s[4]) && std::isinf(s[1]));
  EXPECT_EQ(std::count_if(s.begin(), s.end(), [](float x) { return std::isinf(x); }), 2);
  // n = 1 bans every token seen; n = 3 needs two tokens of context first.
  std::vector<float> t(4, 0.0f);
  infer::NoRepeatNGram(1).apply(std::vector<int32_t>{2, 0}, t);
  EXPECT_TRUE(std::isinf(t[0]) && std::isinf(t[2]) && !std::isinf(t[1]) && !std::isinf(t[3]));
  std::vector<float> u(4, 0.0f);
  infer::NoRepeatNGram(3).apply(std::vector<int32_t>{1}, u);
  EXPECT_EQ(u, std::vector<float>(4, 0.0f));
  EXPECT_THROW(infer::NoRepeatNGram(0), Error);
  // min_p 0.3: probabilities 0.5, 0.2, 0.16, 0.14 keep those >= 0.15.
  std::vector<float> m = {std::log(0.2f), std::log(0.5f), std::log(0.14f), std::log(0.16f)};
  infer::MinP(0.3f).apply({}, m);
  EXPECT_TRUE(std::isfinite(m[0]) && std::isfinite(m[1]) && std::isfinite(m[3]) && std::isinf(m[2]));
  std::vector<float> one = {1.0f, 2.0f};
  infer::MinP(1.0f).apply({}, one);
  EXPECT_TRUE(std::isinf(one[0]) && one[1] == 2.0f) << "the most probable token always stays";
  EXPECT_THROW(infer::MinP(1.5f), Error);
}

TEST(Generate, SampleFrequenciesFollowTheProcessedDistribution) {
  Generator draw(fresh(41));
  std::vector<float> logits(60);
  for (auto& l : logits) l = 1.5f * draw.normal();
  // Each filter has a say: top-k cuts to 30, top-p to 90% of the mass, min-p what is below 5% of the top.
  GenerationOptions o{.do_sample = true, .temperature = 1.2f, .top_k = 30, .top_p = 0.9f, .min_p = 0.05f};
  auto processors = infer::make_logits_processors(o);
  std::vector<float> processed = logits;
  infer::apply_processors(processors, {}, processed);
  std::vector<double> p = probabilities(processed);
  Generator gen(fresh(7));
  const int N = 50000;
  std::vector<int> counts(p.size(), 0);
  for (int i = 0; i < N; ++i) ++counts[size_t(infer::sample_from_scores(processed, gen))];
  int cells = 0;
  const double chi2 = chi_square(counts, p, N, cells);
  ASSERT_GE(cells, 3);
  // Degrees of freedom cells - 1 (<= 29 here): the 1e-5 tail of chi2 stays below 3 * dof + 25.
  EXPECT_LT(chi2, 3.0 * (cells - 1) + 25) << cells << " cells";
}

TEST(Generate, PaddedBatchComputesWhatEachRowComputesAlone) {
  for (auto& model : both_families(fresh(31))) {
    const std::vector<std::vector<int32_t>> prompts = {random_ids(3, 89, fresh(1)), random_ids(9, 89, fresh(2)),
                                                       random_ids(6, 89, fresh(3))};
    const int64_t V = model->vocab_size();
    infer::BatchDecoder batch(*model, true, 20);
    std::vector<float> got = batch.prefill(prompts);
    std::vector<std::vector<float>> alone;
    std::vector<std::unique_ptr<infer::BatchDecoder>> singles;
    for (const auto& p : prompts) {
      singles.push_back(std::make_unique<infer::BatchDecoder>(*model, true, 20));
      alone.push_back(singles.back()->prefill({p}));
    }
    auto expect_rows = [&](const std::vector<size_t>& which, const char* when) {
      for (size_t r = 0; r < which.size(); ++r)
        for (int64_t v = 0; v < V; ++v)
          ASSERT_NEAR(got[r * size_t(V) + size_t(v)], alone[which[r]][size_t(v)], 2e-5)
              << model->model_type() << " row " << r << " " << when;
    };
    expect_rows({0, 1, 2}, "after the prefill");
    std::vector<size_t> live = {0, 1, 2};
    for (int step = 0; step < 6; ++step) {
      if (step == 2) {  // the longest prompt leaves; the others shift left over its padding
        batch.select_rows({0, 2});
        live = {0, 2};
      }
      std::vector<int32_t> tokens;
      for (size_t r : live) {
        int32_t t = int32_t((step * 7 + r * 13) % size_t(V));
        tokens.push_back(t);
        alone[r] = singles[r]->step(std::vector<int32_t>{t});
      }
      got = batch.step(tokens);
      expect_rows(live, "after a step");
    }
  }
}

TEST(Generate, BatchedGenerationEqualsOneByOne) {
  for (auto& model : both_families(fresh(57))) {
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t n : {4, 11, 1, 7}) prompts.push_back(random_ids(n, 89, fresh(uint64_t(n))));
    // An EOS the greedy decoding of one prompt meets first at its third token or later: sequences
    // end at different times.
    auto first = infer::generate(*model, prompts[0], {.max_new_tokens = 10});
    int32_t eos = first.ids.back();
    for (size_t k = 2; k < first.ids.size(); ++k)
      if (std::find(first.ids.begin(), first.ids.begin() + long(k), first.ids[k]) == first.ids.begin() + long(k)) {
        eos = first.ids[k];
        break;
      }
    std::vector<GenerationOptions> settings = {
        {.max_new_tokens = 10, .eos_token_ids = {eos}},
        {.max_new_tokens = 9, .repetition_penalty = 1.4f, .no_repeat_ngram_size = 2},
        {.max_new_tokens = 12,
         .do_sample = true,
         .temperature = 1.3f,
         .top_k = 40,
         .top_p = 0.95f,
         .min_p = 0.01f,
         .num_return_sequences = 3,
         .eos_token_ids = {eos},
         .seed = 5},
        {.max_new_tokens = 8, .num_beams = 3, .length_penalty = 0.5, .num_return_sequences = 2, .eos_token_ids = {eos}},
        {.max_length = 14, .num_beams = 4, .early_stopping = infer::EarlyStopping::never},
    };
    for (size_t k = 0; k < settings.size(); ++k) {
      std::vector<infer::GenerationResult> batch = infer::generate_batch(*model, prompts, settings[k]);
      std::set<size_t> lengths;
      for (size_t p = 0; p < prompts.size(); ++p) {
        infer::GenerationResult alone = infer::generate(*model, prompts[p], settings[k]);
        GenerationOptions recompute = settings[k];
        recompute.use_kv_cache = false;
        infer::GenerationResult plain = infer::generate(*model, prompts[p], recompute);
        ASSERT_EQ(batch[p].sequences.size(), alone.sequences.size());
        for (size_t s = 0; s < alone.sequences.size(); ++s) {
          const std::string where = model->model_type() + " setting " + std::to_string(k) + " prompt " +
                                    std::to_string(p) + " sequence " + std::to_string(s);
          EXPECT_EQ(batch[p].sequences[s].ids, alone.sequences[s].ids) << where;
          EXPECT_EQ(batch[p].sequences[s].finish_reason, alone.sequences[s].finish_reason) << where;
          EXPECT_EQ(plain.sequences[s].ids, alone.sequences[s].ids) << where << " (recomputed)";
          lengths.insert(alone.sequences[s].ids.size());
        }
      }
      if (k == 0) {
        EXPECT_GT(lengths.size(), 1u) << "the EOS should end some sequences early";
      }
      if (k == 2) {  // the samples of one prompt differ from each other
        EXPECT_NE(batch[0].sequences[0].ids, batch[0].sequences[1].ids);
        EXPECT_EQ(infer::generate_batch(*model, prompts, settings[k])[1].sequences[2].ids, batch[1].sequences[2].ids)
            << "same seed, same samples";
      }
    }
  }
}

TEST(Generate, ContextLimitsHoldPerSequenceInABatch) {
  auto model = small_gpt2(fresh(23));  // n_positions 48
  std::vector<std::vector<int32_t>> prompts = {random_ids(44, 89, fresh(1)), random_ids(5, 89, fresh(2))};
  GenerationOptions o{.max_new_tokens = 20};
  auto batch = infer::generate_batch(*model, prompts, o);
  EXPECT_EQ(batch[0].ids.size(), 5u);  // positions 44..47, and the last one's prediction
  EXPECT_EQ(batch[0].finish_reason, infer::FinishReason::context_full);
  EXPECT_EQ(batch[1].ids.size(), 20u);
  EXPECT_EQ(batch[1].finish_reason, infer::FinishReason::length);
  EXPECT_EQ(batch[1].ids, infer::generate(*model, prompts[1], o).ids);
  // max_length counts each prompt's own tokens.
  auto by_length = infer::generate_batch(*model, prompts, {.max_length = 47});
  EXPECT_EQ(by_length[0].ids.size(), 3u);
  EXPECT_EQ(by_length[1].ids.size(), 42u);
  EXPECT_EQ(by_length[1].finish_reason, infer::FinishReason::length);
}

TEST(Generate, StopStringsEndASequenceAndCutItsText) {
  auto model = small_gpt2(fresh(19));
  // A detokenizer of its own: token i is the letter 'a' + i % 26, so texts are easy to reason about.
  infer::Detokenizer letters = [](std::span<const int32_t> ids) {
    std::string text;
    for (int32_t id : ids) text += char('a' + id % 26);
    return text;
  };
  std::vector<int32_t> prompt = random_ids(5, 89, fresh(4));
  auto free = infer::generate(*model, prompt, {.max_new_tokens = 16});
  const std::string text = letters(free.ids);
  const std::string stop = text.substr(6, 2);
  const size_t end = text.find(stop) + stop.size();
  GenerationOptions o{.max_new_tokens = 16, .stop_strings = {"#none#", stop}, .detokenize = letters};
  auto stopped = infer::generate(*model, prompt, o);
  EXPECT_EQ(stopped.finish_reason, infer::FinishReason::stop_string);
  EXPECT_EQ(stopped.ids, std::vector<int32_t>(free.ids.begin(), free.ids.begin() + long(end)));
  EXPECT_EQ(stopped.sequences[0].text_end, end);
  // In a batch only that sequence stops.
  auto batch = infer::generate_batch(*model, {prompt, random_ids(3, 89, 9)}, o);
  EXPECT_EQ(batch[0].ids, stopped.ids);
  EXPECT_THROW(infer::generate(*model, prompt, {.stop_strings = {"x"}}), Error) << "needs a detokenizer";
}

TEST(Generate, TextStreamNeverSplitsACharacterNorShowsAStopString) {
  // Byte-level tokens: each id is one byte of the text, so characters of 2-4 bytes arrive split.
  const std::string text = "añb€c😀d — éÉ STOP here";
  std::vector<int32_t> ids(text.begin(), text.end());
  for (auto& id : ids) id &= 0xFF;
  infer::Detokenizer bytes = [](std::span<const int32_t> part) {
    std::string out;
    for (int32_t id : part) out += char(id);
    return out;
  };
  auto valid_utf8 = [](const std::string& s) { return infer::complete_utf8_prefix(s) == s.size(); };
  infer::TextStream plain(bytes);
  std::string streamed;
  for (int32_t id : ids) {
    std::string piece = plain.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "a piece ends inside a character";
    streamed += piece;
  }
  streamed += plain.finish();
  EXPECT_EQ(streamed, text);

  infer::TextStream stopping(bytes, {"STOP", "é!"});
  std::string shown;
  for (int32_t id : ids) {
    std::string piece = stopping.push(id);
    shown += piece;
    if (stopping.stopped()) break;
    EXPECT_EQ(shown.find('S'), std::string::npos) << "a possible stop string was shown early: " << shown;
  }
  EXPECT_TRUE(stopping.stopped());
  shown += stopping.finish();
  EXPECT_EQ(shown, text.substr(0, text.find("STOP") + 4));
  EXPECT_EQ(stopping.text(), shown);
}

TEST(Generate, OptionErrorsNameTheOption) {
  auto model = small_gpt2(3);
  std::vector<int32_t> prompt = random_ids(4, 89, 1);
  auto message = [&](const GenerationOptions& o, const infer::TokenCallback& cb = {}) {
    try {
      infer::generate(*model, prompt, o, cb);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({.num_beams = 2, .num_return_sequences = 3}).find("num_return_sequences"), std::string::npos);
  EXPECT_NE(message({.num_return_sequences = 2}).find("num_return_sequences"), std::string::npos);
  EXPECT_NE(message({.num_beams = 0}).find("num_beams"), std::string::npos);
  EXPECT_NE(message({.do_sample = true, .num_beams = 2}).find("num_beams"), std::string::npos);
  EXPECT_NE(message({.max_length = 3}).find("max_length"), std::string::npos);
  EXPECT_NE(message({.do_sample = true, .min_p = -0.1f}).find("min_p"), std::string::npos);
  EXPECT_NE(message({.no_repeat_ngram_size = -2}).find("no_repeat_ngram_size"), std::string::npos);
  EXPECT_NE(message({.num_beams = 2}, [](int32_t) { return true; }).find("beam search"), std::string::npos);
  EXPECT_THROW(infer::parse_early_stopping("sometimes"), Error);
  EXPECT_EQ(infer::parse_early_stopping("never"), infer::EarlyStopping::never);
}
