// A trained reward model as the reward of RL (train/reward_model_reward.h): the scorer's tokens
// and rewards against the template rendered by hand and RewardModel::rewards row by row, and
// against `kotoba score`; GRPO whose only reward is a small reward model trained on the hidden
// rule raises that model's score; and the errors a user meets (two rewards, a missing directory, a
// tokenizer that does not fit the model).
#include <gtest/gtest.h>

#include <algorithm>
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

#include "chat/chat_template.h"
#include "core/tensor.h"
#include "io/model_dir.h"
#include "io/reward_model_dir.h"
#include "nn/llama.h"
#include "nn/reward_model.h"
#include "tokenizer/tokenizer.h"
#include "train/grpo.h"
#include "train/ppo.h"
#include "train/reward.h"
#include "train/reward_model_reward.h"
#include "test_util.h"
#include "rule_task.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("rmreward", name); }

using kotoba::testing::slurp;

// Preference pairs of the hidden rule (chosen ends with the rule's word) as JSONL for `kotoba reward`.
void write_rule_pairs(const fs::path& path, const std::vector<data::PreferencePair>& pairs) {
  std::ofstream out(path);
  for (const auto& p : pairs)
    out << json{{"prompt", p.prompt[0].content}, {"chosen", p.chosen}, {"rejected", p.rejected}}.dump() << "\n";
}

// A reward model trained (plain template) from `base` on the rule's pairs; returns its directory.
std::string train_rule_reward_model(const fs::path& root, const fs::path& base, const kt::RuleTask& task, uint64_t seed,
                                    int64_t steps) {
  write_rule_pairs(root / "pairs.jsonl", kt::rule_pairs(task, seed));
  train::RewardConfig c;
  c.model = base.string();
  c.data = (root / "pairs.jsonl").string();
  c.val_fraction = 0;
  c.chat_template = "plain";
  c.out = (root / "rm").string();
  c.max_length = 48;
  c.batch = 16;
  c.steps = steps;
  c.lr = 3e-3;
  c.warmup = std::min<int64_t>(10, steps / 4);
  c.checkpoint_every = 0;
  c.seed = int64_t(seed % 100000);
  return train::RewardTrainer(c, {.progress = false}).run().model_dir;
}

// ---- the scorer against rewards computed by hand ----

