// DPO: the losses, metrics and gradients against a float64 PyTorch implementation of TRL's
// definitions (GPT-2 and LLaMA), the reference of a LoRA policy (its base, adapters off), a small
// model whose sampled answers learn a hidden rule from preference pairs, exact resume, a diverging
// run that stops and keeps its checkpoint, and the errors a user meets.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/packing.h"
#include "data/preference_data.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "nn/layers.h"
#include "nn/llama.h"
#include "nn/lora.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"
#include "train/dpo.h"
#include "train/logprobs.h"
#include "train/sft.h"
#include "test_util.h"
#include "rule_task.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("dpo", name); }

using kotoba::testing::slurp;

// ---- against the PyTorch reference ----

class DpoReference : public ::testing::TestWithParam<const char*> {};

TEST_P(DpoReference, LossMetricsAndGradientsMatchTorch) {
  const fs::path dir = kt::reference_dir() / "dpo" / GetParam();
  ASSERT_TRUE(fs::exists(dir / "reference.safetensors")) << kt::reference_missing(dir / "reference.safetensors");
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  const Tensor& ids_t = ref.tensors.at("ids");
  const Tensor& labels_t = ref.tensors.at("labels");
  const Tensor& lengths_t = ref.tensors.at("lengths");
  std::vector<data::PackingExample> examples;
  int64_t at = 0;
  for (int64_t e = 0; e < lengths_t.numel(); ++e) {
    const int64_t n = lengths_t.data<int32_t>()[e];
    examples.push_back({std::vector<int32_t>(ids_t.data<int32_t>() + at, ids_t.data<int32_t>() + at + n),
                        std::vector<int32_t>(labels_t.data<int32_t>() + at, labels_t.data<int32_t>() + at + n)});
    at += n;
  }
  std::vector<const data::PackingExample*> rows;
  for (const auto& e : examples) rows.push_back(&e);
  train::SftBatch batch = train::make_sft_batch(rows, /*pad_id=*/3);
  auto doubles = [](const Tensor& t) {
    Tensor d = t.to(DType::f64);
    return std::vector<double>(d.data<double>(), d.data<double>() + d.numel());
  };
  const std::vector<double> want_policy = doubles(ref.tensors.at("policy_logps"));
  const std::vector<double> want_reference = doubles(ref.tensors.at("reference_logps"));

  // The reference model's log-probabilities, without autograd.
  LoadedModel reference = load_model_dir((dir / "reference").string());
  reference.model->eval();
  std::vector<float> got_reference;
  {
    NoGradGuard no_grad;
    got_reference = train::sequence_logprobs(*reference.model, batch.ids, batch.targets).sums.to_vector();
  }
  double worst_logp = 0;
  for (size_t i = 0; i < want_reference.size(); ++i) {
    worst_logp = std::max(worst_logp, std::abs(got_reference[i] - want_reference[i]));
    EXPECT_NEAR(got_reference[i], want_reference[i], 1e-4 * std::max(1.0, std::abs(want_reference[i]))) << i;
  }

  LoadedModel policy = load_model_dir((dir / "policy").string());
  nn::CausalLM& model = *policy.model;
  model.set_requires_grad(true);
  model.eval();
  struct Variant {
    const char* name;
    train::DpoLossType type;
    double beta, label_smoothing, rpo_alpha;
  };
  const Variant variants[] = {{"sigmoid", train::DpoLossType::sigmoid, 0.1, 0.0, 0.0},
                              {"robust", train::DpoLossType::sigmoid, 0.3, 0.1, 0.0},
                              {"ipo", train::DpoLossType::ipo, 0.5, 0.0, 0.0},
                              {"hinge", train::DpoLossType::hinge, 0.1, 0.0, 0.0},
                              {"rpo", train::DpoLossType::sigmoid, 0.1, 0.0, 0.5}};
  double worst_ratio = 0;
  for (const Variant& v : variants) {
    model.zero_grad();
    train::SequenceLogprobs lp = train::sequence_logprobs(model, batch.ids, batch.targets);
    const std::vector<float> got_policy = lp.sums.to_vector();
    for (size_t i = 0; i < want_policy.size(); ++i) {
      worst_logp = std::max(worst_logp, std::abs(got_policy[i] - want_policy[i]));
      ASSERT_NEAR(got_policy[i], want_policy[i], 1e-4 * std::max(1.0, std::abs(want_policy[i]))) << i;
    }
    train::DpoLoss loss = train::dpo_loss(lp.sums, want_reference, lp.counts, {v.beta, v.type, v.label_smoothing, v.rpo_alpha});
    loss.loss.backward();
    auto scalar = [&](const char* key) { return doubles(ref.tensors.at(std::string(v.name) + "." + key))[0]; };
    EXPECT_NEAR(loss.loss.to_vector()[0], scalar("loss"), 1e-4 * std::max(1.0, std::abs(scalar("loss")))) << v.name;
    EXPECT_NEAR(loss.metrics.loss, scalar("loss"), 1e-4 * std::max(1.0, std::abs(scalar("loss")))) << v.name;
    EXPECT_NEAR(loss.metrics.rewards_chosen, scalar("rewards_chosen"), 1e-4) << v.name;
    EXPECT_NEAR(loss.metrics.rewards_rejected, scalar("rewards_rejected"), 1e-4) << v.name;
    EXPECT_NEAR(loss.metrics.margin, scalar("margin"), 1e-4) << v.name;
    EXPECT_DOUBLE_EQ(loss.metrics.accuracy, scalar("accuracy")) << v.name;
    int checked = 0;
    for (auto& [name, p] : model.named_parameters()) {
      auto it = ref.tensors.find(std::string(v.name) + ".grad." + name);
      ASSERT_NE(it, ref.tensors.end()) << "no reference gradient for " << name;
      kt::Comparison c = kt::compare_to_reference(p.grad(), it->second, {1e-4, 1e-4});
      worst_ratio = std::max(worst_ratio, c.worst_ratio);
      EXPECT_TRUE(c.ok) << GetParam() << " " << v.name << " " << name << ": " << c.describe();
      ++checked;
    }
    EXPECT_EQ(checked, int(model.named_parameters().size()));
  }
  std::printf("%s: max |log p error| %.3g; worst gradient error / (1e-4 rms + 1e-4 |ref|) %.3g\n", GetParam(),
              worst_logp, worst_ratio);
}

