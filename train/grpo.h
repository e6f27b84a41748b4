// Group-relative policy optimisation (GRPO, Shao et al. 2024) as TRL's GRPOTrainer defines it:
// per prompt, G completions are sampled from the policy (batched generation with KV caches), each
// is scored by a reward (a rule, a checker command, a trained reward model, or any RewardFunction),
// advantages are the rewards relative to their group ((r - mean) / (std + 1e-4)), and
// the policy follows the clipped per-token surrogate of PPO, without a value model, optionally
// held to a reference by a k3 KL estimate. Fully or with LoRA (the reference is then the base
// with the adapters off). The SFT loop's machinery otherwise: AdamW with warm-up and cosine decay,
// accumulation, clipping, checkpoints that resume exactly, loss.csv/loss.png and
// metrics.csv/reward.png, a stop with a message on a non-finite or exploding loss.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "core/tensor.h"
#include "train/config_fields.h"
#include "train/reward_functions.h"

namespace kotoba::data {
struct PreferencePair;
}
namespace kotoba::nn {
class CausalLM;
}
namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::train {

// ---- the loss ----

// TRL's loss_type values: grpo (each sequence's token mean, then the mean over sequences), bnpo
// (the mean over the batch's tokens), dr_grpo (the batch's token sum / (sequences *
// max_completion_length)), dapo (the sum over the optimizer step's tokens / their count; TRL's
// current default).
enum class GrpoLossType { grpo, bnpo, dr_grpo, dapo };
const char* grpo_loss_type_name(GrpoLossType type);
GrpoLossType parse_grpo_loss_type(const std::string& name);

// Advantages of rewards laid out in groups of `group` consecutive completions (one prompt each):
// r - mean(group), divided by std + 1e-4 (the unbiased standard deviation, as torch.std) of the
// group ("group", TRL's default) or of the whole batch ("batch"), or not ("none").
std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t group, const std::string& scale);

struct GrpoLossOptions {
  double epsilon_low = 0.2, epsilon_high = 0.2;  // the ratio is clipped to [1 - low, 1 + high]
  double beta = 0.0;                             // KL coefficient (TRL's default 0: no reference)
  GrpoLossType loss_type = GrpoLossType::dapo;
  int64_t max_completion_length = 256;  // dr_grpo's constant
  double normalizer = 0;                // dapo: scored tokens of the whole step (0: this batch's)
};

struct GrpoMetrics {
  double loss = 0;
  double kl = 0;          // mean k3 estimate per scored token (0 when beta is 0)
  double clip_ratio = 0;  // share of scored tokens whose ratio was clipped in the active direction
  int64_t tokens = 0;
};

struct GrpoLoss {
  Tensor loss;
  GrpoMetrics metrics;
};

// policy (B, T) f32: the policy's per-token log-probabilities (SequenceLogprobs::tokens) of the
// completions' tokens, where targets (B, T) != -100; old and ref (B * T) the same under the
// sampling-time policy and the reference (old empty: the policy's own values, detached, i.e.
// ratio 1 — num_iterations 1; ref empty when beta is 0); advantages (B). Per token:
//   ratio = exp(logp - old), loss_t = -min(ratio A, clip(ratio, 1 - low, 1 + high) A)
//            + beta (exp(ref - logp) - (ref - logp) - 1)
// aggregated per loss_type. Computed in float64; the gradient flows into `policy`.
GrpoLoss grpo_loss(const Tensor& policy, const Tensor& targets, const std::vector<float>& old,
                   const std::vector<float>& ref, const std::vector<double>& advantages, const GrpoLossOptions& options);

// ---- the trainer ----

struct GrpoConfig {
  // Inputs.
  std::string model = {};
  std::string data = {};        // prompts (data/preference_data.h, any shape: only the prompts are used)
  std::string format = "auto";
  std::string val_data = {};
  double val_fraction = 0.0;    // share of the prompts held out to measure the mean reward
  std::string chat_template = "auto";
  std::string reward = {};      // a rule: ends-with:TEXT, contains:TEXT, regex:PATTERN
  std::string reward_cmd = {};  // or a checker command (JSONL on stdin, one score a line on stdout)
  std::string reward_model = {};  // or a reward-model directory (train/reward_model_reward.h)

  // Sampling (TRL's GRPOConfig names and defaults).
  int64_t num_generations = 8;          // G completions per prompt
  int64_t max_completion_length = 256;  // tokens per completion
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;

  // The objective.
  double beta = 0.0;       // KL coefficient; 0: no reference model
  double epsilon = 0.2;    // clipping of the ratio below (and above unless epsilon_high)
  double epsilon_high = 0; // 0: epsilon
  std::string loss_type = "dapo";       // dapo | grpo | bnpo | dr_grpo
  std::string scale_rewards = "group";  // group | batch | none
  int64_t num_iterations = 1;           // optimizer steps per generated batch (mu)

  // Batches.
  int64_t batch = 4;  // prompts per micro-batch (batch * num_generations completions)
  int64_t grad_accum = 1;
  double epochs = 1;
  int64_t steps = 0;

  // Optimisation.
  double lr = 0;  // 0: 1e-6 full (TRL's GRPOConfig), 1e-5 with LoRA
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

  int64_t eval_every = 0;
  int64_t checkpoint_every = 100;
  int64_t log_every = 10;
  int64_t seed = 42;
  int64_t threads = 0;
  std::string device = "cpu";  // where the policy (and its reference) runs: "cpu" or "cuda"
  std::string out = "grpo-run";
};

std::span<const ConfigField<GrpoConfig>> grpo_config_fields();
void validate_grpo_config(const GrpoConfig& config);

struct GrpoStepMetrics {
  double loss = 0, reward = 0, reward_std = 0, kl = 0, clip_ratio = 0, completion_length = 0;
};

struct GrpoResult {
  int64_t step = 0, total_steps = 0;
  bool finished = false;
  GrpoStepMetrics train;       // the last step's
  double val_reward = 0;       // mean reward of one sample per validation prompt (NaN: none)
  int64_t train_prompts = 0, val_prompts = 0;
  std::string model_dir, adapter_dir;
};

struct GrpoOptions {
  bool progress = true;
  std::function<void(const std::string&)> log = {};
  RewardFunction reward = {};  // overrides config.reward / reward_cmd / reward_model
};

class GrpoTrainer {
 public:
  GrpoTrainer(GrpoConfig config, GrpoOptions options = {});
  // Prompts given in memory (config.data unused).
  GrpoTrainer(GrpoConfig config, std::vector<data::PreferencePair> prompts, std::vector<data::PreferencePair> val,
              GrpoOptions options = {});
  ~GrpoTrainer();

  void resume();
  GrpoResult run(int64_t stop_after_step = 0);
  double validation_reward();
  void save_checkpoint();

  nn::CausalLM& model();
  const tokenizer::Tokenizer& tokenizer() const;
  const chat::ChatTemplate& chat_template() const;
  const GrpoConfig& config() const { return config_; }
  int64_t total_steps() const { return total_steps_; }
  std::string trainable_parameters_report() const;

  static GrpoConfig read_checkpoint_config(const std::string& out_dir);
  static std::string checkpoint_dir(const std::string& out_dir);

  struct State;

 private:
  void setup(std::vector<data::PreferencePair> prompts, std::vector<data::PreferencePair> val);

  GrpoConfig config_;
  GrpoOptions options_;
  std::unique_ptr<State> state_;
  int64_t total_steps_ = 0;
};

}  // namespace kotoba::train
