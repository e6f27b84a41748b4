// Reward models: rewards, pairwise loss and gradients against transformers' sequence classifiers,
// kotoba's saved directory read by transformers, a small model that learns a hidden preference
// rule, exact resume, and the errors a user meets (library and CLI).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "io/model_dir.h"
#include "io/reward_model_dir.h"
#include "io/safetensors.h"
#include "nn/llama.h"
#include "nn/reward_model.h"
#include "ops/autograd.h"
#include "tokenizer/tokenizer.h"
#include "train/reward.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("reward", name); }

using kotoba::testing::slurp;

int run(const std::string& cmd) {
  int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Rows of `lengths` taken one after another from `flat`, right-padded with `pad` into (B, T).
Tensor padded_rows(const std::vector<int32_t>& flat, const std::vector<int64_t>& lengths, int32_t pad) {
  const int64_t B = int64_t(lengths.size()), T = *std::max_element(lengths.begin(), lengths.end());
  std::vector<int32_t> ids(size_t(B * T), pad);
  size_t at = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::copy(flat.begin() + ptrdiff_t(at), flat.begin() + ptrdiff_t(at + size_t(lengths[size_t(b)])),
              ids.begin() + b * T);
    at += size_t(lengths[size_t(b)]);
  }
  return Tensor::from_vector_i32(ids, {B, T});
}

// ---- the pairwise loss itself ----

TEST(RewardLoss, PairwiseLossAndGradientByHand) {
  const std::vector<float> r = {2.0f, -1.0f, 0.5f, 1.0f};  // chosen 2, -1; rejected 0.5, 1
  train::PairwiseLoss l = train::pairwise_reward_loss(r);
  auto softplus = [](double x) { return std::log1p(std::exp(x)); };
  const double want = (softplus(-1.5) + softplus(2.0)) / 2;
  EXPECT_NEAR(l.loss, want, 1e-12);
  EXPECT_EQ(l.correct, 1);
  EXPECT_NEAR(l.margin_sum, 1.5 - 2.0, 1e-12);
  // Central differences of the loss.
  for (size_t i = 0; i < r.size(); ++i) {
    std::vector<float> up = r, down = r;
    up[i] += 1e-3f;
    down[i] -= 1e-3f;
    const double numeric =
        (train::pairwise_reward_loss(up).loss - train::pairwise_reward_loss(down).loss) / double(up[i] - down[i]);
    EXPECT_NEAR(l.grad[i], numeric, 1e-6) << i;
  }
  // TRL's centring term adds c * mean((r_c + r_r)^2); a margin shifts the difference.
  train::PairwiseLoss centred = train::pairwise_reward_loss(r, 0.01);
  EXPECT_NEAR(centred.loss, want + 0.01 * (2.5 * 2.5 + 0.0) / 2, 1e-12);
  const std::vector<double> margins = {1.0, 0.0};
  EXPECT_NEAR(train::pairwise_reward_loss(r, 0, margins).loss, (softplus(-0.5) + softplus(2.0)) / 2, 1e-12);
  // Far from zero, no overflow.
  const std::vector<float> far = {-500.0f, 500.0f};
  EXPECT_NEAR(train::pairwise_reward_loss(far).loss, 1000.0, 1e-9);
}

// Rows are [chosen..., rejected...], right-padded; a reply ending with the pad token (an EOS
// serving as pad) is read at the token before it, as transformers reads it.
TEST(RewardLoss, BatchLayoutAndReadPosition) {
  const std::vector<int32_t> c0 = {5, 6, 7}, c1 = {5, 9, 2}, r0 = {5, 6, 8, 8, 1}, r1 = {5, 4};
  const std::vector<const std::vector<int32_t>*> chosen = {&c0, &c1}, rejected = {&r0, &r1};
  train::RewardBatch b = train::make_reward_batch(chosen, rejected, /*pad_id=*/2);
  EXPECT_EQ(b.pairs, 2);
  EXPECT_EQ(b.ids.shape(), (Shape{4, 5}));
  EXPECT_EQ(b.lengths, (std::vector<int64_t>{3, 2, 5, 2}));
  const std::vector<int32_t> want = {5, 6, 7, 2, 2, 5, 9, 2, 2, 2, 5, 6, 8, 8, 1, 5, 4, 2, 2, 2};
  EXPECT_EQ(std::vector<int32_t>(b.ids.data<int32_t>(), b.ids.data<int32_t>() + 20), want);
}

