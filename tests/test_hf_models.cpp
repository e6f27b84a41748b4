// HF interop of the model families: random-initialised models made and saved by transformers
// (one in bfloat16, sharded into several files)
// (tests/reference/hf_models_reference.py) load in kotoba with the same logits, the same
// incremental-decoding logits and the same `kotoba eval` loss; models kotoba saves load in
// transformers with the same logits. Tolerances: logits within 1e-4 absolute (f32, logits of
// RMS 0.8-4), eval loss within 1e-5 relative — the acceptance figures.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace kotoba;
using nlohmann::json;
namespace kt = kotoba::testing;

namespace {

const char* kCases[] = {"gpt2", "llama_gqa_llama3", "llama_linear_tied_bias", "mistral_window", "llama_bf16_sharded",
                        "qwen2"};

fs::path case_dir(const std::string& name) {
  fs::path dir = kt::reference_dir() / "hf_models" / name;
  if (!fs::exists(dir / "reference.safetensors"))
    throw std::runtime_error(kt::reference_missing(dir / "reference.safetensors"));
  return dir;
}

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("hf_models", name); }

// Largest |a - b| over two same-shaped f32 tensors.
double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  std::vector<float> x = a.contiguous().to_vector(), y = b.contiguous().to_vector();
  double worst = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) worst = std::max(worst, std::abs(double(x[i]) - double(y[i])));
  return worst;
}

Tensor f32(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape());
  out.copy_from(t);
  return out;
}

