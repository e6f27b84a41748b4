// Supervised fine-tuning as a library: a model directory (GPT-2 or LLaMA family) trained on an
// instruction dataset of any shape (data/instruct_data.h), rendered through a chat template with
// the loss on the assistant's tokens only; fully or with LoRA adapters (nn/lora.h); padded or
// packed batches; AdamW with warm-up and cosine decay, accumulation, clipping, validation,
// atomic checkpoints that resume exactly, loss.csv/loss.png, and the result as a model directory
// (full) or a PEFT adapter (LoRA).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "io/model_dir.h"
#include "train/config_fields.h"
#include "train/optim.h"

namespace kotoba::data {
struct PackingExample;
struct SftExample;
struct SftTokens;
}
namespace kotoba::tokenizer {
class Tokenizer;
}
namespace kotoba::nn {
struct LoraConfig;
}

namespace kotoba::train {

// Every field is a `kotoba sft` flag (underscores become dashes) and a key of its --config file.
struct SftConfig {
  // Inputs.
  std::string model = {};          // model directory to start from (config.json + safetensors + tokenizer)
  std::string data = {};           // training examples: Alpaca JSON/JSONL, chat JSONL, QA, summarisation, text
  std::string format = "auto";     // data shape (see data/instruct_data.h); auto: from the file
  std::string val_data = {};       // validation examples; empty: val_fraction of data is held out
  double val_fraction = 0.05;      // share of data held out for validation when val_data is empty
  std::string chat_template = "auto";  // chatml | llama2 | alpaca | plain; auto: the model's tokenizer_config, else alpaca

  // Batches.
  int64_t max_length = 512;  // tokens per example (longer ones are cut, and counted) or per packed row
  int64_t pack = 0;          // 1: pack several examples per row (no attention across them)
  int64_t batch = 8;         // examples (or packed rows) per micro-batch
  int64_t grad_accum = 1;    // micro-batches per optimizer step
  double epochs = 3;         // passes over the training examples (when steps is 0)
  int64_t steps = 0;         // optimizer steps; 0: from epochs

  // Optimisation.
  double lr = 0;             // peak learning rate; 0: 2e-5 for full fine-tuning, 2e-4 with LoRA
  double min_lr = 0;         // reached at the last step (cosine)
  int64_t warmup = 0;        // linear warm-up steps
  double weight_decay = 0.0; // decoupled, on matrices only
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double clip = 1.0;         // global gradient-norm clipping; 0: off

  // LoRA (lora_r 0: full fine-tuning).
  int64_t lora_r = 0;
  double lora_alpha = 16;
  double lora_dropout = 0.05;
  std::string lora_targets = {};  // module names ("c_attn", "q_proj,v_proj"), a regex, or all-linear; empty: PEFT's default for the architecture
  int64_t merge = 0;              // LoRA: also write OUT/model with the adapter merged into the base
  std::string quantize = {};      // QLoRA: hold the frozen base as nf4 (or int8, q8_0, q4_0) under the adapters

  // Evaluation, checkpoints, logging.
  int64_t eval_every = 0;          // steps between validation passes; 0: at the end of each epoch and of the run
  int64_t checkpoint_every = 100;  // steps between checkpoints; 0: none
  int64_t log_every = 10;          // steps between loss.csv rows
  int64_t seed = 42;               // example order, held-out split, LoRA initialisation, dropout
  int64_t threads = 0;             // CPU threads; 0: all cores
  std::string device = "cpu";      // where the model trains: "cpu" or "cuda" (a run may resume on the other)
  std::string precision = "f32";   // "bf16": matrix products in bf16 (AutocastScope), f32 master weights