TEST(RewardModelScorer, ScoresEqualRewardModelRowByRowAndKotobaScore) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("equal");
  kt::RuleTask task = kt::make_rule_task(seed, 64, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  const std::string rm = train_rule_reward_model(root, base, task, seed, 30);

  // Prompts of one turn and of several, replies of different lengths (so rows are padded).
  std::vector<std::vector<chat::Message>> prompts = {
      {{"user", kt::rule_prompt(task.train_inputs[0]), ""}},
      {{"user", kt::rule_prompt(task.train_inputs[1]), ""}},
      {{"user", "Colour for: a b", ""}, {"assistant", "a red", ""}, {"user", "and c?", ""}},
      {{"user", kt::rule_prompt(task.train_inputs[4]), ""}},
      {{"user", kt::rule_prompt(task.train_inputs[5]), ""}},
  };
  const std::vector<std::string> replies = {task.train_inputs[0].substr(0, 1) + " gold", "b red",
                                            "c blue and more", "", "e green gold green"};
  std::vector<train::RewardInput> inputs;
  for (size_t i = 0; i < prompts.size(); ++i) inputs.push_back({&prompts[i], replies[i]});

  train::RewardModelScorer scorer(rm, "auto", 1024, /*batch=*/2);
  EXPECT_EQ(scorer.chat_template().style(), chat::TemplateStyle::plain);  // the directory's own
  EXPECT_EQ(scorer.max_length(), 64);                                      // the model's context
  const std::vector<float> scores = scorer.score(inputs);
  ASSERT_EQ(scores.size(), inputs.size());
  EXPECT_EQ(scorer.truncated(), 0);

  // By hand: the plain template's text, tokenised whole, and each row alone through
  // RewardModel::rewards (its own read position: the last token that is not the pad token).
  LoadedRewardModel loaded = load_reward_model_dir(rm);
  loaded.model->set_training(false);
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(rm);
  float spread = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::string text;
    for (const auto& m : prompts[i]) text += (m.role == "user" ? "User: " : "Assistant: ") + m.content + "\n";
    text += "Assistant: " + replies[i] + "\n";
    const std::vector<int32_t> ids = tok.encode(text, true);
    EXPECT_EQ(scorer.tokenize(prompts[i], replies[i], "row"), ids) << text;
    NoGradGuard no_grad;
    const float expected =
        loaded.model->rewards(Tensor::from_vector_i32(ids, {1, int64_t(ids.size())})).to_vector()[0];
    EXPECT_NEAR(scores[i], expected, 1e-5f * std::max(1.0f, std::abs(expected))) << i;
    spread = std::max(spread, std::abs(scores[i] - scores[0]));
  }
  EXPECT_GT(spread, 1e-3f);  // the rows are told apart: the comparison is not of constants

  // The RewardFunction gives the same numbers.
  const std::vector<double> as_reward = train::reward_model_reward(rm, 1024, 2)(inputs);
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT_EQ(as_reward[i], double(scores[i])) << i;

  // A sampled reply that is not valid UTF-8 is read with U+FFFD in place of the bad bytes.
  EXPECT_EQ(scorer.tokenize(prompts[0], "a \xff gold\xe3\x81", "row"),
            scorer.tokenize(prompts[0], "a \xEF\xBF\xBD gold\xEF\xBF\xBD\xEF\xBF\xBD", "row"));

  // A cut sequence is counted, and read at the cut.
  train::RewardModelScorer short_scorer(rm, "auto", 6, 2);
  const std::vector<float> cut = short_scorer.score({inputs[2]});
  EXPECT_EQ(short_scorer.truncated(), 1);
  std::vector<int32_t> first6 = scorer.tokenize(prompts[2], replies[2], "row");
  first6.resize(6);
  EXPECT_NEAR(cut[0], scorer.score_tokens({first6})[0], 1e-6f);
  std::vector<std::string> warnings;
  train::reward_model_reward(rm, 6, 2, [&](const std::string& w) { warnings.push_back(w); })(inputs);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cut at max_length 6"), std::string::npos) << warnings[0];

#ifdef KOTOBA_CLI_PATH
  // `kotoba score` on the same pairs gives the same scores.
  {
    std::ofstream f(root / "score.jsonl");
    for (size_t i = 0; i < inputs.size(); ++i) {
      json prompt = json::array();
      for (const auto& m : prompts[i]) prompt.push_back({{"role", m.role}, {"content", m.content}});
      f << json{{"prompt", prompts[i].size() == 1 ? json(prompts[i][0].content) : prompt}, {"response", replies[i]}}
               .dump()
        << "\n";
    }
  }
  const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' score --model '" + rm +
                          "' --data '" + (root / "score.jsonl").string() + "' --batch 2 --out '" +
                          (root / "scored.jsonl").string() + "' >'" + (root / "log").string() + "' 2>&1 </dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(root / "log");
  std::istringstream lines(slurp(root / "scored.jsonl"));
  std::string line;
  size_t n = 0;
  for (; std::getline(lines, line); ++n) {
    ASSERT_LT(n, scores.size());
    const json j = json::parse(line);
    EXPECT_EQ(j["response"].get<std::string>(), replies[n]);
    EXPECT_FLOAT_EQ(j["score"].get<float>(), scores[n]) << n;
  }
  EXPECT_EQ(n, scores.size());
#endif
}

// ---- GRPO from a trained reward model ----