// ---- against transformers ----

class RewardReference : public ::testing::TestWithParam<const char*> {};

TEST_P(RewardReference, RewardsLossAndGradientsMatchTransformers) {
  const fs::path dir = kt::reference_dir() / "reward" / GetParam();
  ASSERT_TRUE(fs::exists(dir / "reference.safetensors")) << kt::reference_missing(dir / "reference.safetensors");
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  const Tensor& ids_t = ref.tensors.at("ids");
  const Tensor& lengths_t = ref.tensors.at("lengths");
  std::vector<int32_t> flat(ids_t.data<int32_t>(), ids_t.data<int32_t>() + ids_t.numel());
  std::vector<int64_t> lengths(lengths_t.data<int32_t>(), lengths_t.data<int32_t>() + lengths_t.numel());

  LoadedRewardModel loaded = load_reward_model_dir(dir.string());
  nn::RewardModel& model = *loaded.model;
  ASSERT_TRUE(model.pad_token_id().has_value());
  model.set_training(true);
  Tensor ids = padded_rows(flat, lengths, int32_t(*model.pad_token_id()));
  EXPECT_EQ(model.lengths_of(ids), lengths);  // transformers' rule: the last token that is not padding

  Tensor rewards = model.rewards(ids, lengths);
  kt::Comparison cr = kt::compare_to_reference(rewards.view_as_shape({int64_t(lengths.size())}),
                                               ref.tensors.at("rewards"), {1e-4, 1e-4});
  EXPECT_TRUE(cr.ok) << GetParam() << " rewards: " << cr.describe();
  const std::vector<float> r = rewards.to_vector();
  train::PairwiseLoss loss = train::pairwise_reward_loss(r);
  const double want = ref.tensors.at("loss").data<double>()[0];
  EXPECT_NEAR(loss.loss, want, 1e-4 * std::abs(want)) << GetParam();
  std::printf("%s: loss %.8f (transformers %.8f), rewards %s\n", GetParam(), loss.loss, want, cr.describe().c_str());

  model.zero_grad();
  std::vector<float> seed(loss.grad.begin(), loss.grad.end());
  backward(rewards, Tensor::from_vector(seed, rewards.shape()));
  int checked = 0;
  double worst = 0;
  for (auto& [name, p] : model.named_parameters()) {
    auto it = ref.tensors.find("grad." + name);
    ASSERT_NE(it, ref.tensors.end()) << "no reference gradient for " << name;
    // The pairwise loss ignores a shift of every reward, so the gradient of the last norm's bias
    // (GPT-2's ln_f.bias) is exactly zero: only f32 rounding is left there, hence an absolute floor.
    kt::Comparison c = kt::compare_to_reference(p.grad(), it->second, {1e-4, 1e-4, 1e-6});
    EXPECT_TRUE(c.ok) << GetParam() << " " << name << ": " << c.describe();
    worst = std::max(worst, c.worst_ratio);
    ++checked;
  }
  std::printf("%s: %d parameter gradients, worst error/allowed %.3f\n", GetParam(), checked, worst);
  size_t reference_grads = 0;
  for (auto& [name, t] : ref.tensors) reference_grads += name.rfind("grad.", 0) == 0;
  EXPECT_EQ(size_t(checked), reference_grads);  // nothing on either side left out (no lm_head)
}

