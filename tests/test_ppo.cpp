// PPO trainer (train/ppo.h): a small model taught a hidden rule by a rule reward (the rule rate of
// sampled answers from near 0 to >= 80 % with the KL to the reference bounded), exact resume,
// a diverging run stopped with its checkpoint kept, and the errors a user meets. The arithmetic
// (KL, rewards, GAE, whitening, losses) is checked against a PyTorch reference in test_ppo_math.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "data/preference_data.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "nn/layers.h"
#include "train/ppo.h"
#include "train/sft.h"
#include "test_util.h"
#include "rule_task.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("ppo", name); }

using kotoba::testing::slurp;

// ---- the hidden-rule task ----

TEST(PpoTask, RuleRewardTeachesTheHiddenRuleWithBoundedKl) {
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
  train::PpoConfig c;
  c.model = sft_model.string();
  c.chat_template = "plain";
  c.out = (root / "ppo").string();
  c.reward = std::string("ends-with:") + kt::kRuleWord;
  c.response_length = 8;
  c.temperature = 1.0;
  // 64 replies an update: at a 3 % base rate a batch of 32 often holds no rewarded reply, and the
  // whitened advantages of such a batch are noise that larger steps (lr 1e-3) turn into a wrecked
  // policy (replies that never end, KL of 20-50 nats) on some seeds.
  c.batch = 64;
  c.num_mini_batches = 2;
  c.steps = 30;
  c.lr = 3e-4;
  c.warmup = 4;
  c.checkpoint_every = 0;
  train::PpoTrainer trainer(c, kt::rule_pairs(task, seed), {}, {.progress = false});
  train::PpoResult result = trainer.run();
  const double after = kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, true, seed);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The first and last updates' mean score, from the run's own log.
  std::ifstream metrics(root / "ppo" / "metrics.csv");
  std::string header, first, line, last;
  std::getline(metrics, header);
  std::getline(metrics, first);
  last = first;
  while (std::getline(metrics, line)) last = line;
  std::printf("PPO (seed %llu): sampled answers ending in '%s' %.1f%% -> %.1f%% after %lld updates; mean score of "
              "the last update %.3f, KL to the reference %.3f nats per reply; %.1f s\n",
              (unsigned long long)seed, kt::kRuleWord, 100 * before, 100 * after, (long long)result.update,
              result.train.score, result.train.kl, seconds);
  EXPECT_LE(before, 0.1);
  EXPECT_GE(after, 0.8);
  EXPECT_GT(result.train.score, 0.8);
  // Bounded: a reply of a few tokens moved from ~3 % to ~100 % on its last word costs about
  // log(1 / 0.03) = 3.5 nats; a policy that drifted everywhere would pay far more.
  EXPECT_LT(result.train.kl, 8.0);
  EXPECT_GT(result.train.kl, 0.0);
  EXPECT_TRUE(fs::exists(result.model_dir + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(result.value_head_path));
  for (const char* file : {"loss.csv", "loss.png", "metrics.csv", "reward.png", "kl.png", "ppo_losses.png"})
    EXPECT_TRUE(fs::exists(root / "ppo" / file)) << file;
  EXPECT_EQ(header.rfind("update,score,rlhf_reward,kl,entropy,", 0), 0u) << header;
}

// ---- resume, divergence, errors ----

// The small PPO run the trainer tests share: replies of up to 6 tokens, 4 prompts an update in 2
// mini-batches, rewarded for containing "a".
train::PpoConfig small_ppo_config(const fs::path& base) {
  train::PpoConfig c;
  c.model = base.string();
  c.chat_template = "plain";
  c.reward = "contains:a";
  c.response_length = 6;
  c.batch = 4;
  c.num_mini_batches = 2;
  c.lr = 1e-3;
  return c;
}

