// Direct preference optimisation (DPO, Rafailov et al. 2023) as TRL's DPOTrainer defines it: a
// policy learns from pairs (prompt, chosen reply, rejected reply) to raise the chosen reply's
// log-probability relative to a frozen reference model more than the rejected one's. Fully or
// with LoRA adapters (the reference is then the base with the adapters off, as PEFT/TRL do);
// reference log-probabilities precomputed once before training (the default) or computed on the
// fly; the SFT loop's machinery otherwise (train/sft.h): AdamW with warm-up and cosine decay,
// accumulation, clipping, validation, checkpoints that resume exactly, loss.csv/loss.png (and
// metrics.csv/rewards.png with TRL's rewards/* metrics), the result as a model directory or a
// PEFT adapter.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "train/config_fields.h"

namespace kotoba::data {
struct PreferencePair;
}
namespace kotoba::nn {
class CausalLM;
}
namespace kotoba::tokenizer {
class Tokenizer;
}
namespace kotoba::chat {
class ChatTemplate;
}

namespace kotoba::train {

struct SftBatch;

// ---- the loss ----

// TRL's loss_type values implemented: sigmoid (the DPO paper's, with label smoothing = "robust"
// conservative DPO), ipo (Azar et al.; log-probabilities averaged per token, as TRL does) and
// hinge (SLiC).
enum class DpoLossType { sigmoid, ipo, hinge };
const char* dpo_loss_type_name(DpoLossType type);
DpoLossType parse_dpo_loss_type(const std::string& name);  // an Error lists the names

struct DpoLossOptions {
  double beta = 0.1;             // TRL's default
  DpoLossType loss_type = DpoLossType::sigmoid;
  double label_smoothing = 0.0;  // sigmoid only: the assumed share of flipped labels, in [0, 0.5)
  // TRL's rpo_alpha (RPO, Pang et al. 2024): adds alpha times the chosen replies' negative
  // log-likelihood per token, which keeps DPO from lowering the chosen replies along with the
  // rejected ones. 0: off (TRL's None).
  double rpo_alpha = 0.0;
};

// TRL's metrics of a batch: rewards = beta * (log pi - log pi_ref) per reply.
struct DpoMetrics {
  double loss = 0;
  double nll = 0;                                   // the chosen replies' negative log-likelihood per token
  double rewards_chosen = 0, rewards_rejected = 0;  // means
  double accuracy = 0;                              // share of pairs whose chosen reward is higher
  double margin = 0;                                // mean of chosen - rejected reward
  int64_t pairs = 0;
};

struct DpoLoss {
  Tensor loss;  // scalar, the mean over the pairs; differentiable in the policy's log-probabilities
  DpoMetrics metrics;
};

// policy (2P) f32: the log-probabilities of P chosen replies, then of their P rejected ones;
// reference (2P) the same under the reference model; counts (2P): each reply's token count (IPO
// averages per token). With h = (pi_c - pi_r) - (ref_c - ref_r):
//   sigmoid  -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)
//   ipo      (h - 1 / (2 beta))^2
//   hinge    max(0, 1 - beta h)
// averaged over the pairs, plus rpo_alpha * (-sum(pi_c) / sum(chosen tokens)).
// The loss is computed in float64; its gradient flows into `policy`.
DpoLoss dpo_loss(const Tensor& policy, const std::vector<double>& reference, const std::vector<int64_t>& counts,
                 const DpoLossOptions& options);

// ---- the trainer ----

// Every field is a `kotoba dpo` flag (underscores become dashes) and a key of its --config file.
struct DpoConfig {
  // Inputs.
  std::string model = {};       // model directory to start from (usually an SFT result)
  std::string data = {};        // preference pairs (data/preference_data.h: pairs, choice or ranked)
  std::string format = "auto";  // data shape; auto: from the first record
  std::string val_data = {};    // validation pairs; empty: val_fraction of data is held out
  double val_fraction = 0.05;
  std::string chat_template = "auto";  // chatml | llama2 | alpaca | plain; auto: the model's, else alpaca