INSTANTIATE_TEST_SUITE_P(Models, RewardReference, ::testing::Values("gpt2", "llama_gqa"),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

// A LLaMA (GQA, untied) reward model made by kotoba from a causal LM, saved, opened by
// transformers' AutoModelForSequenceClassification: the same rewards. And read back by kotoba:
// the same rewards exactly.
TEST(RewardReferenceSave, KotobaRewardModelLoadsInTransformers) {
  const fs::path root = scratch("to_hf");
  nn::LlamaConfig mc;
  mc.vocab_size = 300;
  mc.hidden_size = 32;
  mc.intermediate_size = 64;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = 4;
  mc.num_key_value_heads = 2;
  mc.max_position_embeddings = 64;
  mc.initializer_range = 0.2f;
  mc.seed = kt::test_seed();
  // A tokenizer for the directory (a byte-level BPE over a few words).
  {
    std::ofstream corpus(root.string() + ".txt");
    for (int i = 0; i < 200; ++i) corpus << "the reward model reads the last token of every row " << i << "\n";
  }
  tokenizer::TrainOptions options;
  options.vocab_size = 280;
  options.show_progress = false;
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::train({root.string() + ".txt"}, options);
  LoadedModel base;
  base.model = std::make_unique<nn::Llama>(mc);
  auto model = reward_model_from_causal_lm(std::move(base), /*pad_token_id=*/0, kt::test_seed());
  {
    NoGradGuard no_grad;  // a score head large enough to give rewards of order 1
    Tensor w = model->score.weight.detach();
    Generator gen(kt::test_seed() + 7);
    w.copy_from(kt::random_normal(w.shape(), gen, 0.5f));
  }
  save_reward_model_dir((root / "rm").string(), *model, tok);
  const json config = json::parse(slurp(root / "rm" / "config.json"));
  EXPECT_EQ(config["architectures"][0], "LlamaForSequenceClassification");
  EXPECT_EQ(config["pad_token_id"], 0);
  EXPECT_EQ(config["id2label"].size(), 1u);
  EXPECT_FALSE(load_safetensors((root / "rm" / "model.safetensors").string()).tensors.count("lm_head.weight"));

  const std::vector<std::vector<int32_t>> rows = {{5, 17, 42, 9}, {11, 3, 250, 7, 7, 99, 13}, {8}};
  std::vector<int32_t> flat;
  std::vector<int64_t> lengths;
  for (const auto& r : rows) {
    flat.insert(flat.end(), r.begin(), r.end());
    lengths.push_back(int64_t(r.size()));
  }
  Tensor ids = padded_rows(flat, lengths, 0);
  model->set_training(false);
  NoGradGuard no_grad;
  const std::vector<float> mine = model->rewards(ids, lengths).to_vector();
  {
    std::ofstream in(root / "rows.json");
    in << json(rows).dump();
  }
  const std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                          "/tests/reference/reward_reference.py\" --score \"" + (root / "rm").string() + "\" \"" +
                          (root / "rows.json").string() + "\" \"" + (root / "hf.json").string() + "\"";
  ASSERT_EQ(run(cmd), 0) << "failed: " << cmd;
  const json hf = json::parse(slurp(root / "hf.json"));
  EXPECT_EQ(hf["architecture"], "LlamaForSequenceClassification");
  ASSERT_EQ(hf["rewards"].size(), mine.size());
  for (size_t i = 0; i < mine.size(); ++i) {
    const double want = hf["rewards"][i].get<double>();
    EXPECT_NEAR(mine[i], want, 1e-4 * std::max(1.0, std::abs(want))) << "row " << i;
  }
  LoadedRewardModel again = load_reward_model_dir((root / "rm").string());
  again.model->set_training(false);
  EXPECT_EQ(again.model->rewards(ids).to_vector(), mine);
}

// ---- a hidden preference rule ----

// Prompts ask for a short reply; the preferred reply ends with "please", the other is a random
// reply that does not (it may hold "please" elsewhere). Held-out pairs use prompts and replies
// never seen in training.
const char* const kWords[] = {"red",   "blue", "green", "cat",  "dog",   "tree",  "sun",    "moon",  "river",
                              "stone", "bird", "fish",  "cold", "warm",  "fast",  "slow",   "please", "open",
                              "close", "sing", "walk",  "jump", "light", "dark",  "happy", "quiet"};
constexpr size_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);

