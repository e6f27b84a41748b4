// The pretraining loop. Determinism: the data windows are a pure function of (seed, windows
// drawn), dropout is counter-based (seed, offset), and the reductions add per-chunk partials in
// a fixed order; so the checkpoint's few counters are the whole state a resumed run needs.
#include "core/atomic_file.h"
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "core/progress.h"
#include "io/bert_config.h"
#include "io/model_dir.h"
#include "tokenizer/tokenizer.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/plot.h"

namespace kotoba::train {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config ----

std::span<const PretrainConfigField> pretrain_config_fields() {
  using C = PretrainConfig;
  static const PretrainConfigField fields[] = {
      {"objective", &C::objective, "clm (next token) or mlm (masked tokens, arch bert)", true},
      {"arch", &C::arch, "architecture: gpt2, llama (objective clm) or bert (objective mlm)", true},
      {"n_layer", &C::n_layer, "transformer blocks", true},
      {"n_head", &C::n_head, "attention heads per block", true},
      {"n_embd", &C::n_embd, "model width", true},
      {"n_positions", &C::n_positions, "longest sequence the model accepts (0: = seq)", true},
      {"n_kv_head", &C::n_kv_head, "llama: key/value heads (0: = n_head)", true},
      {"n_inner", &C::n_inner, "llama: MLP width (0: 8/3 n_embd, a multiple of 64); bert: (0: 4 n_embd)", true},
      {"rope_theta", &C::rope_theta, "llama: rotary base", true},
      {"dropout", &C::dropout, "gpt2, bert: dropout on embeddings and residual branches", true},
      {"seq", &C::seq, "tokens per training window", true},
      {"batch", &C::batch, "windows per micro-batch", true},
      {"grad_accum", &C::grad_accum, "micro-batches per optimizer step", true},
      {"steps", &C::steps, "optimizer steps in the whole run", false},
      {"lr", &C::lr, "peak learning rate", true},
      {"min_lr", &C::min_lr, "learning rate at the last step (cosine decay)", true},
      {"warmup", &C::warmup, "linear warm-up steps", true},
      {"weight_decay", &C::weight_decay, "AdamW decoupled weight decay (matrices only)", true},
      {"beta1", &C::beta1, "AdamW beta1", true},
      {"beta2", &C::beta2, "AdamW beta2", true},
      {"eps", &C::eps, "AdamW epsilon", true},
      {"clip", &C::clip, "global gradient-norm clipping (0: off)", true},
      {"eval_every", &C::eval_every, "steps between validation passes (0: only at the end)", false},
      {"eval_batches", &C::eval_batches, "validation batches per pass", false},
      {"checkpoint_every", &C::checkpoint_every, "steps between checkpoints (0: none)", false},
      {"log_every", &C::log_every, "steps between loss.csv rows", false},
      {"seed", &C::seed, "seed of initialisation, dropout and data sampling", true},
      {"threads", &C::threads, "CPU threads (0: all cores)", false},
      {"device", &C::device, "where the model trains: cpu or cuda", false},
      {"precision", &C::precision, "compute dtype of the matrix products: f32, or bf16 (mixed precision, f32 master weights)", false},
      {"data", &C::data, "directory written by kotoba prepare", false},
      {"tokenizer", &C::tokenizer, "tokenizer.json the shards were made with", false},
      {"out", &C::out, "output directory", false},
  };
  return fields;
}

void validate_pretrain_config(const PretrainConfig& c) {
  auto positive = [](int64_t v, const char* name) {
    KOTOBA_CHECK(v > 0, "pretrain config: '", name, "' must be positive, got ", v);
  };
  auto non_negative = [](double v, const char* name) {
    KOTOBA_CHECK(v >= 0, "pretrain config: '", name, "' must not be negative, got ", v);
  };
  KOTOBA_CHECK(c.objective == "clm" || c.objective == "mlm", "pretrain config: 'objective' must be \"clm\" or \"mlm\", ",
               "got \"", c.objective, "\"");
  if (c.objective == "clm")
    KOTOBA_CHECK(c.arch == "gpt2" || c.arch == "llama", "pretrain config: 'arch' must be \"gpt2\" or \"llama\" for ",
                 "objective clm, got \"", c.arch, "\"", c.arch == "bert" ? " (bert trains with objective mlm)" : "");
  else
    KOTOBA_CHECK(c.arch == "bert", "pretrain config: 'arch' must be \"bert\" for objective mlm, got \"", c.arch, "\"");
  if (c.arch == "bert") {
    KOTOBA_CHECK(c.n_kv_head == 0, "pretrain config: 'n_kv_head' applies to arch llama");
    KOTOBA_CHECK(c.n_inner >= 0, "pretrain config: 'n_inner' must not be negative");
  } else if (c.arch == "gpt2") {
    KOTOBA_CHECK(c.n_kv_head == 0 && c.n_inner == 0, "pretrain config: 'n_kv_head' and 'n_inner' apply to arch llama "
                 "(GPT-2 has n_head key/value heads and a 4 n_embd MLP)");
  } else {
    KOTOBA_CHECK(c.dropout == 0, "pretrain config: 'dropout' applies to arch gpt2 (kotoba's LLaMA has none)");
    KOTOBA_CHECK(c.n_kv_head >= 0 && c.n_inner >= 0, "pretrain config: 'n_kv_head' and 'n_inner' must not be negative");
    KOTOBA_CHECK(c.n_head % (c.n_kv_head > 0 ? c.n_kv_head : c.n_head) == 0, "pretrain config: 'n_head' (", c.n_head,
                 ") must be a multiple of 'n_kv_head' (", c.n_kv_head, ")");
    KOTOBA_CHECK((c.n_embd / std::max<int64_t>(c.n_head, 1)) % 2 == 0, "pretrain config: the head size n_embd / n_head ",
                 "must be even for rotary embeddings");
    KOTOBA_CHECK(c.rope_theta > 0, "pretrain config: 'rope_theta' must be positive, got ", c.rope_theta);
  }
  positive(c.n_layer, "n_layer");
  positive(c.n_head, "n_head");
  positive(c.n_embd, "n_embd");
  positive(c.seq, "seq");
  positive(c.batch, "batch");
  positive(c.grad_accum, "grad_accum");
  positive(c.steps, "steps");
  positive(c.eval_batches, "eval_batches");
  positive(c.log_every, "log_every");
  KOTOBA_CHECK(c.n_embd % c.n_head == 0, "pretrain config: 'n_embd' (", c.n_embd, ") must be divisible by 'n_head' (",
               c.n_head, ")");
  KOTOBA_CHECK(c.n_positions == 0 || c.n_positions >= c.seq, "pretrain config: 'n_positions' (", c.n_positions,
               ") must be 0 or at least 'seq' (", c.seq, ")");
  KOTOBA_CHECK(c.dropout >= 0 && c.dropout < 1, "pretrain config: 'dropout' must be in [0, 1), got ", c.dropout);
  KOTOBA_CHECK(c.lr > 0, "pretrain config: 'lr' must be positive, got ", c.lr);
  KOTOBA_CHECK(c.min_lr >= 0 && c.min_lr <= c.lr, "pretrain config: 'min_lr' (", c.min_lr, ") must be in [0, lr = ",
               c.lr, "]");
  KOTOBA_CHECK(c.beta1 >= 0 && c.beta1 < 1, "pretrain config: 'beta1' must be in [0, 1), got ", c.beta1);
  KOTOBA_CHECK(c.beta2 >= 0 && c.beta2 < 1, "pretrain config: 'beta2' must be in [0, 1), got ", c.beta2);
  KOTOBA_CHECK(c.eps > 0, "pretrain config: 'eps' must be positive, got ", c.eps);
  parse_device(c.device, "pretrain config: 'device'");
  parse_precision(c.precision, "pretrain config: 'precision'");
  non_negative(double(c.n_positions), "n_positions");
  non_negative(double(c.warmup), "warmup");
  non_negative(c.weight_decay, "weight_decay");
  non_negative(c.clip, "clip");
  non_negative(double(c.eval_every), "eval_every");
  non_negative(double(c.checkpoint_every), "checkpoint_every");
  non_negative(double(c.seed), "seed");
  non_negative(double(c.threads), "threads");
  KOTOBA_CHECK(!c.data.empty(), "pretrain config: 'data' (the directory from kotoba prepare) is required");
  KOTOBA_CHECK(!c.tokenizer.empty(), "pretrain config: 'tokenizer' (tokenizer.json) is required");
  KOTOBA_CHECK(!c.out.empty(), "pretrain config: 'out' must not be empty");
}

double learning_rate_at(const PretrainConfig& c, int64_t step) {
  if (c.warmup > 0 && step <= c.warmup) return c.lr * double(step) / double(c.warmup);
  double span = double(std::max<int64_t>(1, c.steps - c.warmup));
  double progress = std::clamp(double(step - c.warmup) / span, 0.0, 1.0);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(M_PI * progress));
}