  std::string out = "sft-run";
};

std::span<const ConfigField<SftConfig>> sft_config_fields();
// Range and consistency checks; errors name the field.
void validate_sft_config(const SftConfig& config);

// A micro-batch ready for CausalLM::loss: ids and next-token targets (B, T) i32 (targets[t] is the
// label of token t + 1, -100 where masked or padded), and for packed rows positions and segments.
struct SftBatch {
  Tensor ids, targets, positions, segments;  // positions/segments undefined unless packed
  int64_t target_tokens = 0;                 // targets != -100
};

// The micro-batch of `examples` right-padded with `pad_id` to the longest (no attention mask is
// needed: under causal attention no real token sees a later pad, and pads predict nothing).
SftBatch make_sft_batch(std::span<const data::PackingExample* const> examples, int32_t pad_id);

// The tokenizer_config.json of a fine-tuned directory: base_dir's (if it has one) with the chat
// template it was tuned with (and bos/eos/pad tokens, model_max_length where absent).
nlohmann::json finetuned_tokenizer_config(const tokenizer::Tokenizer& tokenizer, const chat::ChatTemplate& chat_template,
                                          int64_t max_positions, const std::string& base_dir = "");

// Writes a fine-tuned model directory atomically: save_model_dir's files and a
// tokenizer_config.json (base_dir's, if it has one) naming the chat template it was tuned with (bos/eos/pad tokens and
// chat_template), so `kotoba chat` and transformers' apply_chat_template render what it learnt.
void save_finetuned_model_dir(const std::string& dir, const nn::CausalLM& model, const tokenizer::Tokenizer& tokenizer,
                              const GenerationConfig& generation, const chat::ChatTemplate& chat_template,
                              const std::string& base_dir = "");

// What a finished fine-tuning run writes under `out`: with LoRA (`lora` set) the adapter in PEFT's
// layout as OUT/adapter; without LoRA, or with `merge`, the model (the adapter merged in and
// unloaded) as OUT/model through save_finetuned_model_dir. Returns the directories written (empty
// when not), each announced through `log` when it is set. A model trained on a GPU is moved back
// to the host first. Shared by sft, dpo, grpo and ppo.
struct FinetunedOutputs {
  std::string adapter_dir, model_dir;
};
FinetunedOutputs save_finetuned_outputs(const std::string& out, nn::CausalLM& model,
                                        const std::optional<nn::LoraConfig>& lora, bool merge,
                                        const tokenizer::Tokenizer& tokenizer, const GenerationConfig& generation,
                                        const chat::ChatTemplate& chat_template, const std::string& base_dir,
                                        const std::function<void(const std::string&)>& log);

// The chat template `name` (chatml, llama2, alpaca, plain, or auto: the model directory's
// tokenizer_config.json template, else alpaca) for the model directory `dir`, with the tokenizer's
// (or generation_config.json's) BOS/EOS. Shared by the fine-tuning commands (sft, reward, dpo, grpo).
chat::ChatTemplate resolve_chat_template(const std::string& name, const std::string& dir,
                                         const tokenizer::Tokenizer& tokenizer, const GenerationConfig& generation);
// The LoRA config of the --lora-* settings: targets as names ("q_proj,v_proj"), a regex or
// all-linear; empty: PEFT's default for `model_type`. `command` names the caller in errors.
nn::LoraConfig lora_config_from_settings(int64_t r, double alpha, double dropout, const std::string& targets,
                                         const std::string& model_type, const char* command);

// An example tokenised for training (data::tokenize_sft_example, at most max_length tokens) —
// with the Alpaca and plain templates, whose replies end in a newline, the tokenizer's EOS added
// after the last reply as one more target so that the tuned model learns to stop.
data::SftTokens tokenize_for_training(const data::SftExample& example, const chat::ChatTemplate& chat_template,
                                      const tokenizer::Tokenizer& tokenizer, int64_t max_length);

// The learning rate at optimizer step `step` (1-based): linear warm-up, then cosine to min_lr.
double sft_learning_rate(const SftConfig& config, double lr, int64_t step, int64_t total_steps);

struct SftResult {
  int64_t step = 0, total_steps = 0;
  bool finished = false;
  double train_loss = 0, val_loss = 0;
  int64_t train_examples = 0, val_examples = 0, truncated_examples = 0;
  std::string model_dir;    // OUT/model (full fine-tuning, or LoRA with merge)
  std::string adapter_dir;  // OUT/adapter (LoRA)
};

struct SftOptions {
  bool progress = true;
  std::function<void(const std::string&)> log = {};
};

class SftTrainer {
 public:
  // Loads the model and the tokenizer, reads and tokenises the data, splits off validation,
  // applies LoRA when lora_r > 0.
  SftTrainer(SftConfig config, SftOptions options = {});
  ~SftTrainer();

  void resume();  // from OUT/checkpoint; trajectory fields must match
  SftResult run(int64_t stop_after_step = 0);
  double validation_loss();  // token-weighted mean over every validation target
  void save_checkpoint();

  nn::CausalLM& model();
  const tokenizer::Tokenizer& tokenizer() const;
  const chat::ChatTemplate& chat_template() const;
  const SftConfig& config() const { return config_; }
  int64_t total_steps() const { return total_steps_; }
  // "trainable params: N || all params: M || trainable%: P", as PEFT prints it.
  std::string trainable_parameters_report() const;

  static SftConfig read_checkpoint_config(const std::string& out_dir);
  static std::string checkpoint_dir(const std::string& out_dir);

 private:
  struct State;
  void begin_epoch(int64_t epoch);  // its example order, and its packed rows when packing
  SftBatch next_train_batch();
  void write_loss_files();

  SftConfig config_;
  SftOptions options_;
  std::unique_ptr<State> state_;
  int64_t total_steps_ = 0;
};

}  // namespace kotoba::train