std::string random_words(uint64_t seed, uint64_t index, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += kWords[mix64(seed ^ (index * 977 + uint64_t(i) * 31 + 5)) % kNumWords];
  }
  return s;
}

struct RulePairs {
  std::vector<json> train, test;
};

RulePairs make_rule_pairs(uint64_t seed, int n_train, int n_test) {
  RulePairs out;
  std::set<std::string> seen;
  uint64_t index = 0;
  while (int(out.train.size()) < n_train || int(out.test.size()) < n_test) {
    ++index;
    const std::string prompt = "Say " + random_words(seed, index, 2) + ".";
    const int n = 2 + int(mix64(seed + index * 7) % 4);
    std::string chosen = random_words(seed ^ 0xc0ffee, index, n - 1) + " please";
    std::string rejected = random_words(seed ^ 0xbadbad, index, n);
    if (rejected.size() >= 6 && rejected.compare(rejected.size() - 6, 6, "please") == 0) continue;
    if (!seen.insert(prompt + "|" + chosen + "|" + rejected).second) continue;
    json record = json{{"prompt", prompt}, {"chosen", chosen}, {"rejected", rejected}};
    (int(out.train.size()) < n_train ? out.train : out.test).push_back(record);
  }
  return out;
}

void write_jsonl(const fs::path& path, const std::vector<json>& records) {
  std::ofstream out(path);
  for (const auto& r : records) out << r.dump() << "\n";
}

// A byte-level BPE trained on the pairs' text and a random small LLaMA causal LM (untied head).
fs::path make_base_model(const fs::path& root, const std::vector<json>& records, uint64_t seed) {
  fs::create_directories(root);
  const fs::path corpus = root / "corpus.txt";
  {
    std::ofstream out(corpus);
    for (const auto& r : records)
      out << r["prompt"].get<std::string>() << "\n" << r["chosen"].get<std::string>() << "\n"
          << r["rejected"].get<std::string>() << "\n";
  }
  tokenizer::TrainOptions options;
  options.vocab_size = 300;
  options.show_progress = false;
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::train({corpus.string()}, options);
  const fs::path tokenizer_json = root / "tokenizer.json";
  tok.save(tokenizer_json.string());
  nn::LlamaConfig mc;
  mc.vocab_size = tok.vocab_size();
  mc.hidden_size = 48;
  mc.intermediate_size = 96;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = 4;
  mc.num_key_value_heads = 2;
  mc.max_position_embeddings = 96;
  mc.seed = seed;
  nn::Llama model(mc);
  GenerationConfig generation;
  generation.eos_token_id = generation.bos_token_id = *tok.token_to_id("<|endoftext|>");
  const fs::path dir = root / "base";
  save_model_dir(dir.string(), model, tokenizer_json.string(), generation);
  return dir;
}

TEST(RewardTask, LearnsAHiddenPreferenceRule) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("rule");
  RulePairs pairs = make_rule_pairs(seed, 1200, 250);
  std::vector<json> all = pairs.train;
  all.insert(all.end(), pairs.test.begin(), pairs.test.end());
  const fs::path base = make_base_model(root, all, seed);
  write_jsonl(root / "train.jsonl", pairs.train);
  write_jsonl(root / "test.jsonl", pairs.test);
  train::RewardConfig c;
  c.model = base.string();
  c.data = (root / "train.jsonl").string();
  c.val_data = (root / "test.jsonl").string();
  c.chat_template = "plain";
  c.out = (root / "run").string();
  c.max_length = 64;
  c.batch = 16;
  c.steps = 200;
  c.lr = 3e-3;
  c.warmup = 20;
  c.min_lr = 1e-4;
  c.checkpoint_every = 0;
  c.seed = int64_t(seed % 100000);
  train::RewardTrainer trainer(c, {.progress = false});
  const train::RewardEval before = trainer.evaluate();
  train::RewardResult result = trainer.run();
  std::printf("hidden rule: held-out accuracy %.1f%% before, %.1f%% after %lld steps on %lld pairs (val loss %.4f, "
              "mean margin %.3f)\n",
              100 * before.accuracy, 100 * result.val.accuracy, (long long)result.step, (long long)result.val_pairs,
              result.val.loss, result.val.mean_margin);
  EXPECT_GE(result.val_pairs, 200);
  EXPECT_GE(result.val.accuracy, 0.95);
  ASSERT_TRUE(fs::exists(fs::path(result.model_dir) / "model.safetensors"));
  // The directory written scores the held-out pairs as the trainer did.
  LoadedRewardModel saved = load_reward_model_dir(result.model_dir);
  EXPECT_EQ(json::parse(slurp(fs::path(result.model_dir) / "config.json"))["architectures"][0],
            "LlamaForSequenceClassification");
  EXPECT_TRUE(fs::exists(fs::path(result.model_dir) / "tokenizer_config.json"));
  EXPECT_TRUE(fs::exists(root / "run" / "loss.csv") && fs::exists(root / "run" / "loss.png"));
}