// The policy (SFT on the rule task: it almost never ends with the rule's word) is trained by GRPO
// whose only reward is a reward model trained on the rule's preference pairs (checked: it ranks
// held-out pairs right): the reward model's mean score of held-out samples rises far.
TEST(RewardModelReward, GrpoRaisesTheScoreOfATrainedRewardModel) {
  const auto start = std::chrono::steady_clock::now();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("grpo");
  kt::RuleTask task = kt::make_rule_task(seed, 600, 40);
  const fs::path sft_model = kt::sft_rule_model(root, task, seed);  // also writes root/base
  const std::string rm = train_rule_reward_model(root, root / "base", task, seed, 100);
  const double sft_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // The reward model learned the rule: held-out replies that follow it score above those that do not.
  int ranked_right = 0;
  {
    train::RewardModelScorer scorer(rm);
    kt::RuleTask held_out = task;
    held_out.train_inputs = task.test_inputs;
    const std::vector<data::PreferencePair> pairs = kt::rule_pairs(held_out, seed ^ 0x55);
    for (const auto& p : pairs) {
      const std::vector<float> r = scorer.score({{&p.prompt, p.chosen}, {&p.prompt, p.rejected}});
      ranked_right += r[0] > r[1];
    }
  }
  std::vector<data::PreferencePair> val;
  for (const auto& input : task.test_inputs) {
    data::PreferencePair p;
    p.prompt = {chat::Message{"user", kt::rule_prompt(input), ""}};
    val.push_back(std::move(p));
  }
  train::GrpoConfig c;
  c.model = sft_model.string();
  c.chat_template = "plain";
  c.out = (root / "grpo").string();
  c.reward_model = rm;
  // Groups of 16 completions: with 8, some seeds drew groups that all scored alike (no advantage
  // to learn from) and the run stalled or collapsed to one short completion (seeds
  // 18216534590177773956, 6589436685660287414, 6303494687698846954, even with the KL penalty below);
  // with 16 those and seeds 1 and 2 all rise by more than 7 within 100 steps.
  c.num_generations = 16;
  c.max_completion_length = 8;
  c.batch = 16;
  c.steps = 100;
  c.lr = 1e-3;
  c.beta = 0.04;  // a KL penalty towards the SFT model, against the same collapse
  c.warmup = 3;
  c.checkpoint_every = 0;
  c.eval_every = 1000;
  c.log_every = 5;
  std::vector<std::string> log;
  train::GrpoTrainer trainer(c, kt::rule_pairs(task, seed), val,
                             {.progress = false, .log = [&](const std::string& l) { log.push_back(l); }});
  const double rate_before =
      kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, true, seed);
  const double reward_before = trainer.validation_reward();
  train::GrpoResult result = trainer.run();
  const double reward_after = trainer.validation_reward();
  const double rate_after =
      kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, true, seed);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("GRPO from a reward model (seed %llu): held-out reward-model score %.3f -> %.3f, sampled answers ending "
              "in '%s' %.1f%% -> %.1f%% after %lld steps; reward model ranks %d of %zu held-out pairs right; %.1f s (%.1f s "
              "SFT and reward model)\n",
              (unsigned long long)seed, reward_before, reward_after, kt::kRuleWord, 100 * rate_before,
              100 * rate_after, (long long)result.step, ranked_right, task.test_inputs.size(), seconds, sft_seconds);
  EXPECT_EQ(result.step, 100);
  EXPECT_GE(ranked_right, 36) << "of " << task.test_inputs.size();
  // GRPO optimises what the reward model scores: its mean on held-out samples rises far. (Whether the
  // samples then follow the rule depends on the proxy: a policy may find replies the small reward
  // model overrates, e.g. the word repeated, so that share is reported, not asserted.)
  EXPECT_GT(reward_after, reward_before + 2.0);
  for (const auto& l : log) EXPECT_EQ(l.find("cut at max_length"), std::string::npos) << l;
}