INSTANTIATE_TEST_SUITE_P(Models, DpoReference, ::testing::Values("gpt2", "llama"),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

// The per-token log-probabilities are log_softmax at the targets, 0 where ignored, and their
// gradient is onehot - softmax (checked against finite differences).
TEST(DpoLogprobs, TokenLogprobsAndGradient) {
  Generator gen(kt::test_seed());
  Tensor logits = Tensor::empty({2, 3, 5});
  nn::init_normal(logits, 1.5f, gen);
  logits.set_requires_grad(true);
  Tensor targets = Tensor::from_vector_i32({1, -100, 4, 0, 2, -100}, {2, 3});
  Tensor lp = train::token_logprobs(logits, targets);
  const std::vector<float> x = logits.to_vector(), got = lp.to_vector();
  for (int n = 0; n < 6; ++n) {
    const int32_t t = targets.data<int32_t>()[n];
    if (t < 0) {
      EXPECT_EQ(got[size_t(n)], 0.0f);
      continue;
    }
    double s = 0;
    for (int v = 0; v < 5; ++v) s += std::exp(double(x[size_t(n * 5 + v)]));
    EXPECT_NEAR(got[size_t(n)], x[size_t(n * 5 + t)] - std::log(s), 1e-5);
  }
  Tensor total = sum(train::row_sums(lp));
  total.backward();
  const std::vector<float> g = logits.grad().to_vector();
  for (int n = 0; n < 6; ++n) {
    const int32_t t = targets.data<int32_t>()[n];
    double s = 0;
    for (int v = 0; v < 5; ++v) s += std::exp(double(x[size_t(n * 5 + v)]));
    for (int v = 0; v < 5; ++v) {
      const double want = t < 0 ? 0.0 : (v == t ? 1.0 : 0.0) - std::exp(double(x[size_t(n * 5 + v)])) / s;
      EXPECT_NEAR(g[size_t(n * 5 + v)], want, 1e-6) << n << "," << v;
    }
  }
}

// On a GPU the log-probabilities come from the fused cross-entropy kernel (no host round trip):
// values and gradients as on the CPU, for f32 and bf16 logits, a gradient accumulated into one
// already there, ignored tokens 0.
TEST(DpoLogprobs, CudaTokenLogprobsEqualTheCpus) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  Generator gen(kt::test_seed());
  const int64_t B = 3, T = 7, V = 301;
  Tensor host = Tensor::empty({B, T, V});
  nn::init_normal(host, 3.0f, gen);
  std::vector<int32_t> ids(size_t(B * T));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = i % 5 == 2 ? -100 : int32_t(gen.uniform() * float(V)) % int32_t(V);
  Tensor targets = Tensor::from_vector_i32(ids, {B, T});
  std::vector<float> weights(size_t(B * T));
  for (auto& w : weights) w = 2 * gen.uniform() - 1;
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    auto run = [&](Device device, std::vector<float>& grad) {
      Tensor logits = to_device(host.to(dtype), device);
      logits.set_requires_grad(true);
      Tensor w = to_device(Tensor::from_vector(weights, {B, T}), device);
      // Used twice, so the second backward pass accumulates into the first one's gradient.
      Tensor total = add(sum(mul(train::token_logprobs(logits, targets), w)),
                         sum(train::token_logprobs(logits, on_device(targets, device))));
      total.backward();
      grad = logits.grad().to_vector();
      return train::token_logprobs(logits, targets).to_vector();
    };
    std::vector<float> cpu_grad, gpu_grad;
    const std::vector<float> cpu = run(Device::cpu, cpu_grad), gpu = run(Device::cuda, gpu_grad);
    ASSERT_EQ(cpu.size(), gpu.size());
    for (size_t i = 0; i < cpu.size(); ++i) {
      EXPECT_NEAR(gpu[i], cpu[i], 1e-4 * (1 + std::fabs(cpu[i]))) << i;
      if (ids[i] == -100) {
        EXPECT_EQ(gpu[i], 0.0f) << i;
      }
    }
    const float tol = dtype == DType::bf16 ? 2e-2f : 1e-5f;
    for (size_t i = 0; i < cpu_grad.size(); ++i) EXPECT_NEAR(gpu_grad[i], cpu_grad[i], tol * (1 + std::fabs(cpu_grad[i]))) << i;
  }
}