int run(const std::string& cmd) {
  int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

using kotoba::testing::slurp;

// transformers' logits of the model directory `dir` on ids (B, T).
Tensor transformers_logits(const fs::path& dir, const Tensor& ids) {
  fs::path ids_file = dir.parent_path() / (dir.filename().string() + ".ids.safetensors");
  fs::path out = dir.parent_path() / (dir.filename().string() + ".hf_logits.safetensors");
  save_safetensors(ids_file.string(), {{"ids", ids}});
  std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                    "/tests/reference/hf_models_reference.py\" --logits \"" + dir.string() + "\" \"" +
                    ids_file.string() + "\" \"" + out.string() + "\"";
  EXPECT_EQ(run(cmd), 0) << "failed: " << cmd;
  return f32(load_safetensors(out.string()).tensors.at("logits"));
}

class HFModels : public ::testing::TestWithParam<const char*> {};

TEST_P(HFModels, LogitsMatchTransformers) {
  fs::path dir = case_dir(GetParam());
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  const Tensor& ids = ref.tensors.at("ids");
  const Tensor& want = ref.tensors.at("logits");
  LoadedModel loaded = load_model_dir(dir.string());
  EXPECT_EQ(loaded.model->model_type(), loaded.config.at("model_type").get<std::string>());
  NoGradGuard no_grad;
  loaded.model->eval();
  Tensor got = loaded.model->logits(ids);
  const double diff = max_abs_diff(got, want);
  EXPECT_LE(diff, 1e-4) << GetParam() << ": kotoba's logits differ from transformers' by up to " << diff;

  // Incremental decoding: a prefill of 25 positions, then one token at a time, gives the same
  // logits (the sliding window and RoPE offsets included).
  const int64_t B = ids.size(0), T = ids.size(1), P = 25;
  nn::KVCache cache = loaded.model->make_kv_cache(B, T);
  Tensor first = loaded.model->logits_cached(ids.slice_view(1, 0, P).contiguous(), cache);
  double worst = max_abs_diff(first, want.slice_view(1, 0, P).contiguous());
  for (int64_t t = P; t < T; ++t) {
    Tensor step = loaded.model->logits_cached(ids.slice_view(1, t, t + 1).contiguous(), cache);
    worst = std::max(worst, max_abs_diff(step, want.slice_view(1, t, t + 1).contiguous()));
  }
  EXPECT_EQ(cache.length, T);
  EXPECT_LE(worst, 1e-4) << GetParam() << ": KV-cache logits differ from transformers' by up to " << worst;
}

// Training through the imported model: the loss and every parameter's gradient match
// transformers' (both f32: 1e-5 relative on the loss, 1e-3 of each gradient's RMS + 1e-3
// relative element-wise).
TEST_P(HFModels, LossGradientsMatchTransformers) {
  fs::path dir = case_dir(GetParam());
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  LoadedModel loaded = load_model_dir(dir.string());
  nn::CausalLM& model = *loaded.model;
  model.train();
  model.zero_grad();
  Tensor loss = model.loss(ref.tensors.at("ids"), ref.tensors.at("targets"));
  loss.backward();
  const double got = loss.to_vector()[0], want = ref.tensors.at("loss").to_vector()[0];
  EXPECT_NEAR(got, want, 1e-5 * std::abs(want)) << GetParam();
  int checked = 0;
  for (auto& [name, p] : model.named_parameters()) {
    auto it = ref.tensors.find("grad." + name);
    ASSERT_NE(it, ref.tensors.end()) << "no reference gradient for " << name;
    kt::Comparison c = kt::compare_to_reference(p.grad(), it->second, {1e-3, 1e-3});
    EXPECT_TRUE(c.ok) << GetParam() << " " << name << ": " << c.describe();
    ++checked;
  }
  EXPECT_EQ(checked, int(model.named_parameters().size()));
}

TEST_P(HFModels, EvalLossMatchesTransformers) {
  fs::path dir = case_dir(GetParam());
  json want = json::parse(slurp(dir / "eval.json"));
  fs::path out = scratch(std::string(GetParam()) + "_eval.txt");
  std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' eval '" + dir.string() +
                    "' --data '" + (dir / "eval.jsonl").string() + "' --seq " + std::to_string(want["seq"].get<int>()) +
                    " --json > '" + out.string() + "'";
  ASSERT_EQ(run(cmd), 0) << "failed: " << cmd;
  std::string text = slurp(out);
  json got = json::parse(text.substr(text.rfind('{')));
  EXPECT_EQ(got["tokens"].get<int64_t>(), want["tokens"].get<int64_t>());
  const double a = got["loss"].get<double>(), b = want["loss"].get<double>();
  EXPECT_LE(std::abs(a - b), 1e-5 * std::abs(b)) << GetParam() << ": kotoba eval " << a << ", transformers " << b;
}

// Saved again by kotoba, the model loads in transformers with the same logits.
TEST_P(HFModels, SavedByKotobaLoadsInTransformers) {
  fs::path dir = case_dir(GetParam());
  LoadedModel loaded = load_model_dir(dir.string());
  fs::path saved = scratch(GetParam());
  save_model_dir(saved.string(), *loaded.model, (dir / "tokenizer.json").string(), loaded.generation);
  Tensor ids = load_safetensors((dir / "reference.safetensors").string()).tensors.at("ids");
  NoGradGuard no_grad;
  loaded.model->eval();
  Tensor ours = loaded.model->logits(ids);
  const double diff = max_abs_diff(ours, transformers_logits(saved, ids));
  EXPECT_LE(diff, 1e-4) << GetParam() << ": transformers' logits of kotoba's save differ by up to " << diff;
}

INSTANTIATE_TEST_SUITE_P(Families, HFModels, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

// A model made by kotoba itself (fresh random init, GQA, llama3 RoPE scaling, untied head, a
// vocabulary padded beyond the tokenizer's) loads in transformers with the same logits.
TEST(HFModelsNative, KotobaLlamaLoadsInTransformers) {
  fs::path tokenizer = kt::reference_dir() / "hf_models" / "tokenizer.json";
  ASSERT_TRUE(fs::exists(tokenizer)) << kt::reference_missing(tokenizer);
  Generator gen(kt::test_seed());
  for (const char* type : {"llama", "mistral", "qwen2"}) {
    nn::LlamaConfig c;
    c.model_type = type;
    c.vocab_size = 310;
    c.hidden_size = 64;
    c.intermediate_size = 80;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 4;
    c.max_position_embeddings = 96;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 20000.0;
    c.initializer_range = 0.2f;
    c.seed = kt::test_seed();
    if (c.model_type == "llama") {
      c.rope_scaling = {nn::RopeScaling::Type::llama3, 4.0, 1.0, 4.0, 32};
    } else if (c.model_type == "mistral") {
      c.sliding_window = 5;
    } else {
      c.qkv_bias = true;
      c.tie_word_embeddings = true;
    }
    nn::Llama model(c);
    {
      NoGradGuard no_grad;  // norms away from 1, so that their weights matter
      for (auto& [name, p] : model.named_parameters())
        if (p.ndim() == 1) p.copy_from(add(Tensor::full(p.shape(), 1.0f), kt::random_normal(p.shape(), gen, 0.2f)));
    }
    fs::path saved = scratch(std::string("native_") + type);
    save_model_dir(saved.string(), model, tokenizer.string());
    Tensor ids = kt::random_ints({2, 33}, gen, 0, 300);
    NoGradGuard no_grad;
    model.eval();
    Tensor ours = model.logits(ids);
    const double diff = max_abs_diff(ours, transformers_logits(saved, ids));
    EXPECT_LE(diff, 1e-4) << type << ": transformers' logits of a kotoba-made model differ by up to " << diff;
    // and kotoba reads its own directory back bit for bit
    LoadedModel again = load_model_dir(saved.string());
    EXPECT_EQ(max_abs_diff(again.model->logits(ids), ours), 0.0) << type;
  }
}

TEST(HFModelsErrors, ConfigErrorsNameFileAndKey) {
  fs::path src = case_dir("llama_gqa_llama3");
  fs::path dir = scratch("errors");
  fs::copy(src, dir, fs::copy_options::recursive);
  json base = json::parse(slurp(dir / "config.json"));
  auto expect_config_error = [&](auto edit, const std::string& fragment) {
    json c = base;
    edit(c);
    std::ofstream(dir / "config.json") << c.dump();
    try {
      load_model_dir(dir.string());
      ADD_FAILURE() << "no error for an edit that should give: " << fragment;
    } catch (const Error& e) {
      std::string what = e.what();
      EXPECT_NE(what.find("config.json"), std::string::npos) << what;
      EXPECT_NE(what.find(fragment), std::string::npos) << "expected '" << fragment << "' in: " << what;
    }
  };
  expect_config_error([](json& c) { c["rope_scaling"]["rope_type"] = "yarn"; }, "rope_scaling type \"yarn\"");
  expect_config_error([](json& c) { c["num_key_value_heads"] = 3; }, "multiple of num_key_value_heads (3)");
  expect_config_error([](json& c) { c["hidden_act"] = "gelu"; }, "hidden_act \"gelu\"");
  expect_config_error([](json& c) { c.erase("intermediate_size"); }, "'intermediate_size' is missing");
  expect_config_error([](json& c) { c["rope_scaling"].erase("low_freq_factor"); }, "'low_freq_factor' is missing");
  expect_config_error([](json& c) { c["hidden_size"] = 60; }, "tensor 'model.embed_tokens.weight' has shape");
  std::ofstream(dir / "config.json") << base.dump();
  // an untied model's checkpoint without its head
  SafeTensors weights = load_safetensors((src / "model.safetensors").string());
  std::map<std::string, Tensor> tensors = weights.tensors;
  tensors.erase("lm_head.weight");
  save_safetensors((dir / "model.safetensors").string(), tensors);
  try {
    load_model_dir(dir.string());
    ADD_FAILURE() << "a missing lm_head.weight loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'lm_head.weight' is missing"), std::string::npos) << e.what();
  }
}

}  // namespace
