// The SFT loop (train/sft.h). Determinism: the example order of epoch e is a permutation drawn
// from (seed, e), packing is a pure function of that order, LoRA initialisation comes from the
// seed and dropout is counter-based; so (epoch, position in the epoch), the optimizer moments and
// the trainable weights are the whole state a resumed run needs.
#include "train/sft.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include <unistd.h>

#include "core/atomic_file.h"
#include "core/progress.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/packing.h"
#include "io/peft.h"
#include "io/quantized_model.h"
#include "nn/lora.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"
#include "train/checkpoint.h"
#include "train/loss_log.h"

namespace kotoba::train {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config ----

std::span<const ConfigField<SftConfig>> sft_config_fields() {
  using C = SftConfig;
  static const ConfigField<C> fields[] = {
      {"model", &C::model, "model directory to fine-tune (config.json, safetensors, tokenizer)", true},
      {"data", &C::data, "training examples (Alpaca JSON/JSONL, chat JSONL, QA, summarization, .txt)", true},
      {"format", &C::format, "data shape: auto, alpaca, chat, qa, summarization or text", true},
      {"val_data", &C::val_data, "validation examples (empty: hold out val_fraction of data)", true},
      {"val_fraction", &C::val_fraction, "share of data held out for validation when val_data is empty", true},
      {"chat_template", &C::chat_template, "chatml, llama2, alpaca or plain; auto: the model's, else alpaca", true},
      {"max_length", &C::max_length, "tokens per example (longer ones are cut) or per packed row", true},
      {"pack", &C::pack, "1: pack several examples per row, without attention across them", true},
      {"batch", &C::batch, "examples (or packed rows) per micro-batch", true},
      {"grad_accum", &C::grad_accum, "micro-batches per optimizer step", true},
      {"epochs", &C::epochs, "passes over the training examples (when steps is 0)", false},
      {"steps", &C::steps, "optimizer steps (0: from epochs)", false},
      {"lr", &C::lr, "peak learning rate (0: 2e-5 full, 2e-4 LoRA)", true},
      {"min_lr", &C::min_lr, "learning rate at the last step (cosine decay)", true},
      {"warmup", &C::warmup, "linear warm-up steps", true},
      {"weight_decay", &C::weight_decay, "AdamW decoupled weight decay (matrices only)", true},
      {"beta1", &C::beta1, "AdamW beta1", true},
      {"beta2", &C::beta2, "AdamW beta2", true},
      {"eps", &C::eps, "AdamW epsilon", true},
      {"clip", &C::clip, "global gradient-norm clipping (0: off)", true},
      {"lora_r", &C::lora_r, "LoRA rank (0: full fine-tuning)", true},
      {"lora_alpha", &C::lora_alpha, "LoRA alpha (scaling alpha / r)", true},
      {"lora_dropout", &C::lora_dropout, "dropout on the adapters' input", true},
      {"lora_targets", &C::lora_targets,
       "layers to adapt: names (c_attn or q_proj,v_proj), a regex, or all-linear (empty: PEFT's default)", true},
      {"merge", &C::merge, "LoRA: also write OUT/model with the adapter merged in", false},
      {"quantize", &C::quantize, "QLoRA: hold the frozen base quantised (nf4, int8, q8_0 or q4_0; empty: as loaded)",
       true},
      {"eval_every", &C::eval_every, "steps between validation passes (0: each epoch's end)", false},
      {"checkpoint_every", &C::checkpoint_every, "steps between checkpoints (0: none)", false},
      {"log_every", &C::log_every, "steps between loss.csv rows", false},
      {"seed", &C::seed, "seed of the example order, the split, LoRA init and dropout", true},
      {"threads", &C::threads, "CPU threads (0: all cores)", false},
      {"device", &C::device, "where the model trains: cpu or cuda", false},
      {"precision", &C::precision, "compute dtype of the matrix products: f32, or bf16 (mixed precision, f32 master weights)", false},
      {"out", &C::out, "output directory", false},
  };
  return fields;
}

void validate_sft_config(const SftConfig& c) {
  auto positive = [](int64_t v, const char* name) {
    KOTOBA_CHECK(v > 0, "sft config: '", name, "' must be positive, got ", v);
  };
  auto non_negative = [](double v, const char* name) {
    KOTOBA_CHECK(v >= 0, "sft config: '", name, "' must not be negative, got ", v);
  };
  KOTOBA_CHECK(!c.model.empty(), "sft config: 'model' (the model directory to fine-tune) is required");
  KOTOBA_CHECK(!c.data.empty(), "sft config: 'data' (the training examples) is required");
  KOTOBA_CHECK(c.val_fraction >= 0 && c.val_fraction < 1, "sft config: 'val_fraction' must be in [0, 1), got ",
               c.val_fraction);
  positive(c.max_length, "max_length");
  positive(c.batch, "batch");
  positive(c.grad_accum, "grad_accum");
  positive(c.log_every, "log_every");
  KOTOBA_CHECK(c.pack == 0 || c.pack == 1, "sft config: 'pack' must be 0 or 1, got ", c.pack);
  KOTOBA_CHECK(c.merge == 0 || c.merge == 1, "sft config: 'merge' must be 0 or 1, got ", c.merge);
  KOTOBA_CHECK(c.steps > 0 || c.epochs > 0, "sft config: give 'steps' or a positive 'epochs'");
  non_negative(c.epochs, "epochs");
  non_negative(double(c.steps), "steps");
  validate_optimizer_config(c, "sft");
  validate_lora_config(c, "sft");
  KOTOBA_CHECK(c.lora_dropout >= 0 && c.lora_dropout < 1, "sft config: 'lora_dropout' must be in [0, 1), got ",
               c.lora_dropout);
  KOTOBA_CHECK(c.lora_r > 0 || (c.lora_targets.empty() && c.merge == 0 && c.quantize.empty()),
               "sft config: 'lora_targets', 'merge' and 'quantize' apply with LoRA (set 'lora_r')");
  if (!c.quantize.empty()) quant::parse_weight_format(c.quantize);  // names the formats when unknown
  parse_device(c.device, "sft config: 'device'");
  parse_precision(c.precision, "sft config: 'precision'");
  KOTOBA_CHECK(c.quantize.empty() || c.merge == 0,
               "sft config: 'merge' cannot merge into a quantised base; merge the adapter into the f32 base with "
               "kotoba lora merge BASE OUT/adapter MERGED");
  validate_run_config(c, "sft");
  KOTOBA_CHECK(!c.out.empty(), "sft config: 'out' (the output directory) is required");
}

double sft_learning_rate(const SftConfig& c, double lr, int64_t step, int64_t total_steps) {
  if (c.warmup > 0 && step <= c.warmup) return lr * double(step) / double(c.warmup);
  const int64_t decay_steps = total_steps - c.warmup;
  if (decay_steps <= 0) return lr;
  const double progress = std::clamp(double(step - c.warmup) / double(decay_steps), 0.0, 1.0);
  return c.min_lr + 0.5 * (lr - c.min_lr) * (1.0 + std::cos(M_PI * progress));
}

// ---- batches ----

SftBatch make_sft_batch(std::span<const data::PackingExample* const> examples, int32_t pad_id) {
  size_t longest = 0;
  for (const auto* e : examples) longest = std::max(longest, e->ids.size());
  const int64_t B = int64_t(examples.size()), T = int64_t(longest);
  std::vector<int32_t> ids(size_t(B * T), pad_id), targets(size_t(B * T), data::kIgnoreLabel);
  SftBatch batch;
  for (int64_t b = 0; b < B; ++b) {
    const auto& e = *examples[size_t(b)];
    for (size_t t = 0; t < e.ids.size(); ++t) {
      ids[size_t(b * T) + t] = e.ids[t];
      if (t + 1 < e.ids.size()) {
        targets[size_t(b * T) + t] = e.labels[t + 1];
        batch.target_tokens += e.labels[t + 1] != data::kIgnoreLabel;
      }
    }
  }
  batch.ids = Tensor::from_vector_i32(ids, {B, T});
  batch.targets = Tensor::from_vector_i32(targets, {B, T});
  return batch;
}

namespace {

int64_t count_targets(const Tensor& targets) {
  const int32_t* p = targets.data<int32_t>();
  return std::count_if(p, p + targets.numel(), [](int32_t t) { return t != data::kIgnoreLabel; });
}

// Batches are built on the host and moved to the model's device.
Tensor batch_loss(nn::CausalLM& model, const SftBatch& batch) {
  const Device d = model.device();
  if (batch.positions.defined())
    return model.packed_loss(nn::PackedBatch{on_device(batch.ids, d), on_device(batch.targets, d),
                                             on_device(batch.positions, d), on_device(batch.segments, d)});
  return model.loss(on_device(batch.ids, d), on_device(batch.targets, d));
}

constexpr CheckpointKind kCheckpoint{"kotoba-sft-checkpoint", "SFT", 1};

}  // namespace


json finetuned_tokenizer_config(const tokenizer::Tokenizer& tokenizer, const chat::ChatTemplate& chat_template,
                                int64_t max_positions, const std::string& base_dir) {
  // The base's tokenizer_config.json (special tokens, class, flags) with the template swapped in.
  json config = json::object();
  const fs::path base_config = fs::path(base_dir) / "tokenizer_config.json";
  if (!base_dir.empty() && fs::exists(base_config)) config = read_config_file(base_config.string());
  KOTOBA_CHECK(config.is_object(), base_config.string(), ": expected a JSON object");
  if (!config.contains("tokenizer_class")) config["tokenizer_class"] = "PreTrainedTokenizerFast";
  if (!chat_template.bos_token().empty() && !config.contains("bos_token")) config["bos_token"] = chat_template.bos_token();
  if (!chat_template.eos_token().empty() && !config.contains("eos_token")) config["eos_token"] = chat_template.eos_token();
  if (tokenizer.pad_id() && !config.contains("pad_token")) config["pad_token"] = tokenizer.id_to_token(*tokenizer.pad_id());
  config["chat_template"] = chat::template_jinja(chat_template.style());
  config.erase("chat_templates");
  if (!config.contains("model_max_length")) config["model_max_length"] = max_positions;
  return config;
}

void save_finetuned_model_dir(const std::string& dir, const nn::CausalLM& model, const tokenizer::Tokenizer& tokenizer,
                              const GenerationConfig& generation, const chat::ChatTemplate& chat_template,
                              const std::string& base_dir) {
  const json config = finetuned_tokenizer_config(tokenizer, chat_template, model.max_positions(), base_dir);
  write_directory_atomically(dir, [&](const std::string& tmp) {
    const std::string model_files = (fs::path(tmp) / "files").string();
    save_model_dir(model_files, model, tokenizer, generation);
    for (const auto& entry : fs::directory_iterator(model_files))
      fs::rename(entry.path(), fs::path(tmp) / entry.path().filename());
    fs::remove(model_files);
    write_file_atomically((fs::path(tmp) / "tokenizer_config.json").string(), config.dump(2) + "\n");
  });
}

// ---- the trainer's state ----

struct SftTrainer::State {
  LoadedModel loaded;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::optional<chat::ChatTemplate> chat_template;
  std::optional<nn::LoraConfig> lora;
  std::vector<data::PackingExample> train, val;
  int32_t pad_id = 0;
  double lr = 0;
  std::unique_ptr<AdamW> optimizer;
  std::vector<Tensor> trainable;
  int64_t truncated = 0;