// ---- files ----

namespace {

constexpr const char* kStateFormat = "kotoba-pretrain-checkpoint";
constexpr int kStateVersion = 1;

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, path, ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(buffer.str());
  } catch (const json::parse_error& e) {
    throw Error(detail::concat(path, ": invalid JSON (truncated or corrupt): ", e.what()));
  }
}

template <typename T>
T state_field(const json& state, const char* key, const std::string& file) {
  auto it = state.find(key);
  KOTOBA_CHECK(it != state.end(), file, ": key '", key, "' is missing");
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw Error(detail::concat(file, ": key '", key, "' has the wrong type (", it->dump(), ")"));
  }
}

}  // namespace

std::string Pretrainer::checkpoint_dir(const std::string& out_dir) { return trainer_checkpoint_dir(out_dir); }

PretrainConfig Pretrainer::read_checkpoint_config(const std::string& out_dir) {
  std::string dir = checkpoint_dir(out_dir);
  if (!fs::exists(dir) && fs::exists(dir + ".old")) dir += ".old";
  std::string path = (fs::path(dir) / "trainer_state.json").string();
  KOTOBA_CHECK(fs::is_regular_file(path), "resume: no checkpoint in '", out_dir, "' (", path, " is missing)");
  json state = read_json(path);
  auto it = state.find("config");
  KOTOBA_CHECK(it != state.end() && it->is_object(), path, ": key 'config' is missing");
  PretrainConfig config;
  apply_pretrain_config_json(config, *it, path + " (config)");
  return config;
}