// LoRA on the same task: the backbone frozen and adapted, the score head trained in full. The PEFT
// adapter written (task_type SEQ_CLS, the head in it) put on the base by PEFT gives the rewards of
// the merged model kotoba writes.
TEST(RewardTask, LoraAdaptersLearnAndLoadInPeft) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("lora");
  RulePairs pairs = make_rule_pairs(seed, 1200, 250);
  std::vector<json> all = pairs.train;
  all.insert(all.end(), pairs.test.begin(), pairs.test.end());
  const fs::path base = make_base_model(root, all, seed);
  write_jsonl(root / "train.jsonl", pairs.train);
  write_jsonl(root / "test.jsonl", pairs.test);
  train::RewardConfig c;
  c.model = base.string();
  c.data = (root / "train.jsonl").string();
  c.val_data = (root / "test.jsonl").string();
  c.chat_template = "plain";
  c.out = (root / "run").string();
  c.max_length = 64;
  c.batch = 16;
  c.steps = 200;
  c.lr = 5e-3;
  c.warmup = 20;
  c.checkpoint_every = 0;
  c.lora_r = 8;
  c.lora_alpha = 16;
  c.lora_dropout = 0;
  c.lora_targets = "all-linear";
  c.seed = int64_t(seed % 100000);
  train::RewardTrainer trainer(c, {.progress = false});
  train::RewardResult result = trainer.run();
  std::printf("hidden rule, LoRA: held-out accuracy %.1f%% after %lld steps (val loss %.4f)\n",
              100 * result.val.accuracy, (long long)result.step, result.val.loss);
  EXPECT_GE(result.val.accuracy, 0.9);
  ASSERT_TRUE(fs::exists(fs::path(result.adapter_dir) / "adapter_model.safetensors"));
  const json adapter_config = json::parse(slurp(fs::path(result.adapter_dir) / "adapter_config.json"));
  EXPECT_EQ(adapter_config["task_type"], "SEQ_CLS");

  LoadedRewardModel merged = load_reward_model_dir(result.model_dir);
  merged.model->set_training(false);
  const int64_t pad = *merged.model->pad_token_id();
  std::vector<std::vector<int32_t>> rows;
  Generator gen(seed + 3);
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> row;
    for (int t = 0; t < 5 + 3 * i; ++t) {
      int32_t id = int32_t(gen.uniform() * 200.0f) + 1;
      if (id == pad) id = int32_t(pad) + 1;
      row.push_back(id);
    }
    rows.push_back(row);
  }
  std::vector<int32_t> flat;
  std::vector<int64_t> lengths;
  for (const auto& r : rows) {
    flat.insert(flat.end(), r.begin(), r.end());
    lengths.push_back(int64_t(r.size()));
  }
  NoGradGuard no_grad;
  const std::vector<float> mine = merged.model->rewards(padded_rows(flat, lengths, int32_t(pad)), lengths).to_vector();
  {
    std::ofstream in(root / "rows.json");
    in << json(rows).dump();
  }
  const std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                          "/tests/reference/reward_reference.py\" --peft-score \"" + base.string() + "\" \"" +
                          result.adapter_dir + "\" " + std::to_string(pad) + " \"" + (root / "rows.json").string() +
                          "\" \"" + (root / "peft.json").string() + "\"";
  ASSERT_EQ(run(cmd), 0) << "failed: " << cmd;
  const json peft = json::parse(slurp(root / "peft.json"));
  ASSERT_EQ(peft["rewards"].size(), mine.size());
  for (size_t i = 0; i < mine.size(); ++i) {
    const double want = peft["rewards"][i].get<double>();
    EXPECT_NEAR(mine[i], want, 1e-4 * std::max(1.0, std::abs(want))) << "row " << i;
  }
}