// A LoRA policy's reference is its base: under LoraDisabled the adapted model computes exactly
// what the model without adapters does, and afterwards the adapters are back.
TEST(DpoLora, DisabledAdaptersGiveTheBase) {
  nn::LlamaConfig mc;
  mc.vocab_size = 50;
  mc.hidden_size = 32;
  mc.intermediate_size = 48;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = mc.num_key_value_heads = 4;
  mc.max_position_embeddings = 32;
  mc.seed = kt::test_seed();
  nn::Llama model(mc);
  model.eval();
  Tensor ids = Tensor::from_vector_i32({5, 9, 2, 7, 11, 3}, {1, 6});
  NoGradGuard no_grad;
  const std::vector<float> base = model.logits(ids).to_vector();
  nn::LoraConfig lc;
  lc.r = 4;
  lc.target_regex = "all-linear";
  nn::apply_lora(model, lc, 7);
  Generator gen(kt::test_seed() + 1);
  for (auto& [name, linear] : nn::lora_layers(model)) {  // B is zero at first: make the adapters count
    Tensor b = linear->lora()->B;
    nn::init_normal(b, 0.5f, gen);
  }
  const std::vector<float> adapted = model.logits(ids).to_vector();
  double differ = 0;
  for (size_t i = 0; i < base.size(); ++i) differ = std::max(differ, double(std::abs(adapted[i] - base[i])));
  EXPECT_GT(differ, 1e-3);
  {
    nn::LoraDisabled off(model);
    const std::vector<float> disabled = model.logits(ids).to_vector();
    for (size_t i = 0; i < base.size(); ++i) ASSERT_EQ(disabled[i], base[i]) << i;
  }
  EXPECT_EQ(model.logits(ids).to_vector(), adapted);
}

