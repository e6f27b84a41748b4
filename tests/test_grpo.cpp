// GRPO: the loss of every loss_type and its gradients against a float64 PyTorch implementation of
// TRL's definitions (GPT-2 and LLaMA), group advantages, rule and command rewards, a small model
// that learns a hidden rule from a programmatic reward alone, and the errors a user meets.
#include <gtest/gtest.h>

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

#include "data/packing.h"
#include "data/preference_data.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "train/grpo.h"
#include "train/logprobs.h"
#include "train/sft.h"
#include "test_util.h"
#include "rule_task.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("grpo", name); }

using kotoba::testing::slurp;

std::vector<double> doubles(const Tensor& t) {
  Tensor d = t.to(DType::f64);
  return std::vector<double>(d.data<double>(), d.data<double>() + d.numel());
}

class GrpoReference : public ::testing::TestWithParam<const char*> {};

TEST_P(GrpoReference, LossAndGradientsMatchTorch) {
  const fs::path dir = kt::reference_dir() / "grpo" / GetParam();
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
  const int64_t B = batch.ids.size(0), T = batch.ids.size(1);

  // Advantages from the rewards, in groups of 3.
  const std::vector<double> advantages = train::group_advantages(doubles(ref.tensors.at("rewards")), 3, "group");
  const std::vector<double> want_adv = doubles(ref.tensors.at("advantages"));
  for (size_t i = 0; i < want_adv.size(); ++i) EXPECT_NEAR(advantages[i], want_adv[i], 1e-9) << i;

  // Reference (B, T - 1) per-token values laid out on kotoba's (B, T) positions.
  auto positions = [&](const char* key) {
    const Tensor& t = ref.tensors.at(key);
    EXPECT_EQ(t.size(1), T - 1);
    const std::vector<double> v = doubles(t);
    std::vector<float> out(size_t(B * T), 0.0f);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < T - 1; ++i) out[size_t(b * T + i)] = float(v[size_t(b * (T - 1) + i)]);
    return out;
  };
  const std::vector<float> old = positions("old_logps"), reference_logps = positions("ref_logps");

  // The reference model's per-token values under kotoba.
  {
    LoadedModel reference = load_model_dir((dir / "reference").string());
    reference.model->eval();
    NoGradGuard no_grad;
    const std::vector<float> got = train::sequence_logprobs(*reference.model, batch.ids, batch.targets).tokens.to_vector();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], reference_logps[i], 1e-4) << i;
  }

  LoadedModel policy = load_model_dir((dir / "policy").string());
  nn::CausalLM& model = *policy.model;
  model.set_requires_grad(true);
  model.eval();
  struct Variant {
    const char* name;
    train::GrpoLossType type;
    double beta, low, high;
    bool use_old;
  };
  const Variant variants[] = {{"grpo", train::GrpoLossType::grpo, 0.04, 0.2, 0.2, true},
                              {"bnpo", train::GrpoLossType::bnpo, 0.0, 0.2, 0.2, true},
                              {"dr_grpo", train::GrpoLossType::dr_grpo, 0.04, 0.2, 0.28, true},
                              {"dapo", train::GrpoLossType::dapo, 0.0, 0.2, 0.28, true},
                              {"fresh", train::GrpoLossType::grpo, 0.04, 0.2, 0.2, false}};
  double worst_ratio = 0;
  for (const Variant& v : variants) {
    model.zero_grad();
    train::SequenceLogprobs lp = train::sequence_logprobs(model, batch.ids, batch.targets);
    train::GrpoLossOptions o;
    o.loss_type = v.type;
    o.beta = v.beta;
    o.epsilon_low = v.low;
    o.epsilon_high = v.high;
    o.max_completion_length = 16;
    train::GrpoLoss loss = train::grpo_loss(lp.tokens, batch.targets, v.use_old ? old : std::vector<float>{},
                                            reference_logps, advantages, o);
    loss.loss.backward();
    auto scalar = [&](const char* key) { return doubles(ref.tensors.at(std::string(v.name) + "." + key))[0]; };
    EXPECT_NEAR(loss.metrics.loss, scalar("loss"), 1e-4 * std::max(1.0, std::abs(scalar("loss")))) << v.name;
    EXPECT_NEAR(loss.loss.to_vector()[0], scalar("loss"), 1e-4 * std::max(1.0, std::abs(scalar("loss")))) << v.name;
    if (v.beta > 0) {
      EXPECT_NEAR(loss.metrics.kl, scalar("kl"), 1e-4 * std::max(1.0, scalar("kl"))) << v.name;
    }
    EXPECT_NEAR(loss.metrics.clip_ratio, scalar("clip_ratio"), 1e-9) << v.name;
    for (auto& [name, p] : model.named_parameters()) {
      auto it = ref.tensors.find(std::string(v.name) + ".grad." + name);
      ASSERT_NE(it, ref.tensors.end()) << "no reference gradient for " << name;
      kt::Comparison c = kt::compare_to_reference(p.grad(), it->second, {1e-4, 1e-4});
      worst_ratio = std::max(worst_ratio, c.worst_ratio);
      EXPECT_TRUE(c.ok) << GetParam() << " " << v.name << " " << name << ": " << c.describe();
    }
  }
  std::printf("%s: worst gradient error / (1e-4 rms + 1e-4 |ref|) %.3g\n", GetParam(), worst_ratio);
}

