// LoRA against PEFT: adapters PEFT saved load into kotoba and give PEFT's logits and gradients,
// merge/unmerge/merge-and-unload, adapters kotoba saves load in PEFT, PEFT's target-module rules
// and trainable-parameter line, and the errors of adapter loading.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/error.h"
#include "io/json_util.h"
#include "io/model_dir.h"
#include "io/peft.h"
#include "io/safetensors.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "nn/lora.h"
#include "ops/ops.h"
#include "test_util.h"
#include "train/optim.h"

using namespace kotoba;
namespace fs = std::filesystem;
using nlohmann::json;
namespace kt = kotoba::testing;

namespace {

const char* kPeftCases[] = {"gpt2_c_attn", "gpt2_conv1d_all", "llama_regex", "llama_all_linear"};
const std::string kPrefix = "base_model.model.";

fs::path case_dir(const std::string& name) {
  fs::path dir = kt::reference_dir() / "lora" / name;
  if (!fs::exists(dir / "reference.safetensors"))
    throw std::runtime_error(kt::reference_missing(dir / "reference.safetensors") +
                             " (LoRA cases: tests/reference/lora_reference.py)");
  return dir;
}

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("lora", name); }

std::vector<double> values(const Tensor& t) {
  std::vector<float> f = to_f32(t.detach()).to_vector();
  return std::vector<double>(f.begin(), f.end());
}

