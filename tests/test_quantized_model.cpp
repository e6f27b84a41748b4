// Quantised models: quantize_model turns the Linear layers (only; an untied LLaMA lm_head is one)
// into quantised weights; the directory saved from such a model loads back with the same logits
// and no f32 copies of those weights; a trained model's held-out perplexity stays within the
// issue's bounds (int8 and LLM.int8() +1 %, 4-bit +5 %); an LLM.int8() directory keeps its mode;
// a broken quantization_config or quantized.safetensors is an error naming the file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unistd.h>
#include <array>

#include "io/model_dir.h"
#include "io/quantized_model.h"
#include "nn/gpt2.h"
#include "nn/layers.h"
#include "nn/llama.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/optim.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

fs::path scratch(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kotoba_quantized_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

nn::LlamaConfig small_llama(int64_t vocab, uint64_t seed, int64_t hidden = 128) {
  nn::LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = 2 * hidden;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 128;
  c.seed = seed;
  return c;
}

// A tokenizer.json with exactly `vocab` tokens, so the model directory is complete.
std::string tokenizer_file(const fs::path& dir, int64_t vocab) {
  fs::create_directories(dir);
  const fs::path corpus = dir / "corpus.txt";
  {
    std::ofstream out(corpus);
    for (int i = 0; i < 200; ++i) out << "the quick brown fox jumps over the lazy dog " << i << "\n";
  }
  tokenizer::TrainOptions o;
  o.vocab_size = size_t(vocab);
  o.show_progress = false;
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::train({corpus.string()}, o);
  const std::string path = (dir / "tokenizer.json").string();
  tok.save(path);
  return path;
}

void copy_parameters(const nn::CausalLM& from, nn::CausalLM& to) {
  NoGradGuard no_grad;
  auto src = from.named_parameters();
  auto dst = to.named_parameters();
  ASSERT_EQ(src.size(), dst.size());
  for (size_t i = 0; i < src.size(); ++i) {
    Tensor d = dst[i].second.detach();
    d.copy_from(src[i].second.detach());
  }
}

TEST(QuantizedModel, OnlyLinearLayersAreQuantisedAndTheDirectoryRoundTrips) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("roundtrip");
  const std::string tokenizer = tokenizer_file(root / "tok", 300);
  Tensor ids = Tensor::from_vector_i32({5, 9, 2, 7, 11, 3, 1, 30}, {2, 4});
  for (quant::WeightFormat f : {quant::WeightFormat::int8, quant::WeightFormat::q8_0, quant::WeightFormat::q4_0,
                                quant::WeightFormat::nf4}) {
    for (const std::string arch : {"llama", "gpt2"}) {
      std::unique_ptr<nn::CausalLM> model;
      if (arch == "llama") {
        model = std::make_unique<nn::Llama>(small_llama(300, seed));
      } else {
        nn::GPT2Config c;
        c.vocab_size = 300;
        c.n_positions = 64;
        c.n_embd = 64;
        c.n_layer = 2;
        c.n_head = 4;
        c.seed = seed;
        model = std::make_unique<nn::GPT2>(c);
      }
      const size_t params_before = model->named_parameters().size();
      const QuantizeReport report = quantize_model(*model, f);
      EXPECT_TRUE(report.skipped.empty());
      // LLaMA: 7 per block and the untied lm_head; GPT-2: 4 per block (its head is tied to wte).
      EXPECT_EQ(report.quantized.size(), arch == "llama" ? 15u : 8u);
      EXPECT_EQ(std::count(report.quantized.begin(), report.quantized.end(), "lm_head"), arch == "llama" ? 1 : 0);
      EXPECT_EQ(model->named_parameters().size(), params_before - report.quantized.size());
      bool embeddings = false;
      for (auto& [name, p] : model->named_parameters()) {
        EXPECT_TRUE(name.find("proj.weight") == std::string::npos && name.find("c_attn.weight") == std::string::npos &&
                    name.find("c_fc.weight") == std::string::npos && name != "lm_head.weight")
            << name << " should be quantised";
        embeddings |= name == "model.embed_tokens.weight" || name == "transformer.wte.weight";
      }
      EXPECT_TRUE(embeddings) << "the embeddings stay f32";
      EXPECT_LT(report.bytes_after, report.bytes_before);

      model->eval();
      NoGradGuard no_grad;
      const std::vector<float> want = model->logits(ids).to_vector();
      const fs::path dir = root / (arch + "-" + quant::weight_format_name(f));
      save_model_dir(dir.string(), *model, tokenizer);
      ASSERT_TRUE(fs::exists(dir / "quantized.safetensors"));
      json config = json::parse(std::ifstream(dir / "config.json"));
      EXPECT_EQ(config["quantization_config"]["format"], quant::weight_format_name(f));
      LoadedModel loaded = load_model_dir(dir.string());
      loaded.model->eval();
      EXPECT_EQ(loaded.model->named_parameters().size(), model->named_parameters().size());
      const std::vector<float> got = loaded.model->logits(ids).to_vector();
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << arch << " " << i;
      // Decoding (the KV-cache path, last position only) runs the same quantised layers and head.
      nn::KVCache cache = loaded.model->make_kv_cache(2, 8);
      const std::vector<float> last = loaded.model->logits_cached(ids, cache, /*last_only=*/true).to_vector();
      const size_t V = 300;
      ASSERT_EQ(last.size(), 2 * V);
      for (size_t b = 0; b < 2; ++b)
        for (size_t v = 0; v < V; ++v)
          ASSERT_NEAR(last[b * V + v], want[(b * 4 + 3) * V + v], 1e-4f) << arch << " row " << b << " token " << v;
    }
  }
  fs::remove_all(root);
}