  // The current epoch's units: example indices (padded batches) or packed rows.
  int64_t epoch = -1;
  std::vector<size_t> order;       // example order of the epoch
  data::PackedExamples packed;     // when packing: the epoch's rows
  int64_t units = 0;               // examples or rows in the epoch
  int64_t position = 0;            // next unit of the epoch

  int64_t step = 0, tokens = 0, last_checkpoint_step = 0;
  bool resumed = false;
  double last_train_loss = std::nan(""), last_val_loss = std::nan("");
  std::vector<LossRow> rows;
};

FinetunedOutputs save_finetuned_outputs(const std::string& out, nn::CausalLM& model,
                                        const std::optional<nn::LoraConfig>& lora, bool merge,
                                        const tokenizer::Tokenizer& tokenizer, const GenerationConfig& generation,
                                        const chat::ChatTemplate& chat_template, const std::string& base_dir,
                                        const std::function<void(const std::string&)>& log) {
  // The adapter and model directory writers read the weights on the host; training is over.
  if (model.device() != Device::cpu) model.to(Device::cpu);
  FinetunedOutputs written;
  if (lora) {
    written.adapter_dir = (fs::path(out) / "adapter").string();
    save_peft_adapter(written.adapter_dir, model, *lora, base_dir);
    if (log) log("LoRA adapter (PEFT layout) written to " + written.adapter_dir);
  }
  if (!lora || merge) {
    if (lora) nn::merge_and_unload(model);
    written.model_dir = (fs::path(out) / "model").string();
    save_finetuned_model_dir(written.model_dir, model, tokenizer, generation, chat_template, base_dir);
    if (log) log("model written to " + written.model_dir);
  }
  return written;
}

chat::ChatTemplate resolve_chat_template(const std::string& name, const std::string& dir, const tokenizer::Tokenizer& tok,
                                         const GenerationConfig& generation) {
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  tokenizer::TokenizerConfig tc;
  const bool has_config = fs::exists(config_path);
  if (has_config) tc = tokenizer::TokenizerConfig::read(config_path);
  if (name == "auto" && has_config && !tc.chat_template.empty())
    return chat::ChatTemplate::from_tokenizer_config(tc, config_path);
  const chat::TemplateStyle style =
      chat::parse_template_style(name == "auto" ? std::string("alpaca") : name);
  // generation_config.json's EOS where the tokenizer has that id (transformers' GPT2Config writes
  // 50256 whatever the tokenizer), else the tokenizer's own.
  std::optional<int32_t> eos = tok.eos_id();
  if (generation.eos_token_id && *generation.eos_token_id >= 0 && *generation.eos_token_id < tok.vocab_size())
    eos = int32_t(*generation.eos_token_id);
  const std::string bos = tc.bos_token.value_or(tok.bos_id() ? tok.id_to_token(*tok.bos_id()) : "");
  const std::string eos_text = tc.eos_token.value_or(eos ? tok.id_to_token(*eos) : "");
  return chat::ChatTemplate(style, bos, eos_text);
}

nn::LoraConfig lora_config_from_settings(int64_t r, double alpha, double dropout, const std::string& lora_targets,
                                         const std::string& model_type, const char* command) {
  nn::LoraConfig lc;
  lc.r = r;
  lc.alpha = alpha;
  lc.dropout = dropout;
  std::string targets = lora_targets;
  if (targets.empty()) targets = model_type == "gpt2" ? "c_attn" : "q_proj,v_proj";  // PEFT's defaults
  if (targets == "all-linear" || targets.find_first_of("|()*+?[]\\^$") != std::string::npos) {
    lc.target_regex = targets;
  } else {
    std::stringstream ss(targets);
    std::string name;
    while (std::getline(ss, name, ','))
      if (!name.empty()) lc.target_modules.push_back(name);
    KOTOBA_CHECK(!lc.target_modules.empty(), command, ": --lora-targets '", lora_targets, "' names no layer");
  }
  return lc;
}

data::SftTokens tokenize_for_training(const data::SftExample& e, const chat::ChatTemplate& tmpl,
                                      const tokenizer::Tokenizer& tok, int64_t max_length) {
  // The Alpaca and plain templates end a reply with a newline, not an end-of-sequence token, so a
  // model tuned on them alone never learns to stop. As Stanford Alpaca's own training did, the
  // tokenizer's EOS follows the last reply as one more target; generation then ends on it.
  const bool append_eos = (tmpl.style() == chat::TemplateStyle::alpaca || tmpl.style() == chat::TemplateStyle::plain) &&
                          tok.eos_id().has_value();
  data::SftTokens t = data::tokenize_sft_example(e, tmpl, tok, max_length);
  if (append_eos && !e.plain_text && !t.truncated && !t.labels.empty() && t.labels.back() != data::kIgnoreLabel) {
    if (max_length <= 0 || int64_t(t.ids.size()) < max_length) {
      t.ids.push_back(*tok.eos_id());
      t.labels.push_back(*tok.eos_id());
    } else {
      t.truncated = true;  // no room left for the EOS
    }
  }
  return t;
}

namespace {

std::vector<data::PackingExample> tokenize_all(const std::vector<data::SftExample>& examples,
                                               const chat::ChatTemplate& tmpl, const tokenizer::Tokenizer& tok,
                                               int64_t max_length, int64_t& truncated, int64_t& dropped) {
  std::vector<data::PackingExample> out;
  out.reserve(examples.size());
  for (const auto& e : examples) {
    data::SftTokens t = tokenize_for_training(e, tmpl, tok, max_length);
    truncated += t.truncated;
    // An example with no target left after truncation teaches nothing; it is dropped (counted).
    if (std::none_of(t.labels.begin() + 1, t.labels.end(), [](int32_t l) { return l != data::kIgnoreLabel; }))
    {
      ++dropped;
      continue;
    }
    out.push_back({std::move(t.ids), std::move(t.labels)});
  }
  return out;
}

}  // namespace

SftTrainer::SftTrainer(SftConfig config, SftOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_sft_config(config_);
  config_.model = fs::absolute(config_.model).lexically_normal().string();
  config_.data = fs::absolute(config_.data).lexically_normal().string();
  if (!config_.val_data.empty()) config_.val_data = fs::absolute(config_.val_data).lexically_normal().string();
  State& s = *state_;
  s.loaded = load_model_dir(config_.model);
  s.tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load_dir(s.loaded.dir));
  KOTOBA_CHECK(s.tok->vocab_size() <= s.loaded.model->vocab_size(), "sft: the tokenizer of ", config_.model, " has ",
               s.tok->vocab_size(), " tokens but the model only ", s.loaded.model->vocab_size(), " rows");
  s.chat_template.emplace(resolve_chat_template(config_.chat_template, s.loaded.dir, *s.tok, s.loaded.generation));
  s.pad_id = s.tok->pad_id().value_or(s.tok->eos_id().value_or(0));
  KOTOBA_CHECK(config_.max_length <= s.loaded.model->max_positions(), "sft config: 'max_length' (",
               config_.max_length, ") exceeds the model's context (", s.loaded.model->max_positions(), " positions)");