// ---- resume, errors ----

// Full fine-tuning, and LoRA with adapter dropout (whose mask generators are part of the state).
class RewardResume : public ::testing::TestWithParam<bool> {};

TEST_P(RewardResume, ResumedRunEqualsUninterruptedRun) {
  const uint64_t seed = kt::test_seed();
  const bool lora = GetParam();
  const fs::path root = scratch(lora ? "resume_lora" : "resume");
  RulePairs pairs = make_rule_pairs(seed, 120, 20);
  std::vector<json> all = pairs.train;
  all.insert(all.end(), pairs.test.begin(), pairs.test.end());
  const fs::path base = make_base_model(root, all, seed);
  write_jsonl(root / "train.jsonl", all);
  train::RewardConfig c;
  c.model = base.string();
  c.data = (root / "train.jsonl").string();
  c.chat_template = "chatml";
  c.max_length = 64;
  c.batch = 4;
  c.grad_accum = 2;
  c.steps = 12;
  c.lr = 1e-3;
  c.checkpoint_every = 5;
  c.log_every = 1;
  c.val_fraction = 0.1;
  c.eval_every = 4;
  if (lora) {
    c.lora_r = 4;
    c.lora_dropout = 0.1;
    c.lora_targets = "all-linear";
    c.disable_dropout = 0;  // dropout on (TRL turns it off by default)
  }
  c.out = (root / "straight").string();
  train::RewardResult straight = train::RewardTrainer(c, {.progress = false}).run();
  c.out = (root / "stopped").string();
  train::RewardTrainer(c, {.progress = false}).run(/*stop_after_step=*/7);
  EXPECT_FALSE(fs::exists(root / "stopped" / "model"));
  train::RewardTrainer resumed(c, {.progress = false});
  resumed.resume();
  train::RewardResult after = resumed.run();
  ASSERT_TRUE(straight.finished && after.finished);
  EXPECT_EQ(straight.train_loss, after.train_loss);
  EXPECT_EQ(straight.val.accuracy, after.val.accuracy);
  SafeTensors a = load_safetensors(straight.model_dir + "/model.safetensors");
  SafeTensors b = load_safetensors(after.model_dir + "/model.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    EXPECT_EQ(t.to_vector(), b.tensors.at(name).to_vector()) << name;
  }
  EXPECT_EQ(slurp(root / "straight" / "loss.csv").substr(0, 60), slurp(root / "stopped" / "loss.csv").substr(0, 60));
  if (lora) {
    EXPECT_EQ(slurp(straight.adapter_dir + "/adapter_model.safetensors"),
              slurp(after.adapter_dir + "/adapter_model.safetensors"));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, RewardResume, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "lora" : "full"; });