// ---- the hidden-rule task ----

struct RuleRun {
  double before_sampled = 0, before_greedy = 0, after_sampled = 0, after_greedy = 0;
  train::DpoResult result;
  double seconds = 0;
};

RuleRun run_rule_task(const std::string& name, train::DpoConfig config) {
  const auto start = std::chrono::steady_clock::now();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch(name);
  kt::RuleTask task = kt::make_rule_task(seed, 600, 100);
  const fs::path sft_model = kt::sft_rule_model(root, task, seed);
  RuleRun run;
  {
    LoadedModel loaded = load_model_dir(sft_model.string());
    tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(sft_model.string());
    const chat::ChatTemplate tmpl(chat::TemplateStyle::plain, "", "<|endoftext|>");
    run.before_greedy = kt::rule_rate(*loaded.model, tok, tmpl, task, false, seed);
    run.before_sampled = kt::rule_rate(*loaded.model, tok, tmpl, task, true, seed);
  }
  config.model = sft_model.string();
  config.chat_template = "plain";
  config.max_length = 48;
  config.out = (root / "dpo").string();
  train::DpoTrainer trainer(config, kt::rule_pairs(task, seed), {}, {.progress = false});
  run.result = trainer.run();
  run.after_greedy = kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, false, seed);
  run.after_sampled = kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, true, seed);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "%s (seed %llu): answers ending in '%s': sampled %.1f%% -> %.1f%%, greedy %.1f%% -> %.1f%% after %lld DPO "
      "steps (val reward accuracy %.3f, margin %.3f); %.1f s\n",
      name.c_str(), (unsigned long long)seed, kt::kRuleWord, 100 * run.before_sampled, 100 * run.after_sampled,
      100 * run.before_greedy, 100 * run.after_greedy, (long long)run.result.step, run.result.val.accuracy,
      run.result.val.margin, run.seconds);
  return run;
}

// Sigmoid DPO alone (rpo_alpha 0) lowers the chosen replies along with the rejected ones on this
// task: the colour words lose their mass to junk and "gold" gains little (14% sampled at lr 1e-4
// for 300 steps, seed 1). TRL's rpo_alpha (the chosen replies' NLL added) keeps them up.
TEST(DpoTask, FullTrainingLearnsTheHiddenRule) {
  train::DpoConfig c;
  c.rpo_alpha = 1.0;
  c.batch = 16;
  c.steps = 100;
  c.lr = 1e-3;
  c.warmup = 5;
  c.checkpoint_every = 0;
  c.val_fraction = 0.1;
  RuleRun run = run_rule_task("full", c);
  EXPECT_LE(run.before_sampled, 0.1);
  EXPECT_GE(run.after_sampled, 0.8);
  EXPECT_GT(run.result.val.accuracy, 0.9);
  EXPECT_GT(run.result.val.margin, 0.0);
  EXPECT_TRUE(fs::exists(run.result.model_dir + "/model.safetensors"));
}

