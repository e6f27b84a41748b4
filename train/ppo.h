// RLHF with PPO, as TRL's PPOTrainer runs it: each update samples one reply per prompt from the
// policy (batched generation over a KV cache), scores it with a reward (a reward model, a rule or
// a checker program), computes per-token rewards (a KL penalty to the frozen reference on every
// token, the score at the end), advantages by GAE over the value head's estimates, and then
// trains the policy and value head on the clipped PPO losses for several epochs over minibatches
// (the arithmetic is train/ppo_math.h). The policy is trained fully or with LoRA (the reference
// is then the base, adapters off); the value head is a Linear(hidden, 1) on the policy's final
// hidden states (TRL's AutoModelForCausalLMWithValueHead, names v_head.summary.*). The KL
// coefficient is fixed or adaptive (Ziegler et al.). Logs mean score, KL, entropy, clip
// fractions, value loss (metrics.csv, reward.png, kl.png, loss.png); checkpoints resume exactly;
// a non-finite or exploding loss stops the run with a message and keeps the last good checkpoint.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "train/config_fields.h"
#include "train/reward_functions.h"

namespace kotoba::data {
struct PreferencePair;
}
namespace kotoba::nn {
class CausalLM;
class Linear;
}
namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::train {

// Every field is a `kotoba ppo` flag (underscores become dashes) and a key of its --config file.
// Defaults are TRL's PPOConfig's where it has the setting.
struct PpoConfig {
  // Inputs.
  std::string model = {};  // the policy to train (usually an SFT result)
  std::string data = {};   // prompts (any preference shape: only the prompts are used)
  std::string format = "auto";
  std::string val_data = {};
  double val_fraction = 0.0;
  std::string chat_template = "auto";
  std::string reward_model = {};  // a reward-model directory (kotoba reward)
  std::string reward = {};        // or a rule: ends-with:TEXT, contains:TEXT, regex:PATTERN
  std::string reward_cmd = {};    // or a checker command
  double missing_eos_penalty = 0;  // subtracted from the score of a reply that did not end (0: none)

  // Sampling.
  int64_t response_length = 53;
  double temperature = 0.7;
  int64_t top_k = 0;
  double top_p = 1.0;

  // The objective.
  double kl_coef = 0.05;
  std::string kl_estimator = "k1";  // k1 | k3
  double target_kl = 0;             // > 0: adaptive coefficient towards this KL per reply
  double kl_horizon = 10000;        // the adaptive controller's horizon (replies)
  double cliprange = 0.2;
  double cliprange_value = 0.2;
  double vf_coef = 0.1;
  double gamma = 1.0;
  double lam = 0.95;
  int64_t whiten_rewards = 0;

  // Batches: `batch` prompts are sampled per update, then num_ppo_epochs passes over them in
  // num_mini_batches minibatches (one optimizer step each), each in grad_accum micro-batches.
  int64_t batch = 16;
  int64_t num_ppo_epochs = 4;
  int64_t num_mini_batches = 1;
  int64_t grad_accum = 1;
  double epochs = 1;  // passes over the prompts (when steps is 0)
  int64_t steps = 0;  // updates (0: from epochs)

  // Optimisation.
  double lr = 0;  // 0: 3e-6 full (TRL's PPOConfig), 1e-4 with LoRA
  double min_lr = 0;
  int64_t warmup = 0;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double clip = 1.0;

  // LoRA.
  int64_t lora_r = 0;
  double lora_alpha = 16;
  std::string lora_targets = {};
  int64_t merge = 0;

  int64_t eval_every = 0;  // updates between validation passes (0: each epoch's end)
  int64_t checkpoint_every = 10;
  int64_t log_every = 1;
  int64_t seed = 42;
  int64_t threads = 0;
  std::string device = "cpu";  // where the policy (its reference and value head too) runs: "cpu" or "cuda"
  std::string out = "ppo-run";
};

std::span<const ConfigField<PpoConfig>> ppo_config_fields();
void validate_ppo_config(const PpoConfig& config);

// One update's figures (TRL's log names in brackets).
struct PpoUpdateMetrics {
  double score = 0;             // mean reward-model / rule score of the replies (objective/scores)
  double rlhf_reward = 0;       // score minus kl_coef * KL, per reply (objective/rlhf_reward)
  double kl = 0;                // mean over replies of the summed per-token KL (objective/kl)
  double entropy = 0;           // mean over replies of -sum log p of their tokens (objective/entropy)
  double pg_loss = 0, vf_loss = 0, pg_clipfrac = 0, vf_clipfrac = 0, approxkl = 0, ratio = 0;  // means over steps
  double kl_coef = 0;           // the coefficient used for this update
  double response_length = 0;   // mean tokens per reply
  double ended = 0;             // share of replies that ended (EOS or stop string)
};

struct PpoResult {
  int64_t update = 0, total_updates = 0;
  bool finished = false;
  PpoUpdateMetrics train;  // the last update's
  double val_reward = 0;   // mean reward of one sample per validation prompt (NaN: none)
  int64_t train_prompts = 0, val_prompts = 0;
  std::string model_dir, adapter_dir, value_head_path;
};

struct PpoOptions {
  bool progress = true;
  std::function<void(const std::string&)> log = {};
  RewardFunction reward = {};  // overrides the configured reward
};

class PpoTrainer {
 public:
  PpoTrainer(PpoConfig config, PpoOptions options = {});
  // Prompts given in memory (config.data unused).
  PpoTrainer(PpoConfig config, std::vector<data::PreferencePair> prompts, std::vector<data::PreferencePair> val,
             PpoOptions options = {});
  ~PpoTrainer();

  void resume();
  // Runs until the last update, or stop_after_update (> 0) for tests of resuming.
  PpoResult run(int64_t stop_after_update = 0);
  double validation_reward();
  void save_checkpoint();

  nn::CausalLM& model();
  nn::Linear& value_head();
  const tokenizer::Tokenizer& tokenizer() const;
  const chat::ChatTemplate& chat_template() const;
  const PpoConfig& config() const { return config_; }
  int64_t total_updates() const { return total_updates_; }
  std::string trainable_parameters_report() const;

  static PpoConfig read_checkpoint_config(const std::string& out_dir);
  static std::string checkpoint_dir(const std::string& out_dir);

  struct State;

 private:
  void setup(std::vector<data::PreferencePair> prompts, std::vector<data::PreferencePair> val);

  PpoConfig config_;
  PpoOptions options_;
  std::unique_ptr<State> state_;
  int64_t total_updates_ = 0;
};

}  // namespace kotoba::train