// A LLaMA with tied embeddings has no lm_head Linear: its head (the embeddings) stays f32.
TEST(QuantizedModel, TiedHeadStaysWithTheEmbeddings) {
  nn::LlamaConfig c = small_llama(300, kt::test_seed());
  c.tie_word_embeddings = true;
  nn::Llama model(c);
  EXPECT_EQ(model.lm_head(), nullptr);
  Tensor ids = Tensor::from_vector_i32({5, 9, 2, 7}, {1, 4});
  model.eval();
  NoGradGuard no_grad;
  const std::vector<float> before = model.logits(ids).to_vector();
  const QuantizeReport report = quantize_model(model, quant::WeightFormat::int8);
  EXPECT_EQ(report.quantized.size(), 14u);
  EXPECT_EQ(std::count(report.quantized.begin(), report.quantized.end(), "lm_head"), 0);
  bool embeddings = false;
  for (auto& [name, p] : model.named_parameters()) embeddings |= name == "model.embed_tokens.weight";
  EXPECT_TRUE(embeddings);
  const std::vector<float> after = model.logits(ids).to_vector();
  ASSERT_EQ(after.size(), before.size());
  double err = 0, ref = 0;
  for (size_t i = 0; i < after.size(); ++i) {
    err = std::max(err, double(std::fabs(after[i] - before[i])));
    ref = std::max(ref, double(std::fabs(before[i])));
  }
  EXPECT_LT(err, 0.05 * ref) << "int8 blocks with an f32 tied head";
}

