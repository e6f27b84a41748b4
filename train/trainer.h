// The pretraining loop as a library: GPT-2 or LLaMA (next-token objective) or BERT (masked-LM
// objective, train/mlm.h) on token shards from `kotoba prepare`, AdamW with
// linear warm-up and cosine decay, gradient accumulation and clipping, periodic validation,
// atomic checkpoints that resume bit-identically, loss.csv/loss.png and a final model directory.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/token_dataset.h"
#include "nn/bert.h"
#include "nn/causal_lm.h"
#include "train/mlm.h"
#include "train/config_fields.h"
#include "train/loss_log.h"
#include "train/optim.h"

namespace kotoba::train {

// Every field is also a `kotoba pretrain` flag (underscores become dashes: --grad-accum) and a
// key of the --config JSON file; pretrain_config_fields() is the one list both are made from.
struct PretrainConfig {
  // Model. vocab_size comes from the tokenizer.
  std::string objective = "clm";  // "clm" (next token: gpt2, llama) or "mlm" (masked tokens: bert)
  std::string arch = "gpt2";  // "gpt2", "llama" (RMSNorm, RoPE, SwiGLU, grouped-query attention) or "bert"
  int64_t n_layer = 6;
  int64_t n_head = 6;
  int64_t n_embd = 384;
  int64_t n_positions = 0;  // longest sequence the model accepts; 0: equal to seq
  int64_t n_kv_head = 0;    // llama: key/value heads (0: = n_head)
  int64_t n_inner = 0;      // llama: MLP width (0: 8/3 n_embd rounded up to a multiple of 64); bert: (0: 4 n_embd); gpt2: 4 n_embd
  double rope_theta = 10000.0;  // llama
  double dropout = 0.0;     // gpt2, bert: on embeddings and residual branches

  // Batches: each optimizer step sees grad_accum micro-batches of batch windows of seq tokens.
  int64_t seq = 256;
  int64_t batch = 16;
  int64_t grad_accum = 1;

  // Optimisation.
  int64_t steps = 2000;        // optimizer steps in the whole run
  double lr = 6e-4;            // peak learning rate, reached after warmup steps
  double min_lr = 6e-5;        // the cosine decays to this at the last step
  int64_t warmup = 100;        // linear warm-up steps from lr/warmup to lr
  double weight_decay = 0.1;   // decoupled, on matrices only
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double clip = 1.0;           // global gradient-norm clipping; 0: off

  // Evaluation, checkpoints, logging.
  int64_t eval_every = 200;        // steps between validation passes; 0: only at the end
  int64_t eval_batches = 20;       // validation batches per pass (the same ones every time)
  int64_t checkpoint_every = 200;  // steps between checkpoints; 0: none (the final model is still written)
  int64_t log_every = 10;          // steps between loss.csv rows
  int64_t seed = 1337;             // initialisation, dropout and data sampling
  int64_t threads = 0;             // CPU threads; 0: all cores
  std::string device = "cpu";      // where the model trains: "cpu" or "cuda" (a run may resume on the other)
  std::string precision = "f32";   // "bf16": matrix products in bf16 (AutocastScope), f32 master weights

  // Files.
  std::string data = {};       // directory written by `kotoba prepare`
  std::string tokenizer = {};  // tokenizer.json the shards were made with (copied into OUT/model)
  std::string out = "pretrain-run";
};

// The field table: name, member, a one-line help, and whether a resumed run must keep it.
using PretrainConfigField = ConfigField<PretrainConfig>;
std::span<const PretrainConfigField> pretrain_config_fields();

inline nlohmann::json pretrain_config_to_json(const PretrainConfig& config) {
  return config_to_json(config, pretrain_config_fields());
}
// Applies the keys of `json` onto `config`: an unknown key is an error naming `source` and the
// key; a mistyped value names the key and the expected type.
inline void apply_pretrain_config_json(PretrainConfig& config, const nlohmann::json& json, const std::string& source) {
  apply_config_json(config, json, source, pretrain_config_fields());
}
// Reads a JSON config file onto `config` (same errors, naming the file).
inline void apply_pretrain_config_file(PretrainConfig& config, const std::string& path) {
  apply_config_file(config, path, pretrain_config_fields());
}
// Range checks (positive sizes, n_embd % n_head, lr >= min_lr, ...); errors name the field.
void validate_pretrain_config(const PretrainConfig& config);

// The learning rate at optimizer step `step` (1-based): linear warm-up to lr over `warmup`
// steps, then a cosine from lr down to min_lr at step `steps`.
double learning_rate_at(const PretrainConfig& config, int64_t step);

struct PretrainResult {
  int64_t step = 0;             // optimizer steps done
  bool finished = false;        // reached config.steps (the final model directory is written)
  double train_loss = 0;        // mean loss of the last step's micro-batches
  double val_loss = 0;          // last validation loss (NaN when there is no validation split)
  double val_perplexity = 0;
  int64_t tokens = 0;           // training tokens seen (all steps, resumed ones included)
  std::string model_dir;        // OUT/model when finished
};

struct PretrainerOptions {
  bool progress = true;                         // the progress bar on stderr
  std::function<void(const std::string&)> log = {};  // one line per validation pass and event; may be empty
};

class Pretrainer {
 public:
  // Opens the data (train and val splits), checks the tokenizer against it, builds the model.
  Pretrainer(PretrainConfig config, PretrainerOptions options = {});
  ~Pretrainer();

  // Loads OUT/checkpoint: weights, AdamW moments and step, dropout and sampler states, the step.
  // Fields marked affects_trajectory must match the checkpoint's config; errors name the file.
  void resume();
  // Trains until config.steps (then writes OUT/model) or, when stop_after_step > 0, until that
  // step (then writes a checkpoint and returns with finished = false).
  PretrainResult run(int64_t stop_after_step = 0);
  // Mean loss over the eval_batches validation batches (the same windows every call).
  double validation_loss();
  void save_checkpoint();

  // The causal model (objective clm; throws for mlm) or the BERT (objective mlm; throws for clm).
  nn::CausalLM& model();
  nn::BertForMaskedLM& bert();
  // Whichever model is trained.
  nn::Module& module();
  int64_t model_vocab_size() const;
  int64_t model_max_positions() const;
  const PretrainConfig& config() const { return config_; }
  int64_t step() const { return step_; }

  // The checkpoint directory of an output directory, and the config stored in it.
  static std::string checkpoint_dir(const std::string& out_dir);
  static PretrainConfig read_checkpoint_config(const std::string& out_dir);

 private:
  void write_loss_files();
  Generator& dropout_generator();
  // The objective's loss on a window batch x (next tokens y): next-token loss, or for mlm the
  // masked-token loss with masking keyed by (seed, batch_index).
  Tensor batch_loss(const Tensor& x, const Tensor& y, uint64_t mask_seed, uint64_t batch_index);
  PretrainConfig config_;
  PretrainerOptions options_;
  int64_t tokenizer_vocab_ = 0;
  std::unique_ptr<nn::CausalLM> model_;
  std::unique_ptr<nn::BertForMaskedLM> bert_;
  MlmOptions mlm_;
  Tensor mlm_inputs_, mlm_labels_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<data::WindowSampler> train_sampler_;
  std::optional<data::TokenDataset> val_data_;
  int64_t step_ = 0;
  int64_t tokens_ = 0;
  int64_t last_checkpoint_step_ = 0;
  bool resumed_ = false;
  double last_train_loss_ = std::nan("");
  double last_val_loss_ = std::nan("");
  std::vector<LossRow> rows_;
};

}  // namespace kotoba::train