  // Data: read, split, tokenise.
  std::vector<data::SftExample> examples = data::read_sft_dataset(config_.data, config_.format);
  std::vector<data::SftExample> train_examples, val_examples;
  if (!config_.val_data.empty()) {
    train_examples = std::move(examples);
    val_examples = data::read_sft_dataset(config_.val_data, config_.format);
  } else {
    const size_t n_val = size_t(std::floor(double(examples.size()) * config_.val_fraction));
    std::vector<size_t> order = permutation(examples.size(), mix64(uint64_t(config_.seed) ^ 0x5a11d5eedull));
    std::vector<bool> is_val(examples.size(), false);
    for (size_t i = 0; i < n_val; ++i) is_val[order[i]] = true;
    for (size_t i = 0; i < examples.size(); ++i)
      (is_val[i] ? val_examples : train_examples).push_back(std::move(examples[i]));
  }
  int64_t dropped = 0;
  s.train = tokenize_all(train_examples, *s.chat_template, *s.tok, config_.max_length, s.truncated, dropped);
  s.val = tokenize_all(val_examples, *s.chat_template, *s.tok, config_.max_length, s.truncated, dropped);
  KOTOBA_CHECK(!s.train.empty(), "sft: ", config_.data, " leaves no training example with a target",
               train_examples.empty() ? " (every example went to validation: lower --val-fraction)"
                                      : detail::concat(" (", dropped, " examples kept no response token within ",
                                                       "max_length ", config_.max_length, ": raise --max-length)"));
  if (dropped > 0 && options_.log)
    options_.log(detail::concat("warning: ", dropped, " examples were left out: cut at max_length ",
                                config_.max_length, " they kept no response token"));
  for (const auto& e : s.train)
    for (int32_t id : e.ids)
      KOTOBA_CHECK(id < s.loaded.model->vocab_size(), "sft: token id ", id, " is outside the model's vocabulary (",
                   s.loaded.model->vocab_size(), ")");

