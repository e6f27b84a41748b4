// Reward-model training as a library: a causal-LM directory (an SFT result, say) or a reward-model
// directory, trained on preference pairs (data/preference_data.h) rendered through a chat template,
// with the pairwise loss -log sigmoid(r_chosen - r_rejected) (optionally TRL's reward-centring
// term), fully or with LoRA on the backbone (the score head trained in full, saved as PEFT's
// SEQ_CLS adapter); AdamW with warm-up and cosine decay, accumulation, clipping, a validation split scored
// by held-out accuracy (pairs with r_chosen > r_rejected) and mean margin, atomic checkpoints that
// resume exactly, loss.csv/loss.png, a stop on a non-finite or exploding loss, and the result as
// a reward-model directory transformers' AutoModelForSequenceClassification opens.
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

namespace kotoba::nn {
class RewardModel;
}
namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::train {

// Every field is a `kotoba reward` flag (underscores become dashes) and a key of its --config
// file. Defaults follow TRL's RewardConfig (and the transformers TrainingArguments it extends)
// where those have one.
struct RewardConfig {
  // Inputs.
  std::string model = {};       // a causal-LM directory (score head added) or a reward-model directory
  std::string data = {};        // preference data: pairs, choice or ranked shape (data/preference_data.h)
  std::string format = "auto";  // data shape; auto: from the first record's keys
  std::string val_data = {};    // validation pairs; empty: val_fraction of data is held out
  double val_fraction = 0.05;
  std::string chat_template = "auto";  // chatml | llama2 | alpaca | plain; auto: the model's, else alpaca

  // Batches.
  int64_t max_length = 0;     // tokens per sequence (prompt + reply), longer ones cut and counted; 0: 1024 (TRL's), or the model's context if shorter
  int64_t batch = 8;          // pairs per micro-batch (their chosen and rejected rows run as one batch)
  int64_t grad_accum = 1;
  double epochs = 3;
  int64_t steps = 0;          // optimizer steps; 0: from epochs

  // Optimisation.
  double lr = 1e-5;
  double min_lr = 0;
  int64_t warmup = 0;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double clip = 1.0;
  double center_rewards_coefficient = 0;  // > 0: adds c * mean((r_chosen + r_rejected)^2) (TRL)
  int64_t disable_dropout = 1;            // 1: train without dropout (TRL's default)

  // LoRA (lora_r 0: full fine-tuning). The backbone is frozen and adapted, the score head trained
  // in full (PEFT's task_type SEQ_CLS, the head among its modules_to_save).
  int64_t lora_r = 0;
  double lora_alpha = 16;
  double lora_dropout = 0.05;
  std::string lora_targets = {};  // as `kotoba sft`'s; empty: PEFT's default for the architecture

  // Evaluation, checkpoints, logging.
  int64_t eval_every = 0;          // steps between validation passes; 0: each epoch's end and the run's
  int64_t checkpoint_every = 100;  // 0: none
  int64_t log_every = 10;
  int64_t seed = 42;               // pair order, held-out split, score-head initialisation
  int64_t threads = 0;             // CPU threads; 0: all cores
  std::string device = "cpu";      // where the model trains: "cpu" or "cuda" (a run may resume on the other)

  std::string out = "reward-run";
};

std::span<const ConfigField<RewardConfig>> reward_config_fields();
void validate_reward_config(const RewardConfig& config);

// The pairwise loss of P pairs from the rewards of a batch laid out as [P chosen rows, P rejected
// rows]: mean_p -log sigmoid(r_c - r_r - margin_p) (+ centre * mean_p (r_c + r_r)^2), and its
// gradient with respect to each of the 2P rewards, in double.
struct PairwiseLoss {
  double loss = 0;
  std::vector<double> grad;   // d loss / d reward, (2P)
  int64_t correct = 0;        // pairs with r_c > r_r
  double margin_sum = 0;      // sum of r_c - r_r
};
PairwiseLoss pairwise_reward_loss(std::span<const float> rewards, double center_rewards_coefficient = 0,
                                  std::span<const double> margins = {});

// The rows of P pairs, [P chosen, P rejected] (prompt + reply as the chat template renders them),
// right-padded with pad_id. lengths[b] is where the reward is read (+ 1): the last token of the row
// that is not pad_id, as transformers' sequence classifiers find it.
struct RewardBatch {
  Tensor ids;                    // (2P, T) i32
  std::vector<int64_t> lengths;  // (2P)
  int64_t pairs = 0;
};
RewardBatch make_reward_batch(std::span<const std::vector<int32_t>* const> chosen,
                              std::span<const std::vector<int32_t>* const> rejected, int32_t pad_id);

double reward_learning_rate(const RewardConfig& config, int64_t step, int64_t total_steps);

struct RewardEval {
  double loss = 0, accuracy = 0, mean_margin = 0;
  int64_t pairs = 0;
};

struct RewardResult {
  int64_t step = 0, total_steps = 0;
  bool finished = false;
  double train_loss = 0;
  RewardEval val;
  int64_t train_pairs = 0, val_pairs = 0, truncated_sequences = 0, dropped_pairs = 0;
  std::string model_dir;    // OUT/model (with LoRA: the adapter merged in)
  std::string adapter_dir;  // OUT/adapter (LoRA: PEFT's SEQ_CLS adapter, score head included)
};

struct RewardOptions {
  bool progress = true;
  std::function<void(const std::string&)> log = {};
};

class RewardTrainer {
 public:
  // Loads the model (a causal LM gets a fresh score head) and the tokenizer, reads, splits and
  // tokenises the pairs.
  RewardTrainer(RewardConfig config, RewardOptions options = {});
  ~RewardTrainer();

  void resume();  // from OUT/checkpoint; trajectory fields must match
  RewardResult run(int64_t stop_after_step = 0);
  RewardEval evaluate();  // on the validation pairs
  void save_checkpoint();

  nn::RewardModel& model();
  const tokenizer::Tokenizer& tokenizer() const;
  const chat::ChatTemplate& chat_template() const;
  const RewardConfig& config() const { return config_; }
  int64_t total_steps() const { return total_steps_; }

  static RewardConfig read_checkpoint_config(const std::string& out_dir);
  static std::string checkpoint_dir(const std::string& out_dir);

 private:
  struct State;
  RewardBatch next_train_batch();

  RewardConfig config_;
  RewardOptions options_;
  std::unique_ptr<State> state_;
  int64_t total_steps_ = 0;
};

}  // namespace kotoba::train