// A small LLaMA trained on a low-entropy Markov source; held-out perplexity f32 against each format.
TEST(QuantizedModel, TrainedModelPerplexityStaysWithinBounds) {
  const uint64_t seed = kt::test_seed();
  const int64_t V = 64, T = 64, B = 8;
  Generator data_gen(seed);
  // Each symbol has 3 likely successors: a text whose perplexity a trained model brings near 3.
  std::vector<std::array<int32_t, 3>> next(V);
  for (auto& n : next)
    for (int32_t& x : n) x = int32_t(mix64(data_gen.seed() + data_gen.advance(1)) % uint64_t(V));
  auto sample = [&](int64_t rows) {
    std::vector<int32_t> ids(size_t(rows * (T + 1)));
    for (int64_t r = 0; r < rows; ++r) {
      int32_t s = int32_t(mix64(data_gen.seed() + data_gen.advance(1)) % uint64_t(V));
      for (int64_t t = 0; t <= T; ++t) {
        ids[size_t(r * (T + 1) + t)] = s;
        const uint64_t u = mix64(data_gen.seed() + data_gen.advance(1)) % 100;
        s = u < 10 ? int32_t(mix64(data_gen.seed() + data_gen.advance(1)) % uint64_t(V)) : next[size_t(s)][u % 3];
      }
    }
    std::vector<int32_t> in, target;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < T; ++t) {
        in.push_back(ids[size_t(r * (T + 1) + t)]);
        target.push_back(ids[size_t(r * (T + 1) + t + 1)]);
      }
    return std::pair{Tensor::from_vector_i32(in, {rows, T}), Tensor::from_vector_i32(target, {rows, T})};
  };
  nn::Llama model(small_llama(V, seed, 64));
  train::AdamW opt(model.named_parameters(), {1e-2f, 0.9f, 0.99f, 1e-8f, 0.0f, true});
  for (int step = 0; step < 150; ++step) {
    auto [x, y] = sample(B);
    opt.zero_grad();
    model.loss(x, y).backward();
    opt.step();
  }
  model.eval();
  auto [hx, hy] = sample(32);
  auto perplexity = [&](nn::CausalLM& m) {
    NoGradGuard no_grad;
    return std::exp(double(m.loss(hx, hy).to_vector()[0]));
  };
  const double base = perplexity(model);
  std::printf("f32 held-out perplexity %.4f\n", base);
  EXPECT_LT(base, 8.0) << "the model should have learnt the source (uniform would be " << V << ")";
  for (quant::WeightFormat f : {quant::WeightFormat::int8, quant::WeightFormat::q8_0, quant::WeightFormat::q4_0,
                                quant::WeightFormat::nf4}) {
    nn::Llama q(small_llama(V, seed + 1, 64));
    copy_parameters(model, q);
    quantize_model(q, f);
    q.eval();
    const double ppl = perplexity(q);
    std::printf("%-5s held-out perplexity %.4f (%+.3f%%)\n", quant::weight_format_name(f), ppl, 100 * (ppl / base - 1));
    EXPECT_LE(ppl, base * (quant::weight_format_bits(f) == 8 ? 1.01 : 1.05)) << quant::weight_format_name(f);
  }
  // LLM.int8(): int8 activations too, outlier columns (|x| > 6) in f32; and threshold 0 (all int8).
  for (float threshold : {6.0f, 0.0f}) {
    nn::Llama q(small_llama(V, seed + 1, 64));
    copy_parameters(model, q);
    quantize_model(q, quant::WeightFormat::int8, Int8Activations{true, threshold});
    q.eval();
    const double ppl = perplexity(q);
    std::printf("llm_int8 (threshold %g) held-out perplexity %.4f (%+.3f%%)\n", double(threshold), ppl,
                100 * (ppl / base - 1));
    EXPECT_LE(ppl, base * 1.01) << "llm_int8, threshold " << threshold;
  }
}