// The pipeline on the rule task: SFT -> a reward model trained on the rule's pairs -> PPO
// against the reward model alone, held to the SFT model by the KL penalty. The penalty keeps the
// policy near replies the reward model was trained on, so the reward model's preference (the
// rule) is what PPO learns, not a blind spot of the proxy.
TEST(RewardModelReward, PpoFromARewardModelLearnsTheRule) {
  const auto start = std::chrono::steady_clock::now();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("ppo");
  kt::RuleTask task = kt::make_rule_task(seed, 600, 100);
  const fs::path sft_model = kt::sft_rule_model(root, task, seed);
  const std::string rm = train_rule_reward_model(root, root / "base", task, seed, 100);
  train::PpoConfig c;
  c.model = sft_model.string();
  c.chat_template = "plain";
  c.out = (root / "ppo").string();
  c.reward_model = rm;
  c.response_length = 8;
  c.temperature = 1.0;
  c.kl_coef = 0.2;  // the reward model's scores span about +-4, the rule's reward 0..1
  c.batch = 64;
  c.num_mini_batches = 2;
  c.steps = 30;
  c.lr = 3e-4;
  c.warmup = 4;
  c.checkpoint_every = 0;
  train::PpoTrainer trainer(c, kt::rule_pairs(task, seed), {}, {.progress = false});
  const double before = kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, true, seed);
  train::PpoResult result = trainer.run();
  const double after = kt::rule_rate(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task, true, seed);
  std::ifstream metrics(root / "ppo" / "metrics.csv");
  std::string header, first;
  std::getline(metrics, header);
  std::getline(metrics, first);
  const double first_score = std::strtod(first.substr(first.find(',') + 1).c_str(), nullptr);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("PPO from a reward model (seed %llu): mean score %.3f -> %.3f, KL %.3f nats per reply, sampled "
              "held-out answers ending in '%s' %.1f%% -> %.1f%%; %.1f s\n",
              (unsigned long long)seed, first_score, result.train.score, result.train.kl, kt::kRuleWord, 100 * before,
              100 * after, seconds);
  EXPECT_LE(before, 0.1);
  EXPECT_GE(after, 0.8);
  EXPECT_GT(result.train.score, first_score + 2.0);
  EXPECT_LT(result.train.kl, 8.0);
}

// ---- errors ----

TEST(RewardModelReward, BadInputsAreNamed) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("errors");
  kt::RuleTask task = kt::make_rule_task(seed, 16, 1);
  const fs::path base = kt::make_rule_base_model(root, task, seed);
  const std::string missing = (root / "no_such_rm").string();

  // A missing directory, and a causal LM that is not a reward model.
  try {
    train::reward_model_reward(missing);
    FAIL() << "a missing reward-model directory was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no such directory"), std::string::npos) << e.what();
  }
  try {
    train::RewardModelScorer scorer(base.string());
    FAIL() << "a causal LM was accepted as a reward model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence classifier"), std::string::npos) << e.what();
  }
  EXPECT_THROW(train::RewardModelScorer(base.string(), "auto", 0), Error);
  EXPECT_THROW(train::RewardModelScorer(base.string(), "auto", 64, 0), Error);

  // A tokenizer with ids beyond the model's vocabulary: a reward model saved with a tokenizer of
  // fewer tokens, then given the base's tokenizer.json.
  const std::string small = (root / "small_vocab_rm").string();
  {
    tokenizer::TrainOptions options;
    options.vocab_size = 262;
    options.show_progress = false;
    options.threads = 1;
    tokenizer::Tokenizer small_tok = tokenizer::Tokenizer::train({(root / "corpus.txt").string()}, options);
    ASSERT_LT(small_tok.vocab_size(), tokenizer::Tokenizer::load_dir(base.string()).vocab_size());
    nn::LlamaConfig mc;
    mc.vocab_size = small_tok.vocab_size();
    mc.hidden_size = 16;
    mc.intermediate_size = 32;
    mc.num_hidden_layers = 1;
    mc.num_attention_heads = mc.num_key_value_heads = 2;
    mc.max_position_embeddings = 64;
    mc.seed = seed;
    nn::RewardModel model(std::make_unique<nn::Llama>(mc), std::nullopt, 0.02f, seed);
    save_reward_model_dir(small, model, small_tok);
    fs::copy_file(base / "tokenizer.json", fs::path(small) / "tokenizer.json", fs::copy_options::overwrite_existing);
  }
  try {
    train::RewardModelScorer scorer(small, "plain");
    FAIL() << "a tokenizer with ids beyond the reward model's vocabulary was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find((fs::path(small) / "tokenizer.json").string()), std::string::npos) << what;
    EXPECT_NE(what.find("vocab_size"), std::string::npos) << what;
  }

  // GRPO: exactly one reward; a missing reward model is named with its flag.
  const std::string rm = train_rule_reward_model(root, base, task, seed, 2);
  train::GrpoConfig c;
  c.model = base.string();
  c.chat_template = "plain";
  c.out = (root / "run").string();
  c.num_generations = 2;
  c.max_completion_length = 4;
  c.batch = 2;
  c.steps = 1;
  struct Given {
    std::string reward, cmd, model, count;
  };
  for (const Given& g : {Given{"contains:a", "", rm, "2 given"}, Given{"", "echo 1", rm, "2 given"},
                         Given{"contains:a", "echo 1", rm, "3 given"}, Given{"", "", "", "0 given"}}) {
    c.reward = g.reward;
    c.reward_cmd = g.cmd;
    c.reward_model = g.model;
    try {
      train::GrpoTrainer trainer(c, kt::rule_pairs(task, seed), {}, {.progress = false});
      FAIL() << g.count << " rewards were accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("exactly one reward (" + g.count + ")"), std::string::npos) << what;
      for (const char* flag : {"--reward ", "--reward-cmd", "--reward-model"})
        EXPECT_NE(what.find(flag), std::string::npos) << flag << ": " << what;
    }
  }
  c.reward = "";
  c.reward_cmd = "";
  c.reward_model = missing;
  try {
    train::GrpoTrainer trainer(c, kt::rule_pairs(task, seed), {}, {.progress = false});
    FAIL() << "a missing reward model was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--reward-model"), std::string::npos) << what;
    EXPECT_NE(what.find(missing), std::string::npos) << what;
  }
  c.reward_model = rm;  // and a good one trains
  train::GrpoResult result = train::GrpoTrainer(c, kt::rule_pairs(task, seed), {}, {.progress = false}).run();
  EXPECT_EQ(result.step, 1);
  EXPECT_TRUE(std::isfinite(result.train.reward));