TEST(PpoTrainer, ResumedRunEqualsUninterruptedRun) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("resume");
  kt::RuleTask task = kt::make_rule_task(seed, 12, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  std::vector<data::PreferencePair> prompts = kt::rule_pairs(task, seed);
  for (int64_t lora_r : {0, 4}) {
    train::PpoConfig c = small_ppo_config(base);
    c.num_ppo_epochs = 2;
    c.steps = 5;  // 12 prompts, 4 an update: the resumed run crosses an epoch boundary
    c.target_kl = 0.5;  // the adaptive coefficient is part of the state
    c.lora_r = lora_r;
    c.checkpoint_every = 1;
    c.out = (root / ("straight" + std::to_string(lora_r))).string();
    train::PpoResult straight = train::PpoTrainer(c, prompts, {}, {.progress = false}).run();
    c.out = (root / ("stopped" + std::to_string(lora_r))).string();
    train::PpoTrainer(c, prompts, {}, {.progress = false}).run(/*stop_after_update=*/2);
    train::PpoTrainer resumed(c, prompts, {}, {.progress = false});
    resumed.resume();
    train::PpoResult after = resumed.run();
    ASSERT_TRUE(straight.finished && after.finished);
    EXPECT_EQ(straight.train.score, after.train.score) << "lora_r " << lora_r;
    EXPECT_EQ(straight.train.kl_coef, after.train.kl_coef) << "lora_r " << lora_r;
    EXPECT_NE(straight.train.kl_coef, 0.05) << "the adaptive KL coefficient never moved";
    const std::string file = lora_r ? "/adapter_model.safetensors" : "/model.safetensors";
    SafeTensors a = load_safetensors((lora_r ? straight.adapter_dir : straight.model_dir) + file);
    SafeTensors b = load_safetensors((lora_r ? after.adapter_dir : after.model_dir) + file);
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (auto& [name, t] : a.tensors) EXPECT_EQ(t.to_vector(), b.tensors.at(name).to_vector()) << name;
    SafeTensors va = load_safetensors(straight.value_head_path), vb = load_safetensors(after.value_head_path);
    for (const char* name : {"v_head.summary.weight", "v_head.summary.bias"}) {
      ASSERT_TRUE(va.tensors.count(name)) << name;
      EXPECT_EQ(va.tensors.at(name).to_vector(), vb.tensors.at(name).to_vector()) << name;
    }
  }
}

// On a GPU the first update (the same seeds draw the same replies from logits that agree to
// rounding) gives the CPU's score and losses (full with a reference copy, and LoRA; the value head
// on the GPU too), and a run checkpointed on the CPU resumes on the GPU.
TEST(PpoTrainer, CudaRunMatchesTheCpuRun) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("cuda");
  kt::RuleTask task = kt::make_rule_task(seed, 12, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  std::vector<data::PreferencePair> prompts = kt::rule_pairs(task, seed);
  for (int64_t lora_r : {0, 4}) {
    SCOPED_TRACE(lora_r ? "LoRA" : "full");
    train::PpoConfig c = small_ppo_config(base);
    c.steps = 1;
    c.lora_r = lora_r;
    c.checkpoint_every = 1;
    c.out = (root / ("cpu" + std::to_string(lora_r))).string();
    const train::PpoResult cpu = train::PpoTrainer(c, prompts, {}, {.progress = false}).run();
    c.device = "cuda";
    c.out = (root / ("gpu" + std::to_string(lora_r))).string();
    const train::PpoResult gpu = train::PpoTrainer(c, prompts, {}, {.progress = false}).run();
    ASSERT_TRUE(cpu.finished && gpu.finished);
    EXPECT_EQ(gpu.train.score, cpu.train.score) << "the same replies were expected";
    EXPECT_NEAR(gpu.train.pg_loss, cpu.train.pg_loss, 1e-3 * (1 + std::fabs(cpu.train.pg_loss)));
    EXPECT_NEAR(gpu.train.vf_loss, cpu.train.vf_loss, 1e-3 * (1 + std::fabs(cpu.train.vf_loss)));
    EXPECT_TRUE(fs::exists(gpu.value_head_path));

    c.steps = 3;
    c.device = "cpu";
    c.out = (root / ("mixed" + std::to_string(lora_r))).string();
    train::PpoTrainer(c, prompts, {}, {.progress = false}).run(/*stop_after_update=*/1);
    c.device = "cuda";
    train::PpoTrainer resumed(c, prompts, {}, {.progress = false});
    resumed.resume();
    const train::PpoResult after = resumed.run();
    EXPECT_TRUE(after.finished && std::isfinite(after.train.pg_loss));
  }
}