  // The objective (TRL's DPOConfig names and defaults).
  double beta = 0.1;
  std::string loss_type = "sigmoid";  // sigmoid | ipo | hinge
  double label_smoothing = 0.0;
  double rpo_alpha = 0.0;      // weight of the chosen replies' NLL (TRL's rpo_alpha; 0: off)
  int64_t precompute_ref = 1;  // 1: reference log-probabilities once before training; 0: each batch

  // Batches.
  int64_t max_length = 512;  // tokens of prompt + reply; longer ones are cut (a pair left without reply tokens is dropped)
  int64_t batch = 8;         // pairs per micro-batch
  int64_t grad_accum = 1;
  double epochs = 3;         // passes over the pairs (when steps is 0; TRL's default 3)
  int64_t steps = 0;

  // Optimisation.
  double lr = 0;  // peak learning rate; 0: 1e-6 (TRL's DPOConfig) for full training, 1e-5 with LoRA
  double min_lr = 0;
  int64_t warmup = 0;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double clip = 1.0;

  // LoRA (lora_r 0: full training).
  int64_t lora_r = 0;
  double lora_alpha = 16;
  std::string lora_targets = {};
  int64_t merge = 0;

  // Evaluation, checkpoints, logging.
  int64_t eval_every = 0;
  int64_t checkpoint_every = 100;
  int64_t log_every = 10;
  int64_t seed = 42;
  int64_t threads = 0;
  std::string device = "cpu";  // where the policy (and a reference copy) run: "cpu" or "cuda"
  std::string precision = "f32";  // "bf16": matrix products in bf16 (AutocastScope), f32 master weights

  std::string out = "dpo-run";
};

std::span<const ConfigField<DpoConfig>> dpo_config_fields();
void validate_dpo_config(const DpoConfig& config);

struct DpoResult {
  int64_t step = 0, total_steps = 0;
  bool finished = false;
  DpoMetrics train;  // the last step's
  DpoMetrics val;    // the last validation pass (pairs 0: none)
  int64_t train_pairs = 0, val_pairs = 0, dropped_pairs = 0, truncated_pairs = 0;
  std::string model_dir, adapter_dir;
};

struct DpoOptions {
  bool progress = true;
  std::function<void(const std::string&)> log = {};
};

class DpoTrainer {
 public:
  // Reads the pairs from config.data (and val_data) and sets everything up, the reference
  // log-probabilities included when precompute_ref.
  DpoTrainer(DpoConfig config, DpoOptions options = {});
  // The same with pairs given in memory (config.data and val_data unused; an empty `val` with
  // val_fraction > 0 holds out a share of `train`).
  DpoTrainer(DpoConfig config, std::vector<data::PreferencePair> train, std::vector<data::PreferencePair> val,
             DpoOptions options = {});
  ~DpoTrainer();

  void resume();  // from OUT/checkpoint; trajectory fields must match
  DpoResult run(int64_t stop_after_step = 0);
  DpoMetrics validate();  // over every validation pair
  void save_checkpoint();

  nn::CausalLM& model();
  const tokenizer::Tokenizer& tokenizer() const;
  const chat::ChatTemplate& chat_template() const;
  const DpoConfig& config() const { return config_; }
  int64_t total_steps() const { return total_steps_; }
  std::string trainable_parameters_report() const;

  static DpoConfig read_checkpoint_config(const std::string& out_dir);
  static std::string checkpoint_dir(const std::string& out_dir);

 private:
  struct State;
  void setup(std::vector<data::PreferencePair> train, std::vector<data::PreferencePair> val);
  std::vector<size_t> next_train_pairs();
  std::vector<double> reference_logps(const SftBatch& batch, std::span<const size_t> picked, bool val);

  DpoConfig config_;
  DpoOptions options_;
  std::unique_ptr<State> state_;
  int64_t total_steps_ = 0;
};

}  // namespace kotoba::train