// `--to llm_int8`: the directory remembers the mode and loads back running it (same logits).
TEST(QuantizedModel, LlmInt8DirectoryKeepsItsMode) {
  const fs::path root = scratch("llm_int8");
  nn::Llama model(small_llama(300, kt::test_seed()));
  model.eval();
  Tensor ids = Tensor::from_vector_i32({5, 9, 2, 7, 11, 3, 1, 30}, {2, 4});
  NoGradGuard no_grad;
  EXPECT_THROW(quantize_model(model, quant::WeightFormat::nf4, Int8Activations{true, 6.0f}), Error);
  EXPECT_THROW(quantize_model(model, quant::WeightFormat::int8, Int8Activations{true, -1.0f}), Error);
  // Weight-only int8 first; the mode is then switched on for layers already quantised.
  quantize_model(model, quant::WeightFormat::int8);
  const std::vector<float> w8 = model.logits(ids).to_vector();
  quantize_model(model, quant::WeightFormat::int8, Int8Activations{true, 1.5f});
  for (auto& [name, m] : model.named_modules())
    if (auto* l = dynamic_cast<nn::Linear*>(m)) {
      ASSERT_NE(l->quantized(), nullptr) << name;
      EXPECT_TRUE(l->quantized()->int8_activations) << name;
      EXPECT_EQ(l->quantized()->outlier_threshold, 1.5f) << name;
    }
  const std::vector<float> want = model.logits(ids).to_vector();
  double diff = 0;  // the mode is really on: int8 activations change weight-only int8's logits
  for (size_t i = 0; i < want.size(); ++i) diff = std::max(diff, double(std::fabs(want[i] - w8[i])));
  EXPECT_GT(diff, 0.0);
  const fs::path dir = root / "m";
  save_model_dir(dir.string(), model, tokenizer_file(root / "tok", 300));
  const std::string config_text = [&] {
    std::ifstream in(dir / "config.json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  json config = json::parse(config_text);
  EXPECT_EQ(config["quantization_config"]["format"], "int8");
  EXPECT_EQ(config["quantization_config"]["activations"], "int8");
  EXPECT_EQ(config["quantization_config"]["llm_int8_threshold"], 1.5);
  {
    LoadedModel loaded = load_model_dir(dir.string());
    loaded.model->eval();
    const std::vector<float> got = loaded.model->logits(ids).to_vector();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
  }
  auto load_error = [&](const json& c) -> std::string {
    std::ofstream(dir / "config.json") << c.dump();
    try {
      load_model_dir(dir.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  json bad = config;
  bad["quantization_config"]["activations"] = "int4";
  EXPECT_NE(load_error(bad).find(".activations must be \"int8\""), std::string::npos) << load_error(bad);
  bad = config;
  bad["quantization_config"]["llm_int8_threshold"] = -2;
  EXPECT_NE(load_error(bad).find(".llm_int8_threshold must be a finite number >= 0"), std::string::npos)
      << load_error(bad);
  bad["quantization_config"].erase("llm_int8_threshold");
  EXPECT_NE(load_error(bad).find(".llm_int8_threshold is missing"), std::string::npos) << load_error(bad);
  bad = config;
  bad["quantization_config"].erase("activations");
  EXPECT_NE(load_error(bad).find("is set but .activations is not"), std::string::npos) << load_error(bad);
  bad = config;
  bad["quantization_config"]["activations"] = "f32";
  bad["quantization_config"].erase("llm_int8_threshold");
  EXPECT_EQ(load_error(bad), "") << "weight-only int8, stated explicitly";
  fs::remove_all(root);
}

TEST(QuantizedModel, BrokenFilesAreNamed) {
  const fs::path root = scratch("broken");
  nn::Llama model(small_llama(300, 7));
  quantize_model(model, quant::WeightFormat::nf4);
  const fs::path dir = root / "m";
  save_model_dir(dir.string(), model, tokenizer_file(root / "tok", 300));
  auto load_error = [&]() -> std::string {
    try {
      load_model_dir(dir.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(load_error(), "");
  const std::string config_text = [&] {
    std::ifstream in(dir / "config.json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  json config = json::parse(config_text);
  config["quantization_config"]["quant_method"] = "bitsandbytes";
  std::ofstream(dir / "config.json") << config.dump();
  EXPECT_NE(load_error().find("quant_method is 'bitsandbytes'"), std::string::npos) << load_error();
  config["quantization_config"]["quant_method"] = "kotoba";
  config["quantization_config"]["format"] = "q4_0";  // the codes are nf4's shape but the scales differ
  std::ofstream(dir / "config.json") << config.dump();
  EXPECT_NE(load_error().find(".scales' is f32 [128, 2], expected F32 (128, 4)"), std::string::npos) << load_error();
  std::ofstream(dir / "config.json") << config_text;
  fs::resize_file(dir / "quantized.safetensors", fs::file_size(dir / "quantized.safetensors") / 2);
  EXPECT_NE(load_error().find("quantized.safetensors"), std::string::npos) << load_error();
  fs::remove_all(root);
}

}  // namespace