  // Model: LoRA (on a quantised base: QLoRA) or full.
  nn::CausalLM& model = *s.loaded.model;
  if (!config_.quantize.empty()) {
    const QuantizeReport q = quantize_model(model, quant::parse_weight_format(config_.quantize));
    if (options_.log)
      options_.log(detail::concat("QLoRA: ", q.quantized.size(), " Linear layers held as ", config_.quantize,
                                  ", weights ", q.bytes_before / 1000000, " MB -> ", q.bytes_after / 1000000, " MB"));
  }
  for (auto& [name, m] : model.named_modules()) {
    const auto* linear = dynamic_cast<const nn::Linear*>(m);
    KOTOBA_CHECK(config_.lora_r > 0 || !linear || !linear->quantized(), "sft: ", config_.model, " holds layer '", name,
                 "' quantised; full fine-tuning needs f32 weights (train LoRA adapters on it: set lora_r)");
  }
  if (config_.lora_r > 0) {
    s.lora = lora_config_from_settings(config_.lora_r, config_.lora_alpha, config_.lora_dropout, config_.lora_targets,
                                       model.model_type(), "sft");
    nn::apply_lora(model, *s.lora, mix64(uint64_t(config_.seed) ^ 0x10a1a17ull));
  } else {
    model.set_requires_grad(true);
  }
  model.dropout_generator().set_state(mix64(uint64_t(config_.seed) ^ 0xd50f7ull), 0);
  model.train();
  s.lr = config_.lr > 0 ? config_.lr : (config_.lora_r > 0 ? 2e-4 : 2e-5);
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) trainable.emplace_back(name, p);
  for (auto& [name, p] : trainable) s.trainable.push_back(p);
  // Before the optimizer: its moments are made beside the parameters. Module::to keeps the
  // tensors' identity, so `trainable` follows the move.
  if (const Device device = parse_device(config_.device, "sft config: 'device'"); device != Device::cpu)
    model.to(device);
  s.optimizer = std::make_unique<AdamW>(trainable, AdamWConfig{.lr = float(s.lr), .beta1 = float(config_.beta1),
                                                               .beta2 = float(config_.beta2), .eps = float(config_.eps),
                                                               .weight_decay = float(config_.weight_decay)});

  // Steps: from the units of one epoch (packed rows of the first epoch's order when packing). The
  // first epoch is built here once and is the one training starts with.
  begin_epoch(0);
  const int64_t per_step = config_.batch * config_.grad_accum;
  total_steps_ = config_.steps > 0 ? config_.steps
                                   : std::max<int64_t>(1, int64_t(std::ceil(config_.epochs * double(s.units) /
                                                                             double(per_step))));
}