TEST(DpoTask, LoraLearnsTheHiddenRuleAgainstItsBase) {
  train::DpoConfig c;
  c.rpo_alpha = 1.0;
  c.batch = 16;
  c.steps = 150;
  c.lr = 2e-3;
  c.warmup = 5;
  c.checkpoint_every = 0;
  c.val_fraction = 0.1;
  c.lora_r = 8;
  c.lora_alpha = 16;
  c.lora_targets = "all-linear";
  c.precompute_ref = 0;  // the reference on the fly: the same policy with its adapters off
  RuleRun run = run_rule_task("lora", c);
  EXPECT_LE(run.before_sampled, 0.1);
  // LoRA DPO does not yet reach the full run's 98-100%: sampled answers reached 29-77% (seeds 1-3,
  // 11 and one CI seed), greedy ones 100% on four seeds but 0% on that CI seed. What holds on
  // every seed: the adapters rank the pairs right and raise the sampled rate (the issue stays open).
  EXPECT_GT(run.result.val.accuracy, 0.9);
  EXPECT_GT(run.after_sampled, 2 * run.before_sampled);
  EXPECT_TRUE(fs::exists(run.result.adapter_dir + "/adapter_model.safetensors"));
}

// ---- resume, divergence, errors ----

// The small DPO run the trainer tests share: 4 pairs a step of up to 48 tokens, a tenth held out.
train::DpoConfig small_dpo_config(const fs::path& base) {
  train::DpoConfig c;
  c.model = base.string();
  c.chat_template = "plain";
  c.max_length = 48;
  c.batch = 4;
  c.lr = 1e-3;
  c.val_fraction = 0.1;
  return c;
}

TEST(DpoTrainer, ResumedRunEqualsUninterruptedRunAndLiveReferenceEqualsPrecomputed) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("resume");
  kt::RuleTask task = kt::make_rule_task(seed, 60, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  std::vector<data::PreferencePair> pairs = kt::rule_pairs(task, seed);
  train::DpoConfig c = small_dpo_config(base);
  c.grad_accum = 2;
  c.steps = 10;
  c.checkpoint_every = 4;
  c.log_every = 1;
  c.out = (root / "straight").string();
  train::DpoResult straight = train::DpoTrainer(c, pairs, {}, {.progress = false}).run();
  c.out = (root / "stopped").string();
  train::DpoTrainer(c, pairs, {}, {.progress = false}).run(/*stop_after_step=*/6);
  train::DpoTrainer resumed(c, pairs, {}, {.progress = false});
  resumed.resume();
  train::DpoResult after = resumed.run();
  ASSERT_TRUE(straight.finished && after.finished);
  EXPECT_EQ(straight.train.loss, after.train.loss);
  EXPECT_EQ(straight.val.margin, after.val.margin);
  SafeTensors a = load_safetensors(straight.model_dir + "/model.safetensors");
  SafeTensors b = load_safetensors(after.model_dir + "/model.safetensors");
  for (auto& [name, t] : a.tensors) EXPECT_EQ(t.to_vector(), b.tensors.at(name).to_vector()) << name;
  EXPECT_EQ(slurp(root / "straight" / "metrics.csv").substr(0, 200), slurp(root / "stopped" / "metrics.csv").substr(0, 200));
  EXPECT_TRUE(fs::exists(root / "stopped" / "loss.png"));
  EXPECT_TRUE(fs::exists(root / "stopped" / "rewards.png"));

  // The reference computed on the fly (a frozen copy) gives the precomputed run's numbers.
  c.out = (root / "live").string();
  c.precompute_ref = 0;
  c.checkpoint_every = 0;
  train::DpoResult live = train::DpoTrainer(c, pairs, {}, {.progress = false}).run();
  EXPECT_NEAR(live.train.loss, straight.train.loss, 1e-6);
  EXPECT_NEAR(live.val.margin, straight.val.margin, 1e-6);
}