// ---- the trainer ----

Pretrainer::Pretrainer(PretrainConfig config, PretrainerOptions options)
    : config_(std::move(config)), options_(std::move(options)) {
  validate_pretrain_config(config_);
  // Absolute, so that the checkpoint's copy of the config resumes from any working directory.
  config_.data = fs::absolute(config_.data).lexically_normal().string();
  config_.tokenizer = fs::absolute(config_.tokenizer).lexically_normal().string();
  data::TokenDataset train_data = data::TokenDataset::open(config_.data, "train");
  tokenizer_vocab_ = tokenizer_json_vocab_size(config_.tokenizer);
  train_data.check_tokenizer_vocab(tokenizer_vocab_);
  if (!train_data.index().tokenizer_hash.empty() &&
      data::tokenizer_file_hash(config_.tokenizer) != train_data.index().tokenizer_hash && options_.log)
    options_.log("warning: " + config_.tokenizer + " is not byte-identical to the tokenizer.json '" + config_.data +
                 "' was prepared with (same vocabulary size, " + std::to_string(tokenizer_vocab_) + " tokens)");
  const int64_t context = config_.n_positions > 0 ? config_.n_positions : config_.seq;
  if (config_.arch == "bert") {
    // The tokenizer names what masking needs: [MASK], and the specials that are never masked.
    tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(config_.tokenizer);
    auto mask = tok.token_to_id("[MASK]");
    KOTOBA_CHECK(mask.has_value(), config_.tokenizer, ": objective mlm needs a [MASK] token (train a WordPiece ",
                 "tokenizer: kotoba tokenizer train --type wordpiece)");
    mlm_.mask_id = *mask;
    mlm_.vocab_size = int32_t(tokenizer_vocab_);
    for (const char* name : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
      if (auto id = tok.token_to_id(name)) mlm_.special_ids.push_back(*id);
    validate_mlm_options(mlm_);
    nn::BertConfig bc;
    bc.vocab_size = tokenizer_vocab_;
    bc.hidden_size = config_.n_embd;
    bc.num_hidden_layers = config_.n_layer;
    bc.num_attention_heads = config_.n_head;
    bc.intermediate_size = config_.n_inner > 0 ? config_.n_inner : 4 * config_.n_embd;
    bc.max_position_embeddings = context;
    bc.layer_norm_eps = 1e-12f;
    bc.pad_token_id = tok.token_to_id("[PAD]").value_or(0);
    bc.hidden_dropout_prob = float(config_.dropout);
    bc.attention_probs_dropout_prob = 0.0f;  // kotoba's attention has no dropout on its probabilities
    bc.seed = uint64_t(config_.seed);
    bert_ = std::make_unique<nn::BertForMaskedLM>(bc);
  } else if (config_.arch == "llama") {
    nn::LlamaConfig mc;
    mc.vocab_size = tokenizer_vocab_;
    mc.hidden_size = config_.n_embd;
    // SwiGLU's three matrices at 8/3 n_embd cost what GPT-2's two at 4 n_embd do
    mc.intermediate_size = config_.n_inner > 0 ? config_.n_inner : (8 * config_.n_embd / 3 + 63) / 64 * 64;
    mc.num_hidden_layers = config_.n_layer;
    mc.num_attention_heads = config_.n_head;
    mc.num_key_value_heads = config_.n_kv_head > 0 ? config_.n_kv_head : config_.n_head;
    mc.max_position_embeddings = context;
    mc.rms_norm_eps = 1e-5f;
    mc.rope_theta = config_.rope_theta;
    mc.tie_word_embeddings = true;  // small models: the embedding doubles as the head, as GPT-2's
    mc.seed = uint64_t(config_.seed);
    model_ = std::make_unique<nn::Llama>(mc);
  } else {
    nn::GPT2Config mc{.vocab_size = tokenizer_vocab_,
                      .n_positions = context,
                      .n_embd = config_.n_embd,
                      .n_layer = config_.n_layer,
                      .n_head = config_.n_head,
                      .dropout = float(config_.dropout),
                      .seed = uint64_t(config_.seed)};
    model_ = std::make_unique<nn::GPT2>(mc);
  }
  module().train();
  // Before the optimizer: its moments are made beside the parameters.
  if (const Device device = parse_device(config_.device, "pretrain config: 'device'"); device != Device::cpu)
    module().to(device);
  optimizer_ = std::make_unique<AdamW>(module().named_parameters(),
                                       AdamWConfig{.lr = float(config_.lr), .beta1 = float(config_.beta1),
                                                   .beta2 = float(config_.beta2), .eps = float(config_.eps),
                                                   .weight_decay = float(config_.weight_decay)});
  // The sampler's seed differs from the model's so windows and initialisation are independent.
  train_sampler_ = std::make_unique<data::WindowSampler>(train_data, config_.batch, config_.seq,
                                                         mix64(uint64_t(config_.seed) ^ 0xda7a5a3b1e5ull));
  const int64_t val_tokens = train_data.index().val.tokens;
  if (val_tokens > config_.seq) {
    val_data_ = data::TokenDataset::open(config_.data, "val");
  } else if (options_.log) {
    options_.log("note: the val split of '" + config_.data + "' has " + std::to_string(val_tokens) +
                 " tokens (fewer than seq + 1 = " + std::to_string(config_.seq + 1) + "); no validation loss");
  }
}

Pretrainer::~Pretrainer() = default;

nn::CausalLM& Pretrainer::model() {
  KOTOBA_CHECK(model_ != nullptr, "pretrain: arch ", config_.arch, " is not a causal language model");
  return *model_;
}
nn::BertForMaskedLM& Pretrainer::bert() {
  KOTOBA_CHECK(bert_ != nullptr, "pretrain: arch ", config_.arch, " is not bert");
  return *bert_;
}
nn::Module& Pretrainer::module() { return bert_ ? static_cast<nn::Module&>(*bert_) : *model_; }
int64_t Pretrainer::model_vocab_size() const { return bert_ ? bert_->vocab_size() : model_->vocab_size(); }
int64_t Pretrainer::model_max_positions() const { return bert_ ? bert_->max_positions() : model_->max_positions(); }
Generator& Pretrainer::dropout_generator() { return bert_ ? bert_->dropout_generator() : model_->dropout_generator(); }

Tensor Pretrainer::batch_loss(const Tensor& x, const Tensor& y, uint64_t mask_seed, uint64_t batch_index) {
  // Batches are drawn (and masked) on the host, then moved to the model's device.
  const Device device = module().device();
  if (!bert_) return model_->loss(on_device(x, device), on_device(y, device));
  // Packed windows have no padding: every position is a token, so no attention mask is needed.
  mlm_mask(mlm_, x, mask_seed, batch_index, mlm_inputs_, mlm_labels_);
  int32_t* labels = mlm_labels_.data<int32_t>();
  const int64_t n = mlm_labels_.numel();
  if (std::all_of(labels, labels + n, [](int32_t l) { return l == -100; })) {
    // A batch with nothing selected (probability 0.85^tokens) would give a 0/0 loss: predict its
    // first maskable token instead, so every step has a finite loss.
    const int32_t* ids = x.data<int32_t>();
    for (int64_t i = 0; i < n; ++i)
      if (std::find(mlm_.special_ids.begin(), mlm_.special_ids.end(), ids[i]) == mlm_.special_ids.end()) {
        labels[i] = ids[i];
        mlm_inputs_.data<int32_t>()[i] = mlm_.mask_id;
        break;
      }
  }
  return bert_->loss(on_device(mlm_inputs_, device), Tensor(), Tensor(), on_device(mlm_labels_, device));
}

double Pretrainer::validation_loss() {
  if (!val_data_) return std::nan("");
  NoGradGuard no_grad;
  module().eval();
  data::WindowSampler sampler(*val_data_, config_.batch, config_.seq, mix64(uint64_t(config_.seed) ^ 0x7a1da7e5ull));
  Tensor x = Tensor::empty({config_.batch, config_.seq}, DType::i32), y = Tensor::empty({config_.batch, config_.seq}, DType::i32);
  double total = 0;
  for (int64_t i = 0; i < config_.eval_batches; ++i) {
    sampler.next(x, y);
    // Validation masks the same way every pass (its own seed, keyed by the batch number).
    total += batch_loss(x, y, mix64(uint64_t(config_.seed) ^ 0x7a1f3a5cull), uint64_t(i)).to_vector()[0];
  }
  module().train();
  return total / double(config_.eval_batches);
}

void Pretrainer::save_checkpoint() {
  fs::path out(config_.out);
  fs::create_directories(out);
  std::string target = checkpoint_dir(config_.out);
  std::string tmp = (out / (".checkpoint.tmp-" + std::to_string(::getpid()))).string();
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    std::map<std::string, Tensor> weights;
    for (auto& [name, p] : module().named_parameters()) weights[name] = p.detach();
    save_safetensors((fs::path(tmp) / "model.safetensors").string(), weights, {{"format", "pt"}});
    save_adamw_moments(*optimizer_, (fs::path(tmp) / "optimizer.safetensors").string());
    Generator& dropout = dropout_generator();
    json state{{"format", kStateFormat},
               {"version", kStateVersion},
               {"step", step_},
               {"tokens", tokens_},
               {"adamw_step", optimizer_->step_count()},
               {"dropout_generator", {{"seed", dropout.seed()}, {"offset", dropout.offset()}}},
               {"train_sampler_state", train_sampler_->state()},
               {"train_loss", std::isfinite(last_train_loss_) ? json(last_train_loss_) : json(nullptr)},
               {"val_loss", std::isfinite(last_val_loss_) ? json(last_val_loss_) : json(nullptr)},
               {"config", pretrain_config_to_json(config_)}};
    // Written last: a directory with trainer_state.json in it is complete.
    write_file_atomically((fs::path(tmp) / "trainer_state.json").string(), state.dump(2) + "\n");
    replace_directory(tmp, target);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  last_checkpoint_step_ = step_;
}

void Pretrainer::resume() {
  std::string dir = checkpoint_dir(config_.out);
  // Only the non-atomic fallback of replace_directory can leave the previous checkpoint aside.
  if (!fs::exists(dir) && fs::exists(dir + ".old")) dir += ".old";
  std::string state_path = (fs::path(dir) / "trainer_state.json").string();
  KOTOBA_CHECK(fs::is_regular_file(state_path), "resume: no checkpoint in '", config_.out, "' (", state_path,
               " is missing)");
  json state = read_json(state_path);
  KOTOBA_CHECK(state.is_object() && state.value("format", "") == kStateFormat, state_path,
               ": not a kotoba pretraining checkpoint (key 'format' should be \"", kStateFormat, "\")");
  KOTOBA_CHECK(state_field<int>(state, "version", state_path) == kStateVersion, state_path, ": version ",
               state["version"].dump(), " is not supported (expected ", kStateVersion, ")");
  PretrainConfig saved;
  auto cfg = state.find("config");
  KOTOBA_CHECK(cfg != state.end(), state_path, ": key 'config' is missing");
  apply_pretrain_config_json(saved, *cfg, state_path + " (config)");
  check_resumable(saved, config_, state_path, pretrain_config_fields());
  int64_t step = state_field<int64_t>(state, "step", state_path);
  KOTOBA_CHECK(step >= 0 && step <= config_.steps, state_path, ": step ", step, " is beyond --steps ", config_.steps);

  const std::string weights_path = (fs::path(dir) / "model.safetensors").string();
  SafeTensors weights = load_safetensors(weights_path);
  for (auto& [name, p] : module().named_parameters()) restore_checkpoint_tensor(weights.tensors, weights_path, name, p);
  load_adamw_moments(*optimizer_, (fs::path(dir) / "optimizer.safetensors").string());
  optimizer_->set_step_count(state_field<int64_t>(state, "adamw_step", state_path));
  auto gen = state.find("dropout_generator");
  KOTOBA_CHECK(gen != state.end() && gen->is_object(), state_path, ": key 'dropout_generator' is missing");
  dropout_generator().set_state(state_field<uint64_t>(*gen, "seed", state_path),
                                        state_field<uint64_t>(*gen, "offset", state_path));
  train_sampler_->set_state(state_field<uint64_t>(state, "train_sampler_state", state_path));
  step_ = step;
  tokens_ = state_field<int64_t>(state, "tokens", state_path);
  last_train_loss_ = state["train_loss"].is_number() ? state["train_loss"].get<double>() : std::nan("");
  last_val_loss_ = state["val_loss"].is_number() ? state["val_loss"].get<double>() : std::nan("");
  last_checkpoint_step_ = step;
  resumed_ = true;
  // The loss curve continues from the checkpoint: rows a killed run wrote after it are dropped.
  rows_ = read_loss_csv((fs::path(config_.out) / "loss.csv").string(), step_);
  if (options_.log)
    options_.log("resumed from " + dir + " at step " + std::to_string(step_) + " of " + std::to_string(config_.steps));
}

void Pretrainer::write_loss_files() {
  write_loss_plot((fs::path(config_.out) / "loss.png").string(), rows_,
                  config_.objective == "mlm" ? "masked-LM pretraining loss" : "pretraining loss");
}

PretrainResult Pretrainer::run(int64_t stop_after_step) {
  const PretrainConfig& c = config_;
  AutocastScope autocast(parse_precision(c.precision, "pretrain config: 'precision'"));
  fs::path out(c.out);
  prepare_output_dir("pretrain", c.out, resumed_);
  // loss.csv is rewritten once (header and the rows kept on resume), then appended row by row.
  std::string csv_path = (out / "loss.csv").string();
  write_loss_csv(csv_path, rows_);
  const int64_t end_step = stop_after_step > 0 ? std::min(stop_after_step, c.steps) : c.steps;
  const int64_t B = c.batch, T = c.seq, tokens_per_step = B * T * c.grad_accum;
  std::vector<Tensor> params = module().parameters();
  const uint64_t mask_seed = mix64(uint64_t(c.seed) ^ 0x6d61736bull);
  Tensor x = Tensor::empty({B, T}, DType::i32), y = Tensor::empty({B, T}, DType::i32);

  Progress progress("pretrain", c.steps, {.unit = "steps", .quiet = !options_.progress});
  progress.set(step_);
  using clock = std::chrono::steady_clock;
  auto row_start = clock::now();
  double row_loss_sum = 0;
  int64_t row_steps = 0, row_tokens = 0;
  double tokens_per_second = 0;

  while (step_ < end_step) {
    const int64_t step = step_ + 1;
    const double lr = learning_rate_at(c, step);
    optimizer_->set_lr(float(lr));
    optimizer_->zero_grad();
    double loss_sum = 0;
    for (int64_t micro = 0; micro < c.grad_accum; ++micro) {
      train_sampler_->next(x, y);
      // The masking of micro-batch k of step s is keyed by its global number: a resumed run
      // masks exactly as the uninterrupted one.
      Tensor loss = batch_loss(x, y, mask_seed, uint64_t((step - 1) * c.grad_accum + micro));
      float value = loss.to_vector()[0];
      if (!std::isfinite(value)) {
        throw Error(stopped_message("pretrain",
                                    detail::concat("the training loss became ", value, " at step ", step,
                                                   c.grad_accum > 1 ? " (micro-batch " + std::to_string(micro + 1) +
                                                                          " of " + std::to_string(c.grad_accum) + ")"
                                                                    : std::string()),
                                    "step", last_checkpoint_step_, checkpoint_dir(c.out)));
      }
      loss_sum += value;
      loss.backward();
    }
    // The gradients hold the sum over micro-batches; the step uses their mean.
    const float accum = float(c.grad_accum);
    const float norm = global_grad_norm(params) / accum;
    KOTOBA_CHECK(std::isfinite(norm), "pretrain: the gradient norm became ", norm, " at step ", step, "; stopped: ",
                 last_good_checkpoint("step", last_checkpoint_step_, checkpoint_dir(c.out)));
    const float clip_scale = c.clip > 0 ? clip_coefficient(norm, float(c.clip)) : 1.0f;
    optimizer_->step(clip_scale / accum);
    step_ = step;
    tokens_ += tokens_per_step;
    last_train_loss_ = loss_sum / double(c.grad_accum);
    row_loss_sum += last_train_loss_;
    row_steps += 1;
    row_tokens += tokens_per_step;

    const bool last = step == c.steps;
    const bool eval_now = val_data_ && (last || (c.eval_every > 0 && step % c.eval_every == 0));
    double val = std::nan("");
    if (eval_now) {
      val = last_val_loss_ = validation_loss();
      if (options_.log) {
        char line[160];
        std::snprintf(line, sizeof line, "step %lld/%lld  train loss %.4f  val loss %.4f  val perplexity %.2f",
                      (long long)step, (long long)c.steps, last_train_loss_, val, std::exp(val));
        options_.log(line);
      }
    }
    if (step % c.log_every == 0 || eval_now || last || step == end_step) {
      double seconds = std::chrono::duration<double>(clock::now() - row_start).count();
      tokens_per_second = seconds > 0 ? double(row_tokens) / seconds : 0;
      LossRow row{step, lr, row_loss_sum / double(row_steps), val, tokens_per_second};
      rows_.push_back(row);
      append_loss_csv(csv_path, row);
      row_start = clock::now();
      row_loss_sum = 0;
      row_steps = row_tokens = 0;
    }
    if (c.checkpoint_every > 0 && step % c.checkpoint_every == 0) save_checkpoint();
    if (eval_now) write_loss_files();

    char extra[160];
    std::snprintf(extra, sizeof extra, "loss %.4f  lr %.2e  %.0f tokens/s%s", last_train_loss_, lr,
                  tokens_per_second,
                  std::isfinite(last_val_loss_) ? ("  val " + std::to_string(last_val_loss_).substr(0, 6)).c_str() : "");
    progress.set_extra(extra);
    progress.set(step_);
  }
  progress.finish();

  PretrainResult result;
  result.step = step_;
  result.finished = step_ >= c.steps;
  result.train_loss = last_train_loss_;
  result.val_loss = last_val_loss_;
  result.val_perplexity = std::exp(last_val_loss_);
  result.tokens = tokens_;
  // A checkpoint at the stopping point, so the run can be continued (or extended with more --steps).
  if (last_checkpoint_step_ != step_ && (!result.finished || c.checkpoint_every > 0)) save_checkpoint();
  write_loss_files();
  if (result.finished) {
    GenerationConfig generation;
    int32_t eos = train_sampler_->dataset().eos_id();
    if (eos >= 0) generation.bos_token_id = generation.eos_token_id = eos;
    result.model_dir = (out / "model").string();
    // The model directory writers read the weights on the host; training is over.
    if (module().device() != Device::cpu) module().to(Device::cpu);
    if (bert_) save_bert_dir(result.model_dir, *bert_, c.tokenizer);
    else save_model_dir(result.model_dir, *model_, c.tokenizer, generation);
    if (options_.log) options_.log("model written to " + result.model_dir);
  }
  return result;
}

}  // namespace kotoba::train