SftTrainer::~SftTrainer() = default;

nn::CausalLM& SftTrainer::model() { return *state_->loaded.model; }
const tokenizer::Tokenizer& SftTrainer::tokenizer() const { return *state_->tok; }
const chat::ChatTemplate& SftTrainer::chat_template() const { return *state_->chat_template; }
std::string SftTrainer::trainable_parameters_report() const {
  return nn::trainable_parameters_report(*state_->loaded.model);
}

void SftTrainer::begin_epoch(int64_t epoch) {
  State& s = *state_;
  s.epoch = epoch;
  s.position = 0;
  s.order = permutation(s.train.size(), mix64(uint64_t(config_.seed) + uint64_t(epoch)));
  if (config_.pack) {
    std::vector<const data::PackingExample*> ordered;
    ordered.reserve(s.order.size());
    for (size_t i : s.order) ordered.push_back(&s.train[i]);
    s.packed = data::pack_examples_by_pointer(ordered, config_.max_length, s.pad_id);
    s.units = int64_t(s.packed.rows.size());
  } else {
    s.units = int64_t(s.order.size());
  }
}

SftBatch SftTrainer::next_train_batch() {
  State& s = *state_;
  if (s.epoch < 0 || s.position >= s.units) begin_epoch(s.epoch + 1);
  const int64_t begin = s.position, end = std::min(s.units, s.position + config_.batch);
  s.position = end;
  if (config_.pack) {
    const nn::PackedBatch& all = s.packed.batch;
    SftBatch b;
    b.ids = all.ids.slice_view(0, begin, end).contiguous();
    b.targets = all.targets.slice_view(0, begin, end).contiguous();
    b.positions = all.positions.slice_view(0, begin, end).contiguous();
    b.segments = all.segments.slice_view(0, begin, end).contiguous();
    b.target_tokens = count_targets(b.targets);
    return b;
  }
  std::vector<const data::PackingExample*> picked;
  for (int64_t i = begin; i < end; ++i) picked.push_back(&s.train[s.order[size_t(i)]]);
  return make_sft_batch(picked, s.pad_id);
}