#ifdef KOTOBA_CLI_PATH
  auto kotoba = [&](const std::string& args, std::string& out) {
    const fs::path o = root / "stdout";
    const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' " + args + " >'" +
                            o.string() + "' 2>&1 </dev/null";
    const int status = std::system(cmd.c_str());
    out = slurp(o);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  {
    std::ofstream f(root / "prompts.jsonl");
    for (const auto& p : kt::rule_pairs(task, seed)) f << json{{"prompt", p.prompt[0].content}}.dump() << "\n";
  }
  const std::string common = "grpo --model '" + base.string() + "' --data '" + (root / "prompts.jsonl").string() +
                             "' --chat-template plain --num-generations 2 --max-completion-length 4 --batch 2 "
                             "--steps 1 --quiet";
  std::string out;
  ASSERT_EQ(kotoba(common + " --out '" + (root / "cli_run").string() + "' --reward-model '" + rm + "' --json", out), 0)
      << out;
  EXPECT_NE(out.find("reward model: " + rm), std::string::npos) << out;
  const size_t last_line = out.rfind("\n{");
  const json j = json::parse(last_line == std::string::npos ? out : out.substr(last_line + 1));
  EXPECT_EQ(j["step"].get<int64_t>(), 1);
  EXPECT_TRUE(j["reward"].is_number());
  EXPECT_NE(kotoba(common + " --out '" + (root / "cli_two").string() + "' --reward contains:a --reward-model '" + rm +
                       "'",
                   out),
            0);
  EXPECT_NE(out.find("exactly one reward"), std::string::npos) << out;
  EXPECT_NE(kotoba(common + " --out '" + (root / "cli_missing").string() + "' --reward-model '" + missing + "'", out), 0);
  EXPECT_NE(out.find("--reward-model"), std::string::npos) << out;
  EXPECT_NE(out.find(missing), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(root / "cli_missing" / "model"));
  EXPECT_NE(kotoba("score --model '" + missing + "' --prompt a --response b", out), 0);
  EXPECT_NE(out.find(missing), std::string::npos) << out;
#endif
}

}  // namespace