// A learning rate that overflows the weights makes the loss non-finite (or explode) at the second
// step: the run stops naming the last good checkpoint (step 1), which stays, and writes no model.
// On a GPU (full and LoRA) the run reaches the CPU's loss and accuracy (f32 on both; 1 %), a
// CPU checkpoint resumes on the GPU, and the directory written is read back on the host.
TEST(RewardTrainer, CudaRunMatchesTheCpuRun) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("cuda");
  RulePairs pairs = make_rule_pairs(seed, 200, 40);
  std::vector<json> all = pairs.train;
  all.insert(all.end(), pairs.test.begin(), pairs.test.end());
  const fs::path base = make_base_model(root, all, seed);
  write_jsonl(root / "train.jsonl", pairs.train);
  write_jsonl(root / "test.jsonl", pairs.test);
  for (const int64_t lora_r : {0, 4}) {
    SCOPED_TRACE(lora_r ? "LoRA" : "full");
    train::RewardConfig c;
    c.model = base.string();
    c.data = (root / "train.jsonl").string();
    c.val_data = (root / "test.jsonl").string();
    c.chat_template = "plain";
    c.max_length = 64;
    c.batch = 8;
    c.steps = 10;
    c.lr = 1e-3;
    c.lora_r = lora_r;
    c.checkpoint_every = 5;
    c.out = (root / ("cpu" + std::to_string(lora_r))).string();
    const train::RewardResult cpu = train::RewardTrainer(c, {.progress = false}).run();
    c.device = "cuda";
    c.out = (root / ("gpu" + std::to_string(lora_r))).string();
    const train::RewardResult gpu = train::RewardTrainer(c, {.progress = false}).run();
    ASSERT_TRUE(cpu.finished && gpu.finished);
    EXPECT_NEAR(gpu.train_loss, cpu.train_loss, 0.01 * cpu.train_loss);
    EXPECT_NEAR(gpu.val.loss, cpu.val.loss, 0.01 * cpu.val.loss);
    load_reward_model_dir(gpu.model_dir);

    c.device = "cpu";
    c.out = (root / ("mixed" + std::to_string(lora_r))).string();
    train::RewardTrainer(c, {.progress = false}).run(/*stop_after_step=*/5);
    c.device = "cuda";
    train::RewardTrainer resumed(c, {.progress = false});
    resumed.resume();
    EXPECT_NEAR(resumed.run().train_loss, cpu.train_loss, 0.01 * cpu.train_loss);
  }
}

TEST(RewardErrors, NonFiniteLossStopsAndKeepsTheCheckpoint) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("nan");
  RulePairs pairs = make_rule_pairs(seed, 64, 1);
  const fs::path base = make_base_model(root, pairs.train, seed);
  write_jsonl(root / "train.jsonl", pairs.train);
  train::RewardConfig c;
  c.model = base.string();
  c.data = (root / "train.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.max_length = 64;
  c.batch = 8;
  c.steps = 20;
  c.checkpoint_every = 1;
  c.lr = 1e30;
  c.clip = 0;
  try {
    train::RewardTrainer(c, {.progress = false}).run();
    FAIL() << "a run whose loss became non-finite did not stop";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stopped"), std::string::npos) << what;
    EXPECT_NE(what.find("last good checkpoint (step 1)"), std::string::npos) << what;
  }
  EXPECT_EQ(json::parse(slurp(root / "run" / "checkpoint" / "trainer_state.json"))["step"].get<int64_t>(), 1);
  EXPECT_FALSE(fs::exists(root / "run" / "model"));
}