double SftTrainer::validation_loss() {
  State& s = *state_;
  if (s.val.empty()) return std::nan("");
  NoGradGuard no_grad;
  nn::CausalLM& model = *s.loaded.model;
  model.eval();
  double weighted = 0;
  int64_t tokens = 0;
  for (size_t begin = 0; begin < s.val.size(); begin += size_t(config_.batch)) {
    std::vector<const data::PackingExample*> picked;
    for (size_t i = begin; i < std::min(s.val.size(), begin + size_t(config_.batch)); ++i) picked.push_back(&s.val[i]);
    SftBatch b = make_sft_batch(picked, s.pad_id);
    if (b.target_tokens == 0) continue;
    weighted += double(batch_loss(model, b).to_vector()[0]) * double(b.target_tokens);
    tokens += b.target_tokens;
  }
  model.train();
  return tokens > 0 ? weighted / double(tokens) : std::nan("");
}

// ---- checkpoints ----

void SftTrainer::save_checkpoint() {
  State& s = *state_;
  save_trainer_checkpoint(checkpoint_dir(config_.out), *s.optimizer, kCheckpoint,
                          {{"step", s.step},
                           {"total_steps", total_steps_},
                           {"tokens", s.tokens},
                           {"epoch", s.epoch},
                           {"position", s.position},
                           {"dropout_generator", generator_json(s.loaded.model->dropout_generator())},
                           {"lora_dropout_generators", lora_dropout_generators_json(*s.loaded.model)},
                           {"train_loss", json_number(s.last_train_loss)},
                           {"val_loss", json_number(s.last_val_loss)},
                           {"config", config_to_json(config_, sft_config_fields())}});
  s.last_checkpoint_step = s.step;
}