INSTANTIATE_TEST_SUITE_P(Models, GrpoReference, ::testing::Values("gpt2", "llama"),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

TEST(GrpoAdvantages, GroupBatchAndNone) {
  const std::vector<double> r = {1, 0, 0, 1, 1, 1};
  std::vector<double> a = train::group_advantages(r, 3, "none");
  EXPECT_NEAR(a[0], 2.0 / 3, 1e-12);
  EXPECT_NEAR(a[3], 0.0, 1e-12);
  a = train::group_advantages(r, 3, "group");
  EXPECT_NEAR(a[0], (2.0 / 3) / (std::sqrt(1.0 / 3) + 1e-4), 1e-9);
  EXPECT_EQ(a[4], 0.0);  // a group that all scored alike teaches nothing
  a = train::group_advantages(r, 3, "batch");
  EXPECT_GT(a[0], 0.0);
  EXPECT_THROW(train::group_advantages(r, 4, "group"), Error);
  EXPECT_THROW(train::group_advantages(r, 3, "rank"), Error);
}

TEST(GrpoRewards, RulesAndCheckerCommand) {
  std::vector<chat::Message> prompt = {{"user", "Colour?", ""}};
  std::vector<train::RewardInput> in = {{&prompt, "a gold "}, {&prompt, "b red"}, {&prompt, "gold c"}};
  EXPECT_EQ(train::rule_reward("ends-with:gold")(in), (std::vector<double>{1, 0, 0}));
  EXPECT_EQ(train::rule_reward("contains:gold")(in), (std::vector<double>{1, 0, 1}));
  EXPECT_EQ(train::rule_reward("regex:^[ab] ")(in), (std::vector<double>{1, 1, 0}));
  for (const char* bad : {"ends-with", "ends-with:", "length:3", "regex:(["}) {
    try {
      train::rule_reward(bad);
      FAIL() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--reward"), std::string::npos) << e.what();
    }
  }
  // A checker script: the completion's length in characters.
  const fs::path root = scratch("rewards");
  fs::create_directories(root);
  const fs::path script = root / "checker.py";
  {
    std::ofstream f(script);
    f << "import json, sys\nfor line in sys.stdin:\n    r = json.loads(line)\n"
         "    print(len(r['completion']) + (0.5 if r['prompt'][0]['content'] == 'Colour?' else 0))\n";
  }
  const std::string python = KOTOBA_PYTHON;
  EXPECT_EQ(train::command_reward(python + " " + script.string())(in), (std::vector<double>{7.5, 5.5, 6.5}));
  try {
    train::command_reward("echo 1")(in);
    FAIL() << "a checker that printed one score for three completions was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("printed 1 scores for 3"), std::string::npos) << e.what();
  }
  try {
    train::command_reward("printf 'x\\n1\\n1\\n'")(in);
    FAIL() << "a non-numeric score was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(train::command_reward("exit 3")(in), Error);
}

// ---- the hidden-rule task, from a programmatic reward alone ----

TEST(GrpoTask, RuleRewardTeachesTheHiddenRule) {
  const auto start = std::chrono::steady_clock::now();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("task");
  kt::RuleTask task = kt::make_rule_task(seed, 600, 100);
  const fs::path sft_model = kt::sft_rule_model(root, task, seed);
  const chat::ChatTemplate tmpl(chat::TemplateStyle::plain, "", "<|endoftext|>");
  double before = 0;
  {
    LoadedModel loaded = load_model_dir(sft_model.string());
    tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(sft_model.string());
    before = kt::rule_rate(*loaded.model, tok, tmpl, task, true, seed);
  }
  std::vector<data::PreferencePair> prompts = kt::rule_pairs(task, seed);
  train::GrpoConfig c;
  c.model = sft_model.string();
  c.chat_template = "plain";
  c.out = (root / "grpo").string();
  c.reward = std::string("ends-with:") + kt::kRuleWord;
  c.num_generations = 8;
  c.max_completion_length = 8;
  c.batch = 8;
  c.steps = 80;
  c.lr = 1e-3;
  c.warmup = 3;
  c.beta = 0.0;
  c.checkpoint_every = 0;
  c.log_every = 5;
  train::GrpoTrainer trainer(c, prompts, {}, {.progress = false});
  train::GrpoResult result = trainer.run();
  const double after = kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, true, seed);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("GRPO (seed %llu): sampled answers ending in '%s' %.1f%% -> %.1f%% after %lld steps (last mean reward "
              "%.3f); %.1f s\n",
              (unsigned long long)seed, kt::kRuleWord, 100 * before, 100 * after, (long long)result.step,
              result.train.reward, seconds);
  EXPECT_LE(before, 0.1);
  EXPECT_GE(after, 0.8);
  EXPECT_TRUE(fs::exists(result.model_dir + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(root / "grpo" / "metrics.csv"));
}

// ---- resume, divergence, errors ----

// The small GRPO run the trainer tests share: 4 completions of up to 6 tokens per prompt, 2
// prompts a step, a KL penalty (so a reference), rewarded for containing "a".
train::GrpoConfig small_grpo_config(const fs::path& base) {
  train::GrpoConfig c;
  c.model = base.string();
  c.chat_template = "plain";
  c.reward = "contains:a";
  c.num_generations = 4;
  c.max_completion_length = 6;
  c.batch = 2;
  c.lr = 1e-3;
  c.beta = 0.04;
  return c;
}

TEST(GrpoTrainer, ResumedRunEqualsUninterruptedRun) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("resume");
  kt::RuleTask task = kt::make_rule_task(seed, 24, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  std::vector<data::PreferencePair> prompts = kt::rule_pairs(task, seed);
  train::GrpoConfig c = small_grpo_config(base);
  c.grad_accum = 2;
  c.steps = 6;
  c.checkpoint_every = 2;
  c.log_every = 1;
  c.out = (root / "straight").string();
  train::GrpoResult straight = train::GrpoTrainer(c, prompts, {}, {.progress = false}).run();
  c.out = (root / "stopped").string();
  train::GrpoTrainer(c, prompts, {}, {.progress = false}).run(/*stop_after_step=*/3);
  train::GrpoTrainer resumed(c, prompts, {}, {.progress = false});
  resumed.resume();  // from step 3, where the stopped run saved
  train::GrpoResult after = resumed.run();
  ASSERT_TRUE(straight.finished && after.finished);
  EXPECT_EQ(straight.train.loss, after.train.loss);
  SafeTensors a = load_safetensors(straight.model_dir + "/model.safetensors");
  SafeTensors b = load_safetensors(after.model_dir + "/model.safetensors");
  for (auto& [name, t] : a.tensors) EXPECT_EQ(t.to_vector(), b.tensors.at(name).to_vector()) << name;
}

// On a GPU the first step (the same seeds draw the same completions from logits that agree to
// rounding) gives the CPU's reward and loss (full with a reference copy, and LoRA), and a run
// checkpointed on the CPU resumes on the GPU and writes its model.
TEST(GrpoTrainer, CudaRunMatchesTheCpuRun) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("cuda");
  kt::RuleTask task = kt::make_rule_task(seed, 24, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  std::vector<data::PreferencePair> prompts = kt::rule_pairs(task, seed);
  for (int64_t lora_r : {0, 4}) {
    SCOPED_TRACE(lora_r ? "LoRA" : "full");
    train::GrpoConfig c = small_grpo_config(base);
    c.steps = 1;
    c.lora_r = lora_r;
    c.checkpoint_every = 1;
    c.out = (root / ("cpu" + std::to_string(lora_r))).string();
    const train::GrpoResult cpu = train::GrpoTrainer(c, prompts, {}, {.progress = false}).run();
    c.device = "cuda";
    c.out = (root / ("gpu" + std::to_string(lora_r))).string();
    const train::GrpoResult gpu = train::GrpoTrainer(c, prompts, {}, {.progress = false}).run();
    ASSERT_TRUE(cpu.finished && gpu.finished);
    EXPECT_EQ(gpu.train.reward, cpu.train.reward) << "the same completions were expected";
    EXPECT_NEAR(gpu.train.loss, cpu.train.loss, 1e-3 * (1 + std::fabs(cpu.train.loss)));

    c.steps = 3;
    c.device = "cpu";
    c.out = (root / ("mixed" + std::to_string(lora_r))).string();
    train::GrpoTrainer(c, prompts, {}, {.progress = false}).run(/*stop_after_step=*/1);
    c.device = "cuda";
    train::GrpoTrainer resumed(c, prompts, {}, {.progress = false});
    resumed.resume();
    const train::GrpoResult after = resumed.run();
    EXPECT_TRUE(after.finished && std::isfinite(after.train.loss));
    EXPECT_TRUE(fs::exists(fs::path(lora_r ? after.adapter_dir : after.model_dir)));
  }
}

TEST(GrpoErrors, DivergenceStopsAndKeepsTheCheckpoint) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("nan");
  kt::RuleTask task = kt::make_rule_task(seed, 24, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  train::GrpoConfig c;
  c.model = base.string();
  c.chat_template = "plain";
  c.out = (root / "run").string();
  c.reward = "contains:a";
  c.num_generations = 4;
  c.max_completion_length = 6;
  c.batch = 4;
  c.steps = 20;
  c.checkpoint_every = 1;
  c.lr = 1e30;
  c.clip = 0;
  c.scale_rewards = "none";
  try {
    train::GrpoTrainer(c, kt::rule_pairs(task, seed), {}, {.progress = false}).run();
    FAIL() << "a diverging run did not stop";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stopped"), std::string::npos) << what;
    EXPECT_NE(what.find("last good checkpoint (step"), std::string::npos) << what;
  }
  EXPECT_TRUE(fs::exists(root / "run" / "checkpoint" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(root / "run" / "model"));
}

TEST(GrpoErrors, BadInputsAreNamed) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("errors");
  kt::RuleTask task = kt::make_rule_task(seed, 8, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  {
    std::ofstream f(root / "prompts.jsonl");
    f << R"({"prompt": "Colour for: a b c d e"})" << "\n" << R"({"prompt": 7})" << "\n";
  }
  train::GrpoConfig c;
  c.model = base.string();
  c.data = (root / "prompts.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.reward = "ends-with:gold";
  try {
    train::GrpoTrainer trainer(c, {.progress = false});
    FAIL() << "a mistyped prompt was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prompts.jsonl:2"), std::string::npos) << e.what();
  }
  c.reward = "";
  EXPECT_THROW(train::GrpoTrainer(c, kt::rule_pairs(task, seed), {}, {.progress = false}), Error);  // no reward
  c.reward = "ends-with:gold";
  c.num_generations = 1;
  try {
    train::GrpoTrainer trainer(c, kt::rule_pairs(task, seed), {}, {.progress = false});
    FAIL() << "num_generations 1 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_generations"), std::string::npos) << e.what();
  }
  c.num_generations = 4;
  c.loss_type = "ppo";
  EXPECT_THROW(train::GrpoTrainer(c, kt::rule_pairs(task, seed), {}, {.progress = false}), Error);
}