double rms(const Tensor& t) {
  double s = 0;
  auto v = values(t);
  for (double x : v) s += x * x;
  return std::sqrt(s / double(v.size()));
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  auto x = values(a), y = values(b);
  double worst = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

// Logits tolerance: 1e-5 absolute per unit of logit scale (the reference's RMS, at least 1):
// f32 sums over a few hundred terms against PEFT's float64 on the same f32 weights.
double logits_tolerance(const Tensor& ref) { return 1e-5 * std::max(1.0, rms(ref)); }

int run(const std::string& cmd) {
  int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// PEFT's float64 logits of base model `base` with the adapter `adapter` on ids (B, T).
Tensor peft_logits(const fs::path& base, const fs::path& adapter, const Tensor& ids) {
  fs::path ids_file = adapter.parent_path() / (adapter.filename().string() + ".ids.safetensors");
  fs::path out = adapter.parent_path() / (adapter.filename().string() + ".peft_logits.safetensors");
  save_safetensors(ids_file.string(), {{"ids", ids}});
  std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                    "/tests/reference/lora_reference.py\" --peft-logits \"" + base.string() + "\" \"" +
                    adapter.string() + "\" \"" + ids_file.string() + "\" \"" + out.string() + "\"";
  EXPECT_EQ(run(cmd), 0) << "failed: " << cmd;
  return load_safetensors(out.string()).tensors.at("logits");
}

// transformers' f32 logits of a plain model directory (the merged export).
Tensor transformers_logits(const fs::path& dir, const Tensor& ids) {
  fs::path ids_file = dir.parent_path() / (dir.filename().string() + ".ids.safetensors");
  fs::path out = dir.parent_path() / (dir.filename().string() + ".hf_logits.safetensors");
  save_safetensors(ids_file.string(), {{"ids", ids}});
  std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                    "/tests/reference/hf_models_reference.py\" --logits \"" + dir.string() + "\" \"" +
                    ids_file.string() + "\" \"" + out.string() + "\"";
  EXPECT_EQ(run(cmd), 0) << "failed: " << cmd;
  return load_safetensors(out.string()).tensors.at("logits");
}

json read_json(const fs::path& p) { return json_util::read_json_file(p.string()); }

std::map<std::string, Tensor> snapshot(const nn::Module& model) {
  std::map<std::string, Tensor> out;
  for (auto& [name, p] : model.named_parameters()) {
    Tensor copy = Tensor::empty(p.shape());
    copy.copy_from(p.detach());
    out[name] = copy;
  }
  return out;
}

Tensor eval_logits(nn::CausalLM& model, const Tensor& ids) {
  NoGradGuard no_grad;
  model.eval();
  return model.logits(ids);
}

class LoraPeft : public ::testing::TestWithParam<const char*> {};

// PEFT's adapter on the base model: PEFT's logits; merged, the same; unmerged, the base weights
// back; the names, freezing and trainable line PEFT has.
TEST_P(LoraPeft, AdapterFromPeftGivesPeftLogits) {
  fs::path dir = case_dir(GetParam());
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  const Tensor& ids = ref.tensors.at("ids");
  const Tensor& want = ref.tensors.at("logits");
  const json info = read_json(dir / "case.json");
  LoadedModel loaded = load_model_dir((dir / "base").string());
  nn::CausalLM& model = *loaded.model;
  const double base_diff = max_abs_diff(eval_logits(model, ids), ref.tensors.at("base_logits"));
  EXPECT_LE(base_diff, logits_tolerance(ref.tensors.at("base_logits"))) << "base model";
  const auto base_weights = snapshot(model);

  nn::LoraConfig config = load_peft_adapter(model, (dir / "adapter").string());
  EXPECT_EQ(config.r, info["lora"]["r"].get<int64_t>());
  EXPECT_EQ(nn::trainable_parameters_report(model), info["trainable"].get<std::string>());
  std::set<std::string> lora_names;
  for (auto& [name, p] : model.named_parameters()) {
    const bool is_lora = name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
    EXPECT_EQ(p.requires_grad(), is_lora) << name;
    if (is_lora) lora_names.insert(name);
  }
  std::set<std::string> peft_names;
  for (auto& key : info["lora_keys"]) peft_names.insert(key.get<std::string>().substr(kPrefix.size()));
  EXPECT_EQ(lora_names, peft_names);

  const Tensor got = eval_logits(model, ids);
  const double diff = max_abs_diff(got, want), tol = logits_tolerance(want);
  std::printf("%s: logits rms %.3f, adapter moves them by up to %.3f; kotoba vs PEFT max |diff| %.3g (tol %.3g)\n",
              GetParam(), rms(want), max_abs_diff(want, ref.tensors.at("base_logits")), diff, tol);
  EXPECT_LE(diff, tol) << GetParam() << ": kotoba's adapted logits differ from PEFT's";

  // Training-mode forward with the config's dropout off gives the same; with dropout on, not.
  if (config.dropout > 0) {
    NoGradGuard no_grad;
    model.train();
    EXPECT_GT(max_abs_diff(model.logits(ids), want), 1e-3) << "lora_dropout " << config.dropout << " had no effect";
    model.eval();
  }

  nn::merge_lora(model);
  const double merged_diff = max_abs_diff(eval_logits(model, ids), want);
  EXPECT_LE(merged_diff, tol) << "merged weights";
  nn::unmerge_lora(model);
  double worst = 0;
  for (auto& [name, p] : model.named_parameters())
    if (base_weights.count(name)) worst = std::max(worst, max_abs_diff(p, base_weights.at(name)));
  EXPECT_LE(worst, 1e-6) << "unmerge did not restore the base weights";
  EXPECT_LE(max_abs_diff(eval_logits(model, ids), want), tol) << "after unmerge";
  std::printf("%s: merged logits max |diff| %.3g; unmerge restores base weights within %.3g\n", GetParam(), merged_diff,
              worst);
}

// The gradient of the loss reaches lora_A and lora_B as in PEFT, and no base parameter.
TEST_P(LoraPeft, GradientsMatchPeft) {
  fs::path dir = case_dir(GetParam());
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  LoadedModel loaded = load_model_dir((dir / "base").string());
  nn::CausalLM& model = *loaded.model;
  load_peft_adapter(model, (dir / "adapter").string());
  model.eval();  // PEFT's reference ran in eval mode: lora_dropout off
  Tensor loss = model.loss(ref.tensors.at("ids"), ref.tensors.at("targets"));
  EXPECT_NEAR(double(loss.to_vector()[0]), values(ref.tensors.at("loss"))[0], 1e-5);
  loss.backward();
  int checked = 0;
  double worst_rel = 0;
  for (auto& [name, p] : model.named_parameters()) {
    auto it = ref.tensors.find("grad." + kPrefix + name);
    if (it == ref.tensors.end()) {
      EXPECT_FALSE(p.grad().defined()) << name << ": a frozen base parameter received a gradient";
      continue;
    }
    ASSERT_TRUE(p.grad().defined()) << name;
    const double scale = rms(it->second), diff = max_abs_diff(p.grad(), it->second);
    worst_rel = std::max(worst_rel, diff / scale);
    EXPECT_LE(diff, 1e-4 * scale) << name << ": gradient differs from PEFT's (rms " << scale << ")";
    ++checked;
  }
  EXPECT_EQ(size_t(checked), read_json(dir / "case.json")["lora_keys"].size());
  std::printf("%s: %d LoRA gradients, worst max|diff| / rms %.3g\n", GetParam(), checked, worst_rel);
}

// merge_and_unload: a plain model directory with merged weights, read by kotoba and by
// transformers, computing the adapted model.
class LoraPeftExport : public ::testing::TestWithParam<const char*> {};

TEST_P(LoraPeftExport, MergeAndUnloadExportsPlainModel) {
  const std::string name = GetParam();
  fs::path dir = case_dir(name);
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  const Tensor& ids = ref.tensors.at("ids");
  const Tensor& want = ref.tensors.at("logits");
  LoadedModel loaded = load_model_dir((dir / "base").string());
  const int64_t base_count = loaded.model->parameter_count();
  load_peft_adapter(*loaded.model, (dir / "adapter").string());
  nn::merge_and_unload(*loaded.model);
  EXPECT_TRUE(nn::lora_layers(*loaded.model).empty());
  EXPECT_EQ(loaded.model->parameter_count(), base_count);
  fs::path out = scratch(name + "_merged");
  save_model_dir(out.string(), *loaded.model, loaded.tokenizer_path);
  LoadedModel merged = load_model_dir(out.string());
  const double tol = logits_tolerance(want);
  EXPECT_LE(max_abs_diff(eval_logits(*merged.model, ids), want), tol) << "kotoba reading the merged model";
  const double hf_diff = max_abs_diff(transformers_logits(out, ids), want);
  EXPECT_LE(hf_diff, 1e-4 * std::max(1.0, rms(want))) << "transformers reading the merged model (f32)";
  std::printf("%s: merged export in transformers (f32) max |diff| %.3g\n", name.c_str(), hf_diff);
}

// An adapter kotoba trained a little and saved loads in PEFT (PeftModel.from_pretrained) and
// computes what kotoba computes; it also loads back into kotoba unchanged.
class LoraPeftRoundTrip : public ::testing::TestWithParam<const char*> {};

TEST_P(LoraPeftRoundTrip, AdapterFromKotobaLoadsInPeft) {
  const std::string name = GetParam();
  fs::path dir = case_dir(name);
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  const Tensor& ids = ref.tensors.at("ids");
  LoadedModel loaded = load_model_dir((dir / "base").string());
  nn::CausalLM& model = *loaded.model;
  nn::LoraConfig config = read_peft_config((dir / "adapter" / "adapter_config.json").string());
  nn::apply_lora(model, config, kt::test_seed());
  // lora_B starts at zero; a few AdamW steps move both factors.
  train::AdamW optimizer(model.named_parameters(), {.lr = 2e-2f});
  const auto before = snapshot(model);
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    model.train();
    model.loss(ids, ref.tensors.at("targets")).backward();
    optimizer.step();
  }
  for (auto& [pname, p] : model.named_parameters()) {
    const bool is_lora = pname.find(".lora_") != std::string::npos;
    EXPECT_EQ(max_abs_diff(p, before.at(pname)) > 0, is_lora) << pname << ": only adapters may train";
  }
  const Tensor got = eval_logits(model, ids);
  fs::path out = scratch(name + "_adapter");
  save_peft_adapter(out.string(), model, config, (dir / "base").string());
  const json saved = read_json(out / "adapter_config.json");
  EXPECT_EQ(saved["peft_type"], "LORA");
  EXPECT_EQ(saved["fan_in_fan_out"], name.rfind("gpt2", 0) == 0);
  const Tensor peft = peft_logits(dir / "base", out, ids);
  const double diff = max_abs_diff(got, peft), tol = logits_tolerance(peft);
  std::printf("%s: kotoba-saved adapter in PEFT: logits rms %.3f, max |diff| %.3g (tol %.3g)\n", name.c_str(),
              rms(peft), diff, tol);
  EXPECT_LE(diff, tol);

  LoadedModel again = load_model_dir((dir / "base").string());
  load_peft_adapter(*again.model, out.string());
  EXPECT_EQ(max_abs_diff(eval_logits(*again.model, ids), got), 0.0) << "kotoba reading its own adapter";
}

INSTANTIATE_TEST_SUITE_P(Cases, LoraPeft, ::testing::ValuesIn(kPeftCases));
// Each of these runs Python once per case: the Conv1D (transposed) and the all-linear LLaMA cases.
INSTANTIATE_TEST_SUITE_P(Cases, LoraPeftExport, ::testing::Values("gpt2_conv1d_all", "llama_all_linear"));
INSTANTIATE_TEST_SUITE_P(Cases, LoraPeftRoundTrip, ::testing::Values("gpt2_c_attn", "llama_all_linear"));

TEST(LoraPeftReport, Gpt2_124M_MatchesPeft) {
  const fs::path ref = kt::reference_dir() / "lora" / "gpt2_124m.json";
  if (!fs::exists(ref)) throw std::runtime_error(kt::reference_missing(ref));
  nn::GPT2 model(nn::GPT2Config{});
  nn::apply_lora(model, {.r = 8, .target_modules = {"c_attn"}}, 1);
  const std::string line = nn::trainable_parameters_report(model);
  EXPECT_EQ(line, read_json(ref)["trainable"].get<std::string>());
  EXPECT_EQ(line, "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364");
}

#ifdef KOTOBA_CLI_PATH
// `kotoba lora merge BASE ADAPTER OUT` writes the merged model; a bad adapter is one error line.
TEST(LoraPeftCli, MergeCommand) {
  fs::path dir = case_dir("llama_regex");
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  fs::path out = scratch("cli_merged");
  const std::string cli = std::string("\"") + KOTOBA_CLI_PATH + "\" lora merge \"" + (dir / "base").string() + "\" ";
  ASSERT_EQ(run(cli + "\"" + (dir / "adapter").string() + "\" \"" + out.string() + "\" > /dev/null"), 0);
  LoadedModel merged = load_model_dir(out.string());
  const Tensor& want = ref.tensors.at("logits");
  EXPECT_LE(max_abs_diff(eval_logits(*merged.model, ref.tensors.at("ids")), want), logits_tolerance(want));
  EXPECT_EQ(run(cli + "\"" + (dir / "base").string() + "\" \"" + out.string() + "_bad\" 2> /dev/null"), 1)
      << "a model directory is no adapter";
  EXPECT_FALSE(fs::exists(out.string() + "_bad"));
}
#endif

// ---- without the fixture: small kotoba-built models ----

nn::GPT2Config tiny_gpt2() {
  nn::GPT2Config c;
  c.vocab_size = 64;
  c.n_positions = 16;
  c.n_embd = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.seed = kt::test_seed();
  return c;
}

nn::LlamaConfig tiny_llama() {
  nn::LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 16;
  c.seed = kt::test_seed();
  return c;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(LoraTargets, PeftMatchingRules) {
  nn::GPT2 gpt2(tiny_gpt2());
  auto names = [&](nn::LoraConfig c) { return nn::lora_target_names(gpt2, c); };
  using V = std::vector<std::string>;
  EXPECT_EQ(names({.target_modules = {"c_attn"}}), (V{"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}));
  // a list entry matches the end of the name at a dot: "c_proj" hits attention's and the MLP's
  EXPECT_EQ(names({.target_modules = {"c_proj"}}).size(), 4u);
  EXPECT_EQ(names({.target_modules = {"attn.c_proj"}}),
            (V{"transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"}));
  EXPECT_EQ(names({.target_modules = {"transformer.h.1.mlp.c_fc"}}), (V{"transformer.h.1.mlp.c_fc"}));
  // a string is a regex over the whole name: "c_attn" alone matches nothing
  EXPECT_EQ(names({.target_regex = ".*\\.1\\.mlp\\.c_(fc|proj)"}),
            (V{"transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"}));
  std::string e = error_of([&] { names({.target_regex = "c_attn"}); });
  EXPECT_NE(e.find("\"c_attn\" matches no module"), std::string::npos) << e;
  e = error_of([&] { names({.target_modules = {"q_proj", "v_proj"}}); });
  EXPECT_NE(e.find("[\"q_proj\", \"v_proj\"] matches no module"), std::string::npos) << e;
  e = error_of([&] { names({.target_modules = {"attn"}}); });
  EXPECT_NE(e.find("'transformer.h.0.attn', which is not a Linear"), std::string::npos) << e;
  e = error_of([&] { names({.target_regex = "(unclosed"}); });
  EXPECT_NE(e.find("not a valid regular expression"), std::string::npos) << e;
  EXPECT_EQ(names({.target_regex = "all-linear"}).size(), 8u);

  nn::Llama llama(tiny_llama());
  auto all = nn::lora_target_names(llama, {.target_regex = "all-linear"});
  EXPECT_EQ(all.size(), 14u);  // 7 per layer; the head is not adapted
  for (auto& n : all) EXPECT_EQ(n.find("lm_head"), std::string::npos);
  EXPECT_EQ(nn::lora_target_names(llama, {.target_modules = {"self_attn.q_proj"}}).size(), 2u);
}

TEST(LoraTargets, ApplyFreezesBaseAndStartsAtTheBaseModel) {
  nn::Llama model(tiny_llama());
  Generator gen(kt::test_seed());
  Tensor ids = kt::random_ints({2, 8}, gen, 0, 64);
  const Tensor before = eval_logits(model, ids);
  nn::LoraConfig config{.r = 4, .alpha = 16, .target_regex = ".*(q|v)_proj", .use_rslora = true};
  EXPECT_DOUBLE_EQ(config.scaling(), 8.0);
  nn::apply_lora(model, config, kt::test_seed());
  EXPECT_EQ(max_abs_diff(eval_logits(model, ids), before), 0.0) << "lora_B starts at zero";
  auto layers = nn::lora_layers(model);
  ASSERT_EQ(layers.size(), 4u);
  for (auto& [name, linear] : layers) {
    const nn::LoraAdapter& a = *linear->lora();
    EXPECT_EQ(a.A.shape(), (Shape{4, linear->in_features()}));
    EXPECT_EQ(a.B.shape(), (Shape{linear->out_features(), 4}));
    EXPECT_FLOAT_EQ(a.scaling, 8.0f);
    const double bound = 1.0 / std::sqrt(double(linear->in_features()));
    double largest = 0;
    for (double v : values(a.A)) largest = std::max(largest, std::abs(v));
    EXPECT_LE(largest, bound) << name;
    EXPECT_GT(largest, 0.5 * bound) << name << ": not spread over U(-1/sqrt(in), 1/sqrt(in))";
    for (double v : values(a.B)) EXPECT_EQ(v, 0.0);
  }
  int trainable = 0;
  for (auto& [name, p] : model.named_parameters()) trainable += p.requires_grad();
  EXPECT_EQ(trainable, 8);
  EXPECT_NE(error_of([&] { nn::apply_lora(model, config, 1); }).find("already holds LoRA adapters"), std::string::npos);
}

// The adapter's term is scaling * (x A^T) B^T, checked against the plain product.
TEST(LoraTargets, ForwardIsBasePlusScaledLowRankTerm) {
  Generator gen(kt::test_seed());
  nn::Linear layer(6, 5, true, 0.5f, gen);
  Tensor A = kt::random_normal({3, 6}, gen), B = kt::random_normal({5, 3}, gen), x = kt::random_normal({2, 4, 6}, gen);
  layer.attach_lora(A, B, 0.75f, 0.0f, 1);
  auto xv = values(x), av = values(A), bv = values(B), wv = values(layer.weight), bias = values(layer.bias);
  auto y = values(layer.forward(x));
  double worst = 0;
  for (int n = 0; n < 8; ++n)
    for (int o = 0; o < 5; ++o) {
      double want = bias[o];
      for (int i = 0; i < 6; ++i) want += xv[n * 6 + i] * wv[o * 6 + i];
      for (int k = 0; k < 3; ++k) {
        double xa = 0;
        for (int i = 0; i < 6; ++i) xa += xv[n * 6 + i] * av[k * 6 + i];
        want += 0.75 * bv[o * 3 + k] * xa;
      }
      worst = std::max(worst, std::abs(want - y[n * 5 + o]));
    }
  EXPECT_LE(worst, 1e-5);
}

// A kotoba-saved adapter of a tiny GPT-2, then broken in each way a user's file can be.
class LoraErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = scratch("errors_adapter");
    nn::GPT2 model(tiny_gpt2());
    nn::apply_lora(model, config, kt::test_seed());
    save_peft_adapter(dir.string(), model, config);
  }
  std::string load_error() {
    nn::GPT2 model(tiny_gpt2());
    std::string e = error_of([&] { load_peft_adapter(model, dir.string()); });
    EXPECT_TRUE(nn::lora_layers(model).empty()) << "a failed load left adapters on the model";
    return e;
  }
  void edit_config(const std::function<void(json&)>& edit) {
    json j = read_json(dir / "adapter_config.json");
    edit(j);
    std::ofstream(dir / "adapter_config.json") << j.dump();
  }
  void edit_weights(const std::function<void(std::map<std::string, Tensor>&)>& edit) {
    SafeTensors st = load_safetensors((dir / "adapter_model.safetensors").string());
    std::map<std::string, Tensor> tensors;
    for (auto& [k, t] : st.tensors) tensors[k] = to_f32(t);
    edit(tensors);
    save_safetensors((dir / "adapter_model.safetensors").string(), tensors);
  }
  fs::path dir;
  nn::LoraConfig config{.r = 4, .alpha = 8, .target_modules = {"c_attn"}};
  const std::string key0 = kPrefix + "transformer.h.0.attn.c_attn.lora_B.weight";
};

TEST_F(LoraErrors, LoadsWhenIntact) {
  nn::GPT2 model(tiny_gpt2());
  load_peft_adapter(model, dir.string());
  EXPECT_EQ(nn::lora_layers(model).size(), 2u);
}

TEST_F(LoraErrors, MissingFiles) {
  fs::remove(dir / "adapter_model.safetensors");
  EXPECT_NE(load_error().find("adapter_model.safetensors: missing"), std::string::npos);
  fs::remove(dir / "adapter_config.json");
  EXPECT_NE(load_error().find("adapter_config.json: missing"), std::string::npos);
}

TEST_F(LoraErrors, BadConfig) {
  edit_config([](json& j) { j["peft_type"] = "PREFIX_TUNING"; });
  EXPECT_NE(load_error().find("peft_type is \"PREFIX_TUNING\""), std::string::npos);
  edit_config([](json& j) {
    j["peft_type"] = "LORA";
    j["r"] = "four";
  });
  std::string e = load_error();
  EXPECT_NE(e.find("adapter_config.json: key 'r' must be an integer"), std::string::npos) << e;
  edit_config([](json& j) {
    j["r"] = 4;
    j["use_dora"] = true;
  });
  EXPECT_NE(load_error().find("'use_dora' is true"), std::string::npos);
  edit_config([](json& j) {
    j["use_dora"] = false;
    j["target_modules"] = json::array({"q_proj"});
  });
  e = load_error();
  EXPECT_NE(e.find("adapter_config.json: LoRA config: target_modules [\"q_proj\"] matches no module"),
            std::string::npos)
      << e;
  std::ofstream(dir / "adapter_config.json") << "{\"peft_type\": ";
  e = load_error();
  EXPECT_NE(e.find("adapter_config.json"), std::string::npos) << e;
}

TEST_F(LoraErrors, RankMismatch) {
  edit_config([](json& j) { j["r"] = 8; });
  std::string e = load_error();
  EXPECT_NE(e.find("has rank 4 (shape [4, 16]) but"), std::string::npos) << e;
  EXPECT_NE(e.find("says r = 8"), std::string::npos) << e;
}

TEST_F(LoraErrors, ShapeMismatch) {
  edit_weights([&](auto& t) { t[key0] = Tensor::zeros({40, 4}); });
  std::string e = load_error();
  EXPECT_NE(e.find("tensor '" + key0 + "' has shape [40, 4], expected [48, 4]"), std::string::npos) << e;
}

TEST_F(LoraErrors, MissingKey) {
  edit_weights([&](auto& t) { t.erase(key0); });
  std::string e = load_error();
  EXPECT_NE(e.find("tensor '" + key0 + "' is missing"), std::string::npos) << e;
}

TEST_F(LoraErrors, UnknownModulePath) {
  edit_weights([&](auto& t) { t[kPrefix + "transformer.h.7.attn.c_attn.lora_A.weight"] = Tensor::zeros({4, 16}); });
  std::string e = load_error();
  EXPECT_NE(e.find("names module 'transformer.h.7.attn.c_attn', which is not a Linear layer"), std::string::npos) << e;
  edit_weights([&](auto& t) {
    t.erase(kPrefix + "transformer.h.7.attn.c_attn.lora_A.weight");
    t[kPrefix + "transformer.h.0.mlp.c_fc.lora_A.weight"] = Tensor::zeros({4, 16});
  });
  e = load_error();
  EXPECT_NE(e.find("which target_modules [\"c_attn\"]"), std::string::npos) << e;
  edit_weights([&](auto& t) {
    t.erase(kPrefix + "transformer.h.0.mlp.c_fc.lora_A.weight");
    t["transformer.h.0.attn.c_attn.lora_A.default.weight"] = Tensor::zeros({4, 16});
  });
  e = load_error();
  EXPECT_NE(e.find("unexpected tensor 'transformer.h.0.attn.c_attn.lora_A.default.weight'"), std::string::npos) << e;
}

TEST_F(LoraErrors, SaveRefusesAdaptersTheConfigDoesNotDescribe) {
  nn::GPT2 model(tiny_gpt2());
  nn::apply_lora(model, config, 3);
  nn::LoraConfig other = config;
  other.target_modules = {"c_fc"};
  EXPECT_NE(error_of([&] { save_peft_adapter(scratch("other").string(), model, other); }).find("are not the layers"),
            std::string::npos);
  nn::merge_lora(model);
  EXPECT_NE(error_of([&] { save_peft_adapter(scratch("merged").string(), model, config); }).find("merged"),
            std::string::npos);
}

}  // namespace