SftConfig SftTrainer::read_checkpoint_config(const std::string& out_dir) {
  return read_trainer_checkpoint_config(TrainerState(out_dir, kCheckpoint), sft_config_fields());
}

void SftTrainer::resume() {
  State& s = *state_;
  const TrainerState state = read_resumable_trainer_state(config_, kCheckpoint, sft_config_fields());
  const std::string& state_path = state.path();
  const int64_t step = state.integer("step");
  KOTOBA_CHECK(step >= 0 && step <= total_steps_, state_path, ": step ", step, " is beyond the run's ", total_steps_,
               " steps");
  restore_trainer_checkpoint(state, *s.optimizer);
  state.restore_generator("dropout_generator", s.loaded.model->dropout_generator());
  state.restore_lora_dropout_generators(*s.loaded.model);
  s.step = step;
  s.tokens = state.integer("tokens");
  // The epoch's order (and packing) is rebuilt from the seed; the position within it is restored.
  const int64_t epoch = state.integer("epoch"), position = state.integer("position");
  if (epoch >= 0) {
    if (epoch != s.epoch) begin_epoch(epoch);  // the order (and packing) is rebuilt from the seed
    KOTOBA_CHECK(position >= 0 && position <= s.units, state_path, ": position ", position, " is outside epoch ",
                 epoch, " (", s.units, " units)");
    s.position = position;
  }
  s.last_train_loss = state.optional_number("train_loss");
  s.last_val_loss = state.optional_number("val_loss");
  s.last_checkpoint_step = step;
  s.resumed = true;
  s.rows = read_loss_csv((fs::path(config_.out) / "loss.csv").string(), step);
  if (options_.log)
    options_.log("resumed from " + state.dir() + " at step " + std::to_string(step) + " of " +
                 std::to_string(total_steps_));
}

void SftTrainer::write_loss_files() {
  write_loss_plot((fs::path(config_.out) / "loss.png").string(), state_->rows, "fine-tuning loss (response tokens)");
}

// ---- the loop ----