// A learning rate that overflows the weights: the run stops with a message naming the last good
// checkpoint (step 1), which stays, and writes no model.
TEST(DpoErrors, DivergenceStopsAndKeepsTheCheckpoint) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("nan");
  kt::RuleTask task = kt::make_rule_task(seed, 40, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  train::DpoConfig c;
  c.model = base.string();
  c.chat_template = "plain";
  c.out = (root / "run").string();
  c.max_length = 48;
  c.batch = 4;
  c.steps = 20;
  c.checkpoint_every = 1;
  c.lr = 1e30;
  c.clip = 0;
  try {
    train::DpoTrainer(c, kt::rule_pairs(task, seed), {}, {.progress = false}).run();
    FAIL() << "a diverging run did not stop";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stopped"), std::string::npos) << what;
    EXPECT_NE(what.find("last good checkpoint (step 1)"), std::string::npos) << what;
  }
  EXPECT_EQ(json::parse(slurp(root / "run" / "checkpoint" / "trainer_state.json"))["step"].get<int64_t>(), 1);
  EXPECT_FALSE(fs::exists(root / "run" / "model"));
}

TEST(DpoErrors, BadInputsAreNamed) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("errors");
  kt::RuleTask task = kt::make_rule_task(seed, 20, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  {
    std::ofstream bad(root / "bad.jsonl");
    bad << R"({"prompt": "a", "chosen": "b", "rejected": "c"})" << "\n" << R"({"prompt": "a", "chosen": 3, "rejected": "c"})" << "\n";
    std::ofstream prompts(root / "prompts.jsonl");
    prompts << R"({"prompt": "a"})" << "\n";
  }
  train::DpoConfig c;
  c.model = base.string();
  c.data = (root / "bad.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.max_length = 64;
  try {
    train::DpoTrainer trainer(c, {.progress = false});
    FAIL() << "a mistyped reply was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  c.data = (root / "prompts.jsonl").string();
  try {
    train::DpoTrainer trainer(c, {.progress = false});
    FAIL() << "a prompts-only data set was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prompts-only"), std::string::npos) << e.what();
  }
  c.loss_type = "kto";
  try {
    train::DpoTrainer trainer(c, {.progress = false});
    FAIL() << "an unknown loss_type was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("loss_type"), std::string::npos) << e.what();
  }
  c.loss_type = "sigmoid";
  c.beta = 0;
  EXPECT_THROW(train::DpoTrainer(c, {.progress = false}), Error);
  c.beta = 0.1;
  c.device = "gpu";
  try {
    train::validate_dpo_config(c);
    FAIL() << "an unknown device was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'device': expected \"cpu\" or \"cuda\", got \"gpu\""), std::string::npos)
        << e.what();
  }
}

// On a GPU, DPO (full, with the reference precomputed and live; LoRA) reaches the CPU's loss and
// margin (f32 on both; other summation orders, hence 1 %). Skips without a GPU.
// --precision bf16: the policy and its reference run their products in bf16, so a precomputed
// reference and a live one agree (the same graph, the same bits), and the run stays close to the
// f32 one without equalling it.
TEST(DpoTrainer, Bf16MixedPrecisionTracksTheF32Run) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("bf16");
  kt::RuleTask task = kt::make_rule_task(seed, 60, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  std::vector<data::PreferencePair> pairs = kt::rule_pairs(task, seed);
  train::DpoConfig c = small_dpo_config(base);
  c.steps = 8;
  c.checkpoint_every = 0;
  c.out = (root / "f32").string();
  const train::DpoResult f32 = train::DpoTrainer(c, pairs, {}, {.progress = false}).run();
  c.precision = "bf16";
  c.out = (root / "bf16_precomputed").string();
  const train::DpoResult precomputed = train::DpoTrainer(c, pairs, {}, {.progress = false}).run();
  c.precompute_ref = 0;
  c.out = (root / "bf16_live").string();
  const train::DpoResult live = train::DpoTrainer(c, pairs, {}, {.progress = false}).run();
  ASSERT_TRUE(f32.finished && precomputed.finished && live.finished);
  EXPECT_EQ(live.train.loss, precomputed.train.loss) << "a live bf16 reference must equal the precomputed one";
  EXPECT_NEAR(precomputed.train.loss, f32.train.loss, 0.05 * std::fabs(f32.train.loss) + 1e-3);
  EXPECT_NEAR(precomputed.val.margin, f32.val.margin, 0.05 * std::fabs(f32.val.margin) + 1e-2);
  EXPECT_NE(precomputed.train.loss, f32.train.loss) << "bit-identical to f32: nothing ran in bf16";
}