TEST(PpoErrors, DivergenceStopsAndKeepsTheCheckpoint) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("nan");
  kt::RuleTask task = kt::make_rule_task(seed, 16, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  train::PpoConfig c;
  c.model = base.string();
  c.chat_template = "plain";
  c.out = (root / "run").string();
  c.response_length = 6;
  c.batch = 4;
  c.steps = 20;
  c.num_ppo_epochs = 1;  // one optimizer step an update: update 1 is saved, then the weights are gone
  c.checkpoint_every = 1;
  c.lr = 1e30;
  c.clip = 0;
  // Scores that always differ within a batch, so every update has something to learn.
  train::PpoOptions options{.progress = false};
  options.reward = [](const std::vector<train::RewardInput>& in) {
    std::vector<double> out;
    for (size_t i = 0; i < in.size(); ++i) out.push_back(double(i % 2));
    return out;
  };
  try {
    train::PpoTrainer(c, kt::rule_pairs(task, seed), {}, options).run();
    FAIL() << "a diverging run did not stop";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stopped"), std::string::npos) << what;
    EXPECT_NE(what.find("last good checkpoint (update"), std::string::npos) << what;
  }
  EXPECT_TRUE(fs::exists(root / "run" / "checkpoint" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(root / "run" / "model"));
}

TEST(PpoErrors, BadInputsAreNamed) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("errors");
  kt::RuleTask task = kt::make_rule_task(seed, 8, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  {
    std::ofstream f(root / "prompts.jsonl");
    f << R"({"prompt": "Colour for: a b c d e"})" << "\n" << R"({"prompt": 7})" << "\n";
  }
  train::PpoConfig c;
  c.model = base.string();
  c.data = (root / "prompts.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.reward = "ends-with:gold";
  c.response_length = 8;
  c.batch = 4;
  try {
    train::PpoTrainer trainer(c, {.progress = false});
    FAIL() << "a mistyped prompt was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prompts.jsonl:2"), std::string::npos) << e.what();
  }
  auto message = [&](const train::PpoConfig& config) {
    try {
      train::PpoTrainer trainer(config, kt::rule_pairs(task, seed), {}, {.progress = false});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  train::PpoConfig bad = c;
  bad.reward = "";
  EXPECT_NE(message(bad).find("exactly one reward"), std::string::npos) << message(bad);
  bad = c;
  bad.reward_cmd = "echo 1";
  EXPECT_NE(message(bad).find("exactly one reward"), std::string::npos) << message(bad);
  bad = c;
  bad.batch = 6;
  bad.num_mini_batches = 4;
  EXPECT_NE(message(bad).find("'batch' (6) must split evenly"), std::string::npos) << message(bad);
  bad = c;
  bad.kl_estimator = "k2";
  EXPECT_NE(message(bad).find("kl_estimator"), std::string::npos) << message(bad);
  bad = c;
  bad.response_length = 100;  // the model has 64 positions
  EXPECT_NE(message(bad).find("exceed the model's context"), std::string::npos) << message(bad);
  // Resuming where nothing was saved names the directory.
  train::PpoTrainer fresh(c, kt::rule_pairs(task, seed), {}, {.progress = false});
  try {
    fresh.resume();
    FAIL() << "resume without a checkpoint was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no checkpoint"), std::string::npos) << e.what();
  }
}

#ifdef KOTOBA_CLI_PATH
// `kotoba ppo` end to end with LoRA and a rule: --json's last line and the run's files.
TEST(PpoCli, TrainsWithARuleAndLora) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("cli");
  kt::RuleTask task = kt::make_rule_task(seed, 16, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  {
    std::ofstream f(root / "prompts.jsonl");
    for (const auto& p : kt::rule_pairs(task, seed)) f << json{{"prompt", p.prompt[0].content}}.dump() << "\n";
  }
  const fs::path o = root / "stdout";
  const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' ppo --model '" +
                          base.string() + "' --data '" + (root / "prompts.jsonl").string() + "' --out '" +
                          (root / "run").string() +
                          "' --chat-template plain --reward contains:a --response-length 6 --batch 4 --steps 2 "
                          "--lr 1e-3 --lora-r 4 --quiet --json >'" + o.string() + "' 2>&1 </dev/null";
  const int status = std::system(cmd.c_str());
  const std::string out = slurp(o);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  const size_t last_line = out.rfind("\n{");
  const json j = json::parse(last_line == std::string::npos ? out : out.substr(last_line + 1));
  EXPECT_EQ(j["update"].get<int64_t>(), 2);
  EXPECT_TRUE(j["score"].is_number());
  EXPECT_TRUE(j["kl"].is_number());
  for (const char* file : {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "value_head.safetensors",
                           "metrics.csv", "reward.png", "kl.png"})
    EXPECT_TRUE(fs::exists(root / "run" / file)) << file;
}
#endif

}  // namespace