SftResult SftTrainer::run(int64_t stop_after_step) {
  State& s = *state_;
  const SftConfig& c = config_;
  AutocastScope autocast(parse_precision(c.precision, "sft config: 'precision'"));
  fs::path out(c.out);
  prepare_output_dir("sft", c.out, s.resumed);
  const std::string csv_path = (out / "loss.csv").string();
  write_loss_csv(csv_path, s.rows);
  const int64_t end_step = stop_after_step > 0 ? std::min(stop_after_step, total_steps_) : total_steps_;
  nn::CausalLM& model = *s.loaded.model;
  auto stopped = [&](const std::string& what) {
    throw Error(stopped_message("sft", what, "step", s.last_checkpoint_step, checkpoint_dir(c.out)));
  };

  Progress progress("sft", total_steps_, {.unit = "steps", .quiet = !options_.progress});
  progress.set(s.step);
  using clock = std::chrono::steady_clock;
  auto row_start = clock::now();
  double row_loss_sum = 0;
  int64_t row_steps = 0, row_tokens = 0;
  double tokens_per_second = 0;
  int64_t epoch_seen = s.epoch;

  while (s.step < end_step) {
    const int64_t step = s.step + 1;
    const double lr = sft_learning_rate(c, s.lr, step, total_steps_);
    s.optimizer->set_lr(float(lr));
    s.optimizer->zero_grad();
    // The step's loss is the mean over all its target tokens (every micro-batch weighted by its
    // share of them), so accumulation gives the gradient one large batch would.
    std::vector<SftBatch> micro;
    int64_t step_targets = 0, step_tokens = 0;
    for (int64_t m = 0; m < c.grad_accum; ++m) {
      micro.push_back(next_train_batch());
      step_targets += micro.back().target_tokens;
      step_tokens += micro.back().ids.numel();
    }
    double loss_sum = 0;
    for (size_t m = 0; m < micro.size(); ++m) {
      if (micro[m].target_tokens == 0) continue;
      Tensor loss = batch_loss(model, micro[m]);
      const float value = loss.to_vector()[0];
      if (!std::isfinite(value))
        stopped(detail::concat("the training loss became ", value, " at step ", step));
      // A model that spreads its bets evenly scores ln V; four times that is divergence, not learning.
      if (value > 4.0 * std::log(double(model.vocab_size())))
        stopped(detail::concat("the training loss exploded to ", value, " at step ", step, " (more than 4 ln V = ",
                               4.0 * std::log(double(model.vocab_size())), ")"));
      const double weight = double(micro[m].target_tokens) / double(step_targets);
      loss_sum += double(value) * weight;
      scale(loss, float(weight)).backward();
    }
    const float norm = global_grad_norm(s.trainable);
    if (!std::isfinite(norm)) stopped(detail::concat("the gradient norm became ", norm, " at step ", step));
    s.optimizer->step(c.clip > 0 ? clip_coefficient(norm, float(c.clip)) : 1.0f);
    s.step = step;
    s.tokens += step_tokens;
    s.last_train_loss = loss_sum;
    row_loss_sum += loss_sum;
    row_steps += 1;
    row_tokens += step_tokens;

    const bool last = step == total_steps_;
    const bool epoch_ended = s.position >= s.units && s.epoch >= epoch_seen;
    if (epoch_ended) epoch_seen = s.epoch + 1;
    const bool eval_now = !s.val.empty() && (last || (c.eval_every > 0 ? step % c.eval_every == 0 : epoch_ended));
    double val = std::nan("");
    if (eval_now) {
      val = s.last_val_loss = validation_loss();
      if (options_.log) {
        char line[160];
        std::snprintf(line, sizeof line, "step %lld/%lld  train loss %.4f  val loss %.4f", (long long)step,
                      (long long)total_steps_, s.last_train_loss, val);
        options_.log(line);
      }
    }
    if (step % c.log_every == 0 || eval_now || last || step == end_step) {
      const double seconds = std::chrono::duration<double>(clock::now() - row_start).count();
      tokens_per_second = seconds > 0 ? double(row_tokens) / seconds : 0;
      LossRow row{step, lr, row_loss_sum / double(row_steps), val, tokens_per_second};
      s.rows.push_back(row);
      append_loss_csv(csv_path, row);
      row_start = clock::now();
      row_loss_sum = 0;
      row_steps = row_tokens = 0;
    }
    if (c.checkpoint_every > 0 && step % c.checkpoint_every == 0) save_checkpoint();
    if (eval_now) write_loss_files();
    char extra[160];
    std::snprintf(extra, sizeof extra, "loss %.4f  lr %.2e  %.0f tokens/s  epoch %lld", s.last_train_loss, lr,
                  tokens_per_second, (long long)s.epoch + 1);
    progress.set_extra(extra);
    progress.set(s.step);
  }
  progress.finish();

  SftResult result;
  result.step = s.step;
  result.total_steps = total_steps_;
  result.finished = s.step >= total_steps_;
  result.train_loss = s.last_train_loss;
  result.val_loss = s.last_val_loss;
  result.train_examples = int64_t(s.train.size());
  result.val_examples = int64_t(s.val.size());
  result.truncated_examples = s.truncated;
  if (s.last_checkpoint_step != s.step && (!result.finished || c.checkpoint_every > 0)) save_checkpoint();
  write_loss_files();
  if (result.finished) {
    model.eval();
    const FinetunedOutputs written = save_finetuned_outputs(out.string(), model, s.lora, c.merge != 0, *s.tok,
                                                            s.loaded.generation, *s.chat_template, c.model, options_.log);
    result.adapter_dir = written.adapter_dir;
    result.model_dir = written.model_dir;
  }
  return result;
}

std::string SftTrainer::checkpoint_dir(const std::string& out_dir) { return trainer_checkpoint_dir(out_dir); }

}  // namespace kotoba::train