TEST(DpoTrainer, CudaRunMatchesTheCpuRun) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("cuda");
  kt::RuleTask task = kt::make_rule_task(seed, 60, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  std::vector<data::PreferencePair> pairs = kt::rule_pairs(task, seed);
  for (const auto& [lora_r, precompute_ref] : {std::pair{0, 1}, std::pair{0, 0}, std::pair{4, 1}}) {
    SCOPED_TRACE(detail::concat("lora_r ", lora_r, ", precompute_ref ", precompute_ref));
    train::DpoConfig c = small_dpo_config(base);
    c.steps = 8;
    c.lora_r = lora_r;
    c.precompute_ref = precompute_ref;
    c.checkpoint_every = 0;
    c.out = (root / detail::concat("cpu", lora_r, precompute_ref)).string();
    const train::DpoResult cpu = train::DpoTrainer(c, pairs, {}, {.progress = false}).run();
    c.device = "cuda";
    c.out = (root / detail::concat("gpu", lora_r, precompute_ref)).string();
    const train::DpoResult gpu = train::DpoTrainer(c, pairs, {}, {.progress = false}).run();
    ASSERT_TRUE(cpu.finished && gpu.finished);
    EXPECT_NEAR(gpu.train.loss, cpu.train.loss, 0.01 * std::fabs(cpu.train.loss) + 1e-4);
    EXPECT_NEAR(gpu.val.margin, cpu.val.margin, 0.01 * std::fabs(cpu.val.margin) + 1e-3);
  }
}

#ifdef KOTOBA_CLI_PATH
// `kotoba dpo` end to end: pairs from a JSONL file, --json's last line, the run's files; a bad
// flag value is an error naming the field, with a non-zero exit and no output directory.
TEST(DpoCli, TrainsFromFilesAndRejectsBadFlags) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("cli");
  kt::RuleTask task = kt::make_rule_task(seed, 24, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  {
    std::ofstream f(root / "prefs.jsonl");
    for (const auto& p : kt::rule_pairs(task, seed))
      f << json{{"prompt", p.prompt[0].content}, {"chosen", p.chosen}, {"rejected", p.rejected}}.dump() << "\n";
  }
  auto kotoba = [&](const std::string& args, std::string& out) {
    const fs::path o = root / "stdout";
    const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' " + args + " >'" +
                            o.string() + "' 2>&1 </dev/null";
    const int status = std::system(cmd.c_str());
    out = slurp(o);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  const std::string common = "dpo --model '" + base.string() + "' --data '" + (root / "prefs.jsonl").string() +
                             "' --chat-template plain --max-length 48 --batch 4 --steps 3 --lr 1e-3 --quiet";
  std::string out;
  ASSERT_EQ(kotoba(common + " --out '" + (root / "run").string() + "' --json", out), 0) << out;
  const size_t last_line = out.rfind("\n{");  // --json: the last line is the result
  const json j = json::parse(last_line == std::string::npos ? out : out.substr(last_line + 1));
  EXPECT_EQ(j["step"].get<int64_t>(), 3);
  EXPECT_TRUE(j["finished"].get<bool>());
  EXPECT_TRUE(j["train"]["rewards_accuracy"].is_number());
  for (const char* file : {"model/model.safetensors", "loss.csv", "metrics.csv", "loss.png", "rewards.png"})
    EXPECT_TRUE(fs::exists(root / "run" / file)) << file;
  EXPECT_NE(kotoba(common + " --out '" + (root / "bad").string() + "' --beta -1", out), 0);
  EXPECT_NE(out.find("'beta'"), std::string::npos) << out;
  EXPECT_NE(kotoba(common + " --out '" + (root / "bad").string() + "' --loss-type kto", out), 0);
  EXPECT_NE(out.find("loss_type"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(root / "bad"));
}
#endif

}  // namespace