#ifdef KOTOBA_CLI_PATH
// `kotoba grpo` end to end with a checker script as the reward and LoRA: --json's last line, the
// adapter and the run's files; a reward command that fails stops the run with its name.
TEST(GrpoCli, TrainsWithACheckerCommand) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("cli");
  kt::RuleTask task = kt::make_rule_task(seed, 16, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  {
    std::ofstream f(root / "prompts.jsonl");
    for (const auto& p : kt::rule_pairs(task, seed)) f << json{{"prompt", p.prompt[0].content}}.dump() << "\n";
    std::ofstream c(root / "checker.py");
    c << "import json, sys\nfor line in sys.stdin:\n    print(1.0 if 'a' in json.loads(line)['completion'] else 0.0)\n";
  }
  auto kotoba = [&](const std::string& args, std::string& out) {
    const fs::path o = root / "stdout";
    const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' " + args + " >'" +
                            o.string() + "' 2>&1 </dev/null";
    const int status = std::system(cmd.c_str());
    out = slurp(o);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  const std::string common = "grpo --model '" + base.string() + "' --data '" + (root / "prompts.jsonl").string() +
                             "' --chat-template plain --num-generations 4 --max-completion-length 6 --batch 2 "
                             "--steps 2 --lr 1e-3 --lora-r 4 --beta 0.04 --quiet";
  std::string out;
  const std::string checker = std::string(KOTOBA_PYTHON) + " '" + (root / "checker.py").string() + "'";
  ASSERT_EQ(kotoba(common + " --out '" + (root / "run").string() + "' --reward-cmd \"" + checker + "\" --json", out), 0)
      << out;
  const size_t last_line = out.rfind("\n{");  // --json: the last line is the result
  const json j = json::parse(last_line == std::string::npos ? out : out.substr(last_line + 1));
  EXPECT_EQ(j["step"].get<int64_t>(), 2);
  EXPECT_TRUE(j["reward"].is_number());
  for (const char* file : {"adapter/adapter_model.safetensors", "loss.csv", "metrics.csv", "reward.png"})
    EXPECT_TRUE(fs::exists(root / "run" / file)) << file;
  EXPECT_NE(kotoba(common + " --out '" + (root / "bad").string() + "' --reward-cmd false", out), 0);
  EXPECT_NE(out.find("--reward-cmd 'false' failed"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(root / "bad" / "adapter"));
}
#endif

}  // namespace