TEST(RewardErrors, BadInputsAreNamed) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("errors");
  RulePairs pairs = make_rule_pairs(seed, 20, 1);
  const fs::path base = make_base_model(root, pairs.train, seed);
  {
    std::ofstream bad(root / "bad.jsonl");
    bad << R"({"prompt": "a", "chosen": "b", "rejected": "c"})" << "\n" << R"({"prompt": "a", "chosen": "b"})" << "\n";
  }
  train::RewardConfig c;
  c.model = base.string();
  c.data = (root / "bad.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.max_length = 64;
  try {
    train::RewardTrainer trainer(c, {.progress = false});
    FAIL() << "a pair without 'rejected' was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("bad.jsonl:2"), std::string::npos) << what;
    EXPECT_NE(what.find("rejected"), std::string::npos) << what;
  }
  write_jsonl(root / "train.jsonl", pairs.train);
  c.data = (root / "train.jsonl").string();
  c.max_length = 100000;
  EXPECT_THROW(train::RewardTrainer(c, {.progress = false}), Error);  // beyond the model's context
  // A causal LM is not a reward model for scoring.
  EXPECT_THROW(load_reward_model_dir(base.string()), Error);

#ifdef KOTOBA_CLI_PATH
  const std::string cli = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' ";
  auto cli_run = [&](const std::string& args, std::string& output) {
    const fs::path log = root / "cli.log";
    const int status = run(cli + args + " >'" + log.string() + "' 2>&1 </dev/null");
    output = slurp(log);
    return status;
  };
  std::string output;
  // Train a tiny reward model through the CLI, then score with it.
  ASSERT_EQ(cli_run("reward --model '" + base.string() + "' --data '" + (root / "train.jsonl").string() +
                        "' --out '" + (root / "cli_run").string() +
                        "' --chat-template plain --max-length 64 --steps 2 --batch 4 --quiet --json",
                    output),
            0)
      << output;
  const std::string rm = (root / "cli_run" / "model").string();
  ASSERT_EQ(cli_run("score --model '" + rm + "' --prompt 'Say red cat.' --response 'blue please'", output), 0)
      << output;
  EXPECT_TRUE(json::parse(output.substr(0, output.find('\n')))["score"].is_number()) << output;
  // --device: the GPU gives the CPU's score (f32 on both), or without one the reason, named.
  const double cpu_score = json::parse(output.substr(0, output.find('\n')))["score"].get<double>();
  const std::string on_cuda = "score --model '" + rm + "' --prompt 'Say red cat.' --response 'blue please' --device cuda";
  if (const std::string why = kotoba::testing::cuda_missing_reason(); why.empty()) {
    ASSERT_EQ(cli_run(on_cuda, output), 0) << output;
    EXPECT_NEAR(json::parse(output.substr(0, output.find('\n')))["score"].get<double>(), cpu_score,
                1e-4 * (1 + std::fabs(cpu_score)));
  } else {
    EXPECT_NE(cli_run(on_cuda, output), 0);
    EXPECT_NE(output.find("score: --device cuda: " + why), std::string::npos) << output;
  }
  EXPECT_NE(cli_run("score --model '" + rm + "' --prompt a --response b --device tpu", output), 0);
  EXPECT_NE(output.find("score: flag '--device': expected \"cpu\" or \"cuda\", got \"tpu\""), std::string::npos)
      << output;
  ASSERT_EQ(cli_run("score --model '" + rm + "' --data '" + (root / "train.jsonl").string() + "' --out '" +
                        (root / "scores.jsonl").string() + "'",
                    output),
            0)
      << output;
  EXPECT_NE(output.find("accuracy"), std::string::npos) << output;
  // A reward model trains on: the directory is read as one (its score head kept).
  ASSERT_EQ(cli_run("reward --model '" + rm + "' --data '" + (root / "train.jsonl").string() + "' --out '" +
                        (root / "cli_run2").string() + "' --steps 1 --batch 4 --quiet",
                    output),
            0)
      << output;
  EXPECT_TRUE(is_reward_model_dir((root / "cli_run2" / "model").string()));
  EXPECT_TRUE(json::parse(slurp(root / "scores.jsonl").substr(0, slurp(root / "scores.jsonl").find('\n')))
                  .contains("chosen_score"));
  // Bad inputs: named, non-zero exit, no output file.
  {
    std::ofstream bad(root / "bad_score.jsonl");
    bad << R"({"prompt": "a", "response": "b"})" << "\n" << R"({"prompt": "a", "response": 3})" << "\n";
  }
  EXPECT_NE(cli_run("score --model '" + rm + "' --data '" + (root / "bad_score.jsonl").string() + "' --out '" +
                        (root / "bad_out.jsonl").string() + "'",
                    output),
            0);
  EXPECT_NE(output.find("bad_score.jsonl:2"), std::string::npos) << output;
  EXPECT_NE(output.find("response"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(root / "bad_out.jsonl"));
  EXPECT_NE(cli_run("score --model '" + base.string() + "' --prompt a --response b", output), 0);
  EXPECT_NE(output.find("sequence classifier"), std::string::npos) << output;
  EXPECT_NE(cli_run("reward --model '" + base.string() + "' --data '" + (root / "bad.jsonl").string() + "' --out '" +
                        (root / "bad_run").string() + "'",
                    output),
            0);
  EXPECT_NE(output.find("bad.jsonl:2"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(root / "bad_run" / "model"));
#endif
}

}  // namespace
