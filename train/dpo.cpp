// The DPO loss and loop (train/dpo.h). Determinism as in train/sft.cpp: the pair order of epoch e
// is a permutation drawn from (seed, e) and dropout is off (TRL's disable_dropout), so (epoch,
// position), the optimizer moments and the trainable weights are the whole state a resumed run
// needs. Precomputed reference log-probabilities are recomputed at start-up from the starting
// model, before a resumed run loads its trained weights, so they are the same numbers again.
#include "train/dpo.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>

#include "chat/chat_template.h"
#include "core/progress.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/packing.h"
#include "data/preference_data.h"
#include "io/model_dir.h"
#include "io/peft.h"
#include "nn/lora.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/logprobs.h"
#include "train/loss_log.h"
#include "train/optim.h"
#include "train/plot.h"
#include "train/sft.h"

namespace kotoba::train {

namespace fs = std::filesystem;

// ---- the loss ----

const char* dpo_loss_type_name(DpoLossType type) {
  switch (type) {
    case DpoLossType::sigmoid: return "sigmoid";
    case DpoLossType::ipo: return "ipo";
    case DpoLossType::hinge: return "hinge";
  }
  return "?";
}

DpoLossType parse_dpo_loss_type(const std::string& name) {
  if (name == "sigmoid") return DpoLossType::sigmoid;
  if (name == "ipo") return DpoLossType::ipo;
  if (name == "hinge") return DpoLossType::hinge;
  throw Error("dpo: unknown loss_type '" + name + "' (expected sigmoid, ipo or hinge)");
}

namespace {
double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }
}  // namespace

DpoLoss dpo_loss(const Tensor& policy_in, const std::vector<double>& reference, const std::vector<int64_t>& counts,
                 const DpoLossOptions& o) {
  KOTOBA_CHECK(policy_in.defined() && policy_in.ndim() == 1 && policy_in.size(0) % 2 == 0 && policy_in.size(0) > 0,
               "dpo_loss: the policy log-probabilities must be (2P): P chosen then P rejected, got ",
               policy_in.defined() ? shape_str(policy_in.shape()) : std::string("an undefined tensor"));
  const int64_t P = policy_in.size(0) / 2;
  KOTOBA_CHECK(int64_t(reference.size()) == 2 * P && int64_t(counts.size()) == 2 * P, "dpo_loss: ", 2 * P,
               " policy values but ", reference.size(), " reference values and ", counts.size(), " counts");
  KOTOBA_CHECK(o.beta > 0, "dpo_loss: beta must be positive, got ", o.beta);
  const std::vector<float> pv = policy_in.to_vector();
  // IPO compares average per-token log-probabilities (TRL divides by the reply's length).
  std::vector<double> per(size_t(2 * P), 1.0);
  if (o.loss_type == DpoLossType::ipo)
    for (int64_t i = 0; i < 2 * P; ++i) per[size_t(i)] = 1.0 / double(std::max<int64_t>(1, counts[size_t(i)]));
  DpoMetrics m;
  m.pairs = P;
  std::vector<double> dh(static_cast<size_t>(P));  // d loss_p / d h_p
  double total = 0;
  for (int64_t p = 0; p < P; ++p) {
    const size_t c = size_t(p), r = size_t(P + p);
    const double pc = pv[c] * per[c], pr = pv[r] * per[r], rc = reference[c] * per[c], rr = reference[r] * per[r];
    const double h = (pc - pr) - (rc - rr);
    double loss = 0, d = 0;
    switch (o.loss_type) {
      case DpoLossType::sigmoid:
        loss = -(1 - o.label_smoothing) * log_sigmoid(o.beta * h) - o.label_smoothing * log_sigmoid(-o.beta * h);
        d = -(1 - o.label_smoothing) * o.beta * sigmoid(-o.beta * h) + o.label_smoothing * o.beta * sigmoid(o.beta * h);
        break;
      case DpoLossType::ipo: {
        const double e = h - 1.0 / (2.0 * o.beta);
        loss = e * e;
        d = 2 * e;
        break;
      }
      case DpoLossType::hinge:
        loss = std::max(0.0, 1.0 - o.beta * h);
        d = 1.0 - o.beta * h > 0 ? -o.beta : 0.0;
        break;
    }
    total += loss;
    dh[size_t(p)] = d / double(P);
    const double chosen = o.beta * (pc - rc), rejected = o.beta * (pr - rr);
    m.rewards_chosen += chosen / double(P);
    m.rewards_rejected += rejected / double(P);
    m.accuracy += (chosen > rejected ? 1.0 : 0.0) / double(P);
    m.margin += (chosen - rejected) / double(P);
  }
  // RPO: the chosen replies' negative log-likelihood per token (raw sums, also under IPO).
  double chosen_logp = 0, chosen_tokens = 0;
  for (int64_t p = 0; p < P; ++p) {
    chosen_logp += pv[size_t(p)];
    chosen_tokens += double(counts[size_t(p)]);
  }
  m.nll = chosen_tokens > 0 ? -chosen_logp / chosen_tokens : 0.0;
  const double rpo_grad = o.rpo_alpha != 0 && chosen_tokens > 0 ? -o.rpo_alpha / chosen_tokens : 0.0;
  m.loss = total / double(P) + o.rpo_alpha * m.nll;
  Tensor out = Tensor::full({}, float(m.loss), DType::f32, policy_in.device());
  auto meta = policy_in.autograd_meta();
  const Device device = policy_in.device();
  // h = pc * per_c - pr * per_r - ...: d loss / d pc = dh * per_c, d loss / d pr = -dh * per_r.
  Tensor loss = record("dpo_loss", out, {&policy_in}, [meta, dh, per, P, device, rpo_grad](const Tensor& grad_out) {
    GradTarget target = grad_target(meta, {2 * P}, DType::f32, device);
    if (!target) return;
    const double up = grad_out.to_vector()[0];
    std::vector<float> g(size_t(2 * P));
    for (int64_t p = 0; p < P; ++p) {
      g[size_t(p)] = float(up * (dh[size_t(p)] * per[size_t(p)] + rpo_grad));
      g[size_t(P + p)] = float(-up * dh[size_t(p)] * per[size_t(P + p)]);
    }
    if (target.accumulate) {
      const std::vector<float> old = target.tensor.to_vector();
      for (size_t i = 0; i < g.size(); ++i) g[i] += old[i];
    }
    target.tensor.copy_from(Tensor::from_vector(g, {2 * P}));
  });
  return {loss, m};
}

// ---- config ----

std::span<const ConfigField<DpoConfig>> dpo_config_fields() {
  using C = DpoConfig;
  static const ConfigField<C> fields[] = {
      {"model", &C::model, "model directory to train (usually an SFT result: config.json, safetensors, tokenizer)", true},
      {"data", &C::data, "preference pairs: JSONL/JSON of prompt/chosen/rejected, response_1/2 + preference, or ranked",
       true},
      {"format", &C::format, "data shape: auto, pairs, choice or ranked", true},
      {"val_data", &C::val_data, "validation pairs (empty: hold out val_fraction of data)", true},
      {"val_fraction", &C::val_fraction, "share of data held out for validation when val_data is empty", true},
      {"chat_template", &C::chat_template, "chatml, llama2, alpaca or plain; auto: the model's, else alpaca", true},
      {"beta", &C::beta, "DPO beta: the strength of the pull towards the reference (TRL's default 0.1)", true},
      {"loss_type", &C::loss_type, "sigmoid (DPO), ipo or hinge", true},
      {"label_smoothing", &C::label_smoothing, "sigmoid loss: assumed share of flipped preferences, in [0, 0.5)", true},
      {"rpo_alpha", &C::rpo_alpha, "weight of the chosen replies' NLL per token added to the loss (RPO; 0: off)", true},
      {"precompute_ref", &C::precompute_ref,
       "1: reference log-probabilities computed once before training; 0: on the fly each batch", true},
      {"max_length", &C::max_length, "tokens of prompt + reply (longer ones are cut)", true},
      {"batch", &C::batch, "pairs per micro-batch", true},
      {"grad_accum", &C::grad_accum, "micro-batches per optimizer step", true},
      {"epochs", &C::epochs, "passes over the pairs (when steps is 0)", false},
      {"steps", &C::steps, "optimizer steps (0: from epochs)", false},
      {"lr", &C::lr, "peak learning rate (0: 1e-6 full as TRL's DPOConfig, 1e-5 LoRA)", true},
      {"min_lr", &C::min_lr, "learning rate at the last step (cosine decay)", true},
      {"warmup", &C::warmup, "linear warm-up steps", true},
      {"weight_decay", &C::weight_decay, "AdamW decoupled weight decay (matrices only)", true},
      {"beta1", &C::beta1, "AdamW beta1", true},
      {"beta2", &C::beta2, "AdamW beta2", true},
      {"eps", &C::eps, "AdamW epsilon", true},
      {"clip", &C::clip, "global gradient-norm clipping (0: off)", true},
      {"lora_r", &C::lora_r, "LoRA rank (0: full training); the reference is then the base, adapters off", true},
      {"lora_alpha", &C::lora_alpha, "LoRA alpha (scaling alpha / r)", true},
      {"lora_targets", &C::lora_targets,
       "layers to adapt: names (c_attn or q_proj,v_proj), a regex, or all-linear (empty: PEFT's default)", true},
      {"merge", &C::merge, "LoRA: also write OUT/model with the adapter merged in", false},
      {"eval_every", &C::eval_every, "steps between validation passes (0: each epoch's end)", false},
      {"checkpoint_every", &C::checkpoint_every, "steps between checkpoints (0: none)", false},
      {"log_every", &C::log_every, "steps between loss.csv rows", false},
      {"seed", &C::seed, "seed of the pair order, the split and LoRA init", true},
      {"threads", &C::threads, "CPU threads (0: all cores)", false},
      {"device", &C::device, "where the model trains: cpu or cuda", false},
      {"precision", &C::precision, "compute dtype of the matrix products: f32, or bf16 (mixed precision, f32 master weights)", false},
      {"out", &C::out, "output directory", false},
  };
  return fields;
}

void validate_dpo_config(const DpoConfig& c) {
  parse_device(c.device, "dpo config: 'device'");
  parse_precision(c.precision, "dpo config: 'precision'");
  auto positive = [](int64_t v, const char* name) {
    KOTOBA_CHECK(v > 0, "dpo config: '", name, "' must be positive, got ", v);
  };
  auto non_negative = [](double v, const char* name) {
    KOTOBA_CHECK(v >= 0, "dpo config: '", name, "' must not be negative, got ", v);
  };
  KOTOBA_CHECK(!c.model.empty(), "dpo config: 'model' (the model directory to train) is required");
  KOTOBA_CHECK(c.val_fraction >= 0 && c.val_fraction < 1, "dpo config: 'val_fraction' must be in [0, 1), got ",
               c.val_fraction);
  KOTOBA_CHECK(c.beta > 0 && std::isfinite(c.beta), "dpo config: 'beta' must be positive, got ", c.beta);
  parse_dpo_loss_type(c.loss_type);
  KOTOBA_CHECK(c.label_smoothing >= 0 && c.label_smoothing < 0.5, "dpo config: 'label_smoothing' must be in [0, 0.5), got ",
               c.label_smoothing);
  KOTOBA_CHECK(c.label_smoothing == 0 || c.loss_type == "sigmoid",
               "dpo config: 'label_smoothing' applies to loss_type sigmoid only");
  KOTOBA_CHECK(c.rpo_alpha >= 0 && std::isfinite(c.rpo_alpha), "dpo config: 'rpo_alpha' must not be negative, got ",
               c.rpo_alpha);
  KOTOBA_CHECK(c.precompute_ref == 0 || c.precompute_ref == 1, "dpo config: 'precompute_ref' must be 0 or 1, got ",
               c.precompute_ref);
  positive(c.max_length, "max_length");
  positive(c.batch, "batch");
  positive(c.grad_accum, "grad_accum");
  positive(c.log_every, "log_every");
  KOTOBA_CHECK(c.merge == 0 || c.merge == 1, "dpo config: 'merge' must be 0 or 1, got ", c.merge);
  KOTOBA_CHECK(c.steps > 0 || c.epochs > 0, "dpo config: give 'steps' or a positive 'epochs'");
  non_negative(c.epochs, "epochs");
  non_negative(double(c.steps), "steps");
  validate_optimizer_config(c, "dpo");
  validate_lora_config(c, "dpo");
  KOTOBA_CHECK(c.lora_r > 0 || (c.lora_targets.empty() && c.merge == 0),
               "dpo config: 'lora_targets' and 'merge' apply with LoRA (set 'lora_r')");
  validate_run_config(c, "dpo");
  KOTOBA_CHECK(!c.out.empty(), "dpo config: 'out' (the output directory) is required");
}

// ---- the trainer's state ----

namespace {

struct TokenPair {
  data::PackingExample chosen, rejected;
};

constexpr CheckpointKind kCheckpoint{"kotoba-dpo-checkpoint", "DPO", 1};
constexpr const char* kMetricsHeader =
    "step,loss,rewards_chosen,rewards_rejected,accuracy,margin,val_loss,val_rewards_chosen,val_rewards_rejected,"
    "val_accuracy,val_margin\n";

struct MetricsRow {
  int64_t step = 0;
  DpoMetrics train, val;  // val.pairs 0: no validation at this step
};

std::string metrics_line(const MetricsRow& r) {
  const bool v = r.val.pairs > 0;
  const double nan = std::nan("");
  const double values[] = {r.train.loss,
                           r.train.rewards_chosen,
                           r.train.rewards_rejected,
                           r.train.accuracy,
                           r.train.margin,
                           v ? r.val.loss : nan,
                           v ? r.val.rewards_chosen : nan,
                           v ? r.val.rewards_rejected : nan,
                           v ? r.val.accuracy : nan,
                           v ? r.val.margin : nan};
  return csv_line(r.step, values);
}

std::vector<MetricsRow> read_metrics_csv(const std::string& path, int64_t up_to_step) {
  std::vector<MetricsRow> rows;
  for (const CsvRow& c : read_csv_rows(path, 11, up_to_step)) {
    auto metrics = [&](size_t at) {
      DpoMetrics m;
      m.loss = c.values[at];
      m.rewards_chosen = c.values[at + 1];
      m.rewards_rejected = c.values[at + 2];
      m.accuracy = c.values[at + 3];
      m.margin = c.values[at + 4];
      m.pairs = 1;
      return m;
    };
    MetricsRow r;
    r.step = c.step;
    r.train = metrics(0);
    if (!std::isnan(c.values[5])) r.val = metrics(5);  // an empty val_loss: no validation at this step
    rows.push_back(r);
  }
  return rows;
}

// Running pair-weighted means of metrics.
struct MetricsSum {
  DpoMetrics sum;
  void add(const DpoMetrics& m) {
    const double w = double(m.pairs);
    sum.loss += m.loss * w;
    sum.nll += m.nll * w;
    sum.rewards_chosen += m.rewards_chosen * w;
    sum.rewards_rejected += m.rewards_rejected * w;
    sum.accuracy += m.accuracy * w;
    sum.margin += m.margin * w;
    sum.pairs += m.pairs;
  }
  DpoMetrics mean() const {
    DpoMetrics m = sum;
    const double w = sum.pairs > 0 ? 1.0 / double(sum.pairs) : std::nan("");
    m.loss *= w;
    m.nll *= w;
    m.rewards_chosen *= w;
    m.rewards_rejected *= w;
    m.accuracy *= w;
    m.margin *= w;
    return m;
  }
};

}  // namespace

struct DpoTrainer::State {
  LoadedModel loaded;
  LoadedModel reference;  // full training with precompute_ref 0: a frozen copy of the start
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::optional<chat::ChatTemplate> chat_template;
  std::optional<nn::LoraConfig> lora;
  DpoLossOptions loss;
  std::vector<TokenPair> train, val;
  std::vector<double> train_ref, val_ref;  // precomputed: per pair, chosen then rejected (2 per pair)
  int32_t pad_id = 0;
  double lr = 0;
  std::unique_ptr<AdamW> optimizer;
  std::vector<Tensor> trainable;
  int64_t truncated = 0, dropped = 0;

  int64_t epoch = -1;
  std::vector<size_t> order;
  int64_t position = 0;

  int64_t step = 0, last_checkpoint_step = 0;
  bool resumed = false;
  DpoMetrics last_train, last_val;
  std::vector<LossRow> rows;
  std::vector<MetricsRow> metric_rows;
};

namespace {

// The micro-batch of pairs `picked` of `pairs`: 2P rows, the chosen replies then the rejected.
SftBatch pair_batch(const std::vector<TokenPair>& pairs, std::span<const size_t> picked, int32_t pad_id) {
  std::vector<const data::PackingExample*> rows;
  for (size_t i : picked) rows.push_back(&pairs[i].chosen);
  for (size_t i : picked) rows.push_back(&pairs[i].rejected);
  return make_sft_batch(rows, pad_id);
}

std::vector<double> to_doubles(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return std::vector<double>(v.begin(), v.end());
}

}  // namespace

DpoTrainer::DpoTrainer(DpoConfig config, DpoOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_dpo_config(config_);
  KOTOBA_CHECK(!config_.data.empty(), "dpo config: 'data' (the preference pairs) is required");
  config_.data = fs::absolute(config_.data).lexically_normal().string();
  if (!config_.val_data.empty()) config_.val_data = fs::absolute(config_.val_data).lexically_normal().string();
  std::vector<data::PreferencePair> train = data::read_preference_dataset(config_.data, config_.format);
  std::vector<data::PreferencePair> val;
  if (!config_.val_data.empty()) val = data::read_preference_dataset(config_.val_data, config_.format);
  setup(std::move(train), std::move(val));
}

DpoTrainer::DpoTrainer(DpoConfig config, std::vector<data::PreferencePair> train, std::vector<data::PreferencePair> val,
                       DpoOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_dpo_config(config_);
  setup(std::move(train), std::move(val));
}

void DpoTrainer::setup(std::vector<data::PreferencePair> train_pairs, std::vector<data::PreferencePair> val_pairs) {
  config_.model = fs::absolute(config_.model).lexically_normal().string();
  State& s = *state_;
  s.loss = {config_.beta, parse_dpo_loss_type(config_.loss_type), config_.label_smoothing, config_.rpo_alpha};
  s.loaded = load_model_dir(config_.model);
  s.tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load_dir(s.loaded.dir));
  KOTOBA_CHECK(s.tok->vocab_size() <= s.loaded.model->vocab_size(), "dpo: the tokenizer of ", config_.model, " has ",
               s.tok->vocab_size(), " tokens but the model only ", s.loaded.model->vocab_size(), " rows");
  s.chat_template.emplace(resolve_chat_template(config_.chat_template, s.loaded.dir, *s.tok, s.loaded.generation));
  s.pad_id = s.tok->pad_id().value_or(s.tok->eos_id().value_or(0));
  KOTOBA_CHECK(config_.max_length <= s.loaded.model->max_positions(), "dpo config: 'max_length' (",
               config_.max_length, ") exceeds the model's context (", s.loaded.model->max_positions(), " positions)");

  // Split and tokenise.
  if (val_pairs.empty() && config_.val_fraction > 0) {
    const size_t n_val = size_t(std::floor(double(train_pairs.size()) * config_.val_fraction));
    std::vector<size_t> order = permutation(train_pairs.size(), mix64(uint64_t(config_.seed) ^ 0x5a11d5eedull));
    std::vector<bool> is_val(train_pairs.size(), false);
    for (size_t i = 0; i < n_val; ++i) is_val[order[i]] = true;
    std::vector<data::PreferencePair> kept;
    for (size_t i = 0; i < train_pairs.size(); ++i)
      (is_val[i] ? val_pairs : kept).push_back(std::move(train_pairs[i]));
    train_pairs = std::move(kept);
  }
  auto tokenize = [&](const std::vector<data::PreferencePair>& pairs, std::vector<TokenPair>& out) {
    for (const auto& p : pairs) {
      KOTOBA_CHECK(!p.chosen.empty() || !p.rejected.empty(), "dpo: ", p.where.empty() ? std::string("a pair") : p.where,
                   " has no chosen and rejected replies (a prompts-only data set cannot train DPO)");
      data::SftTokens c = tokenize_for_training(data::preference_example(p, p.chosen), *s.chat_template, *s.tok,
                                                config_.max_length);
      data::SftTokens r = tokenize_for_training(data::preference_example(p, p.rejected), *s.chat_template, *s.tok,
                                                config_.max_length);
      s.truncated += c.truncated || r.truncated;
      auto has_target = [](const data::SftTokens& t) {
        return std::any_of(t.labels.begin() + (t.labels.empty() ? 0 : 1), t.labels.end(),
                           [](int32_t l) { return l != data::kIgnoreLabel; });
      };
      if (!has_target(c) || !has_target(r)) {
        ++s.dropped;
        continue;
      }
      for (const auto* t : {&c, &r})
        for (int32_t id : t->ids)
          KOTOBA_CHECK(id < s.loaded.model->vocab_size(), "dpo: token id ", id, " (", p.where,
                       ") is outside the model's vocabulary (", s.loaded.model->vocab_size(), ")");
      out.push_back({{std::move(c.ids), std::move(c.labels)}, {std::move(r.ids), std::move(r.labels)}});
    }
  };
  tokenize(train_pairs, s.train);
  tokenize(val_pairs, s.val);
  KOTOBA_CHECK(!s.train.empty(), "dpo: ", config_.data.empty() ? std::string("the data") : config_.data,
               " leaves no training pair",
               train_pairs.empty() ? std::string(" (every pair went to validation: lower --val-fraction)")
                                   : detail::concat(" (", s.dropped, " pairs kept no reply token within max_length ",
                                                    config_.max_length, ": raise --max-length)"));
  if (s.dropped > 0 && options_.log)
    options_.log(detail::concat("warning: ", s.dropped, " pairs were left out: cut at max_length ", config_.max_length,
                                " a reply kept no token"));

  // Model: LoRA or full; dropout off (TRL's disable_dropout), so the policy runs in eval mode.
  nn::CausalLM& model = *s.loaded.model;
  if (config_.lora_r > 0) {
    s.lora = lora_config_from_settings(config_.lora_r, config_.lora_alpha, 0.0, config_.lora_targets,
                                       model.model_type(), "dpo");
    nn::apply_lora(model, *s.lora, mix64(uint64_t(config_.seed) ^ 0x10a1a17ull));
  } else {
    model.set_requires_grad(true);
    if (!config_.precompute_ref) {
      s.reference = load_model_dir(config_.model);
      s.reference.model->set_requires_grad(false);
      s.reference.model->eval();
    }
  }
  model.eval();
  // Before the reference pass and the optimizer (whose moments are made beside the parameters).
  if (const Device device = parse_device(config_.device, "dpo config: 'device'"); device != Device::cpu) {
    model.to(device);
    if (s.reference.model) s.reference.model->to(device);
  }

  // Reference log-probabilities of every pair, from the starting model (adapters off), in the
  // precision the policy trains in, so the two agree exactly at step 0.
  AutocastScope autocast(parse_precision(config_.precision, "dpo config: 'precision'"));
  if (config_.precompute_ref) {
    NoGradGuard no_grad;
    nn::LoraDisabled off(model);
    auto precompute = [&](const std::vector<TokenPair>& pairs, std::vector<double>& out) {
      out.assign(2 * pairs.size(), 0.0);
      for (size_t begin = 0; begin < pairs.size(); begin += size_t(config_.batch)) {
        std::vector<size_t> picked;
        for (size_t i = begin; i < std::min(pairs.size(), begin + size_t(config_.batch)); ++i) picked.push_back(i);
        SftBatch b = pair_batch(pairs, picked, s.pad_id);
        std::vector<double> v = to_doubles(sequence_logprobs(model, b.ids, b.targets).sums);
        for (size_t k = 0; k < picked.size(); ++k) {
          out[2 * picked[k]] = v[k];
          out[2 * picked[k] + 1] = v[picked.size() + k];
        }
      }
    };
    precompute(s.train, s.train_ref);
    precompute(s.val, s.val_ref);
  }

  s.lr = config_.lr > 0 ? config_.lr : (config_.lora_r > 0 ? 1e-5 : 1e-6);
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) trainable.emplace_back(name, p);
  for (auto& [name, p] : trainable) s.trainable.push_back(p);
  s.optimizer = std::make_unique<AdamW>(trainable, AdamWConfig{.lr = float(s.lr), .beta1 = float(config_.beta1),
                                                               .beta2 = float(config_.beta2), .eps = float(config_.eps),
                                                               .weight_decay = float(config_.weight_decay)});
  const int64_t per_step = config_.batch * config_.grad_accum;
  total_steps_ = config_.steps > 0 ? config_.steps
                                   : std::max<int64_t>(1, int64_t(std::ceil(config_.epochs * double(s.train.size()) /
                                                                             double(per_step))));
}

DpoTrainer::~DpoTrainer() = default;

nn::CausalLM& DpoTrainer::model() { return *state_->loaded.model; }
const tokenizer::Tokenizer& DpoTrainer::tokenizer() const { return *state_->tok; }
const chat::ChatTemplate& DpoTrainer::chat_template() const { return *state_->chat_template; }
std::string DpoTrainer::trainable_parameters_report() const {
  return nn::trainable_parameters_report(*state_->loaded.model);
}

std::vector<size_t> DpoTrainer::next_train_pairs() {
  State& s = *state_;
  if (s.epoch < 0 || s.position >= int64_t(s.order.size())) {
    s.epoch += 1;
    s.position = 0;
    s.order = permutation(s.train.size(), mix64(uint64_t(config_.seed) + uint64_t(s.epoch)));
  }
  const int64_t begin = s.position, end = std::min(int64_t(s.order.size()), s.position + config_.batch);
  s.position = end;
  return std::vector<size_t>(s.order.begin() + begin, s.order.begin() + end);
}

DpoMetrics DpoTrainer::validate() {
  State& s = *state_;
  MetricsSum sum;
  if (s.val.empty()) return sum.mean();
  NoGradGuard no_grad;
  nn::CausalLM& model = *s.loaded.model;
  for (size_t begin = 0; begin < s.val.size(); begin += size_t(config_.batch)) {
    std::vector<size_t> picked;
    for (size_t i = begin; i < std::min(s.val.size(), begin + size_t(config_.batch)); ++i) picked.push_back(i);
    SftBatch b = pair_batch(s.val, picked, s.pad_id);
    std::vector<double> ref = reference_logps(b, picked, /*val=*/true);
    SequenceLogprobs lp = sequence_logprobs(model, b.ids, b.targets);
    sum.add(dpo_loss(lp.sums, ref, lp.counts, s.loss).metrics);
  }
  return sum.mean();
}

// The reference log-probabilities of a micro-batch: precomputed, or computed now (the frozen copy,
// or the policy with its adapters off).
std::vector<double> DpoTrainer::reference_logps(const SftBatch& b, std::span<const size_t> picked, bool val) {
  State& s = *state_;
  const std::vector<double>& precomputed = val ? s.val_ref : s.train_ref;
  const size_t P = picked.size();
  std::vector<double> out(2 * P);
  if (config_.precompute_ref) {
    for (size_t k = 0; k < P; ++k) {
      out[k] = precomputed[2 * picked[k]];
      out[P + k] = precomputed[2 * picked[k] + 1];
    }
    return out;
  }
  NoGradGuard no_grad;
  if (s.reference.model) return to_doubles(sequence_logprobs(*s.reference.model, b.ids, b.targets).sums);
  nn::LoraDisabled off(*s.loaded.model);
  return to_doubles(sequence_logprobs(*s.loaded.model, b.ids, b.targets).sums);
}

// ---- checkpoints ----

void DpoTrainer::save_checkpoint() {
  State& s = *state_;
  save_trainer_checkpoint(checkpoint_dir(config_.out), *s.optimizer, kCheckpoint,
                          {{"step", s.step},
                           {"total_steps", total_steps_},
                           {"epoch", s.epoch},
                           {"position", s.position},
                           {"train_loss", json_number(s.last_train.loss)},
                           {"train_accuracy", json_number(s.last_train.accuracy)},
                           {"train_margin", json_number(s.last_train.margin)},
                           {"config", config_to_json(config_, dpo_config_fields())}});
  s.last_checkpoint_step = s.step;
}

DpoConfig DpoTrainer::read_checkpoint_config(const std::string& out_dir) {
  return read_trainer_checkpoint_config(TrainerState(out_dir, kCheckpoint), dpo_config_fields());
}

void DpoTrainer::resume() {
  State& s = *state_;
  const TrainerState state = read_resumable_trainer_state(config_, kCheckpoint, dpo_config_fields());
  const std::string& state_path = state.path();
  const int64_t step = state.integer("step");
  KOTOBA_CHECK(step >= 0 && step <= total_steps_, state_path, ": step ", step, " is beyond the run's ", total_steps_,
               " steps");
  restore_trainer_checkpoint(state, *s.optimizer);
  s.step = step;
  const int64_t epoch = state.integer("epoch"), position = state.integer("position");
  if (epoch >= 0) {
    s.epoch = epoch;
    s.order = permutation(s.train.size(), mix64(uint64_t(config_.seed) + uint64_t(epoch)));
    KOTOBA_CHECK(position >= 0 && position <= int64_t(s.order.size()), state_path, ": position ", position,
                 " is outside epoch ", epoch, " (", s.order.size(), " pairs)");
    s.position = position;
  }
  s.last_train.loss = state.optional_number("train_loss");
  s.last_train.accuracy = state.optional_number("train_accuracy");
  s.last_train.margin = state.optional_number("train_margin");
  s.last_checkpoint_step = step;
  s.resumed = true;
  s.rows = read_loss_csv((fs::path(config_.out) / "loss.csv").string(), step);
  s.metric_rows = read_metrics_csv((fs::path(config_.out) / "metrics.csv").string(), step);
  if (options_.log)
    options_.log("resumed from " + state.dir() + " at step " + std::to_string(step) + " of " +
                 std::to_string(total_steps_));
}

// ---- the loop ----

DpoResult DpoTrainer::run(int64_t stop_after_step) {
  State& s = *state_;
  const DpoConfig& c = config_;
  AutocastScope autocast(parse_precision(c.precision, "dpo config: 'precision'"));
  fs::path out(c.out);
  prepare_output_dir("dpo", c.out, s.resumed);
  const std::string csv_path = (out / "loss.csv").string(), metrics_path = (out / "metrics.csv").string();
  write_loss_csv(csv_path, s.rows);
  write_csv_file(metrics_path, kMetricsHeader, s.metric_rows, metrics_line);
  auto write_plots = [&]() {
    write_loss_plot((out / "loss.png").string(), s.rows, "DPO loss");
    Series acc{"reward accuracy", {}, {}}, margin{"reward margin", {}, {}}, val_acc{"validation accuracy", {}, {}},
        val_margin{"validation margin", {}, {}};
    for (const auto& r : s.metric_rows) {
      acc.x.push_back(double(r.step));
      acc.y.push_back(r.train.accuracy);
      margin.x.push_back(double(r.step));
      margin.y.push_back(r.train.margin);
      if (r.val.pairs > 0) {
        val_acc.x.push_back(double(r.step));
        val_acc.y.push_back(r.val.accuracy);
        val_margin.x.push_back(double(r.step));
        val_margin.y.push_back(r.val.margin);
      }
    }
    if (!s.metric_rows.empty())
      write_line_plot((out / "rewards.png").string(), {acc, margin, val_acc, val_margin},
                      "DPO rewards (beta (log pi - log pi_ref))", "step", "accuracy / margin");
  };
  const int64_t end_step = stop_after_step > 0 ? std::min(stop_after_step, total_steps_) : total_steps_;
  nn::CausalLM& model = *s.loaded.model;
  // The chosen replies' per-token negative log-likelihood above this is divergence, not learning
  // (a model that spreads its bets evenly scores ln V).
  const double explode_nll = 4.0 * std::log(double(model.vocab_size()));
  auto stopped = [&](const std::string& what) {
    throw Error(stopped_message("dpo", what, "step", s.last_checkpoint_step, checkpoint_dir(c.out)));
  };

  SftConfig schedule;  // the SFT loop's warm-up and cosine decay
  schedule.warmup = c.warmup;
  schedule.min_lr = c.min_lr;
  Progress progress("dpo", total_steps_, {.unit = "steps", .quiet = !options_.progress});
  progress.set(s.step);
  using clock = std::chrono::steady_clock;
  auto row_start = clock::now();
  MetricsSum row_metrics;
  int64_t row_tokens = 0;
  int64_t epoch_seen = s.epoch;

  while (s.step < end_step) {
    const int64_t step = s.step + 1;
    const double lr = sft_learning_rate(schedule, s.lr, step, total_steps_);
    s.optimizer->set_lr(float(lr));
    s.optimizer->zero_grad();
    std::vector<std::vector<size_t>> micro;
    int64_t step_pairs = 0;
    for (int64_t m = 0; m < c.grad_accum; ++m) {
      micro.push_back(next_train_pairs());
      step_pairs += int64_t(micro.back().size());
    }
    MetricsSum step_metrics;
    for (const auto& picked : micro) {
      if (picked.empty()) continue;
      SftBatch b = pair_batch(s.train, picked, s.pad_id);
      std::vector<double> ref = reference_logps(b, picked, /*val=*/false);
      SequenceLogprobs lp = sequence_logprobs(model, b.ids, b.targets);
      DpoLoss loss = dpo_loss(lp.sums, ref, lp.counts, s.loss);
      if (!std::isfinite(loss.metrics.loss))
        stopped(detail::concat("the training loss became ", loss.metrics.loss, " at step ", step));
      const double nll = loss.metrics.nll;  // the chosen replies' negative log-likelihood per token
      if (!(nll <= explode_nll))
        stopped(detail::concat("the policy's loss exploded at step ", step, ": the chosen replies' negative ",
                               "log-likelihood reached ", nll, " per token (more than 4 ln V = ", explode_nll, ")"));
      step_metrics.add(loss.metrics);
      row_tokens += b.ids.numel();
      scale(loss.loss, float(double(picked.size()) / double(step_pairs))).backward();
    }
    const float norm = global_grad_norm(s.trainable);
    if (!std::isfinite(norm)) stopped(detail::concat("the gradient norm became ", norm, " at step ", step));
    s.optimizer->step(c.clip > 0 ? clip_coefficient(norm, float(c.clip)) : 1.0f);
    s.step = step;
    s.last_train = step_metrics.mean();
    row_metrics.add(s.last_train);

    const bool last = step == total_steps_;
    const bool epoch_ended = s.position >= int64_t(s.order.size()) && s.epoch >= epoch_seen;
    if (epoch_ended) epoch_seen = s.epoch + 1;
    const bool eval_now = !s.val.empty() && (last || (c.eval_every > 0 ? step % c.eval_every == 0 : epoch_ended));
    DpoMetrics val;
    if (eval_now) {
      val = s.last_val = validate();
      if (options_.log) {
        char line[200];
        std::snprintf(line, sizeof line,
                      "step %lld/%lld  train loss %.4f  val loss %.4f  val reward accuracy %.3f  margin %.4f",
                      (long long)step, (long long)total_steps_, s.last_train.loss, val.loss, val.accuracy, val.margin);
        options_.log(line);
      }
    }
    if (step % c.log_every == 0 || eval_now || last || step == end_step) {
      const double seconds = std::chrono::duration<double>(clock::now() - row_start).count();
      const DpoMetrics mean = row_metrics.mean();
      LossRow row{step, lr, mean.loss, eval_now ? val.loss : std::nan(""), seconds > 0 ? double(row_tokens) / seconds : 0};
      s.rows.push_back(row);
      append_loss_csv(csv_path, row);
      MetricsRow mrow{step, mean, eval_now ? val : DpoMetrics{}};
      s.metric_rows.push_back(mrow);
      append_csv_line(metrics_path, metrics_line(mrow));
      row_start = clock::now();
      row_metrics = {};
      row_tokens = 0;
    }
    if (c.checkpoint_every > 0 && step % c.checkpoint_every == 0) save_checkpoint();
    if (eval_now) write_plots();
    char extra[160];
    std::snprintf(extra, sizeof extra, "loss %.4f  acc %.2f  margin %.3f  lr %.2e  epoch %lld", s.last_train.loss,
                  s.last_train.accuracy, s.last_train.margin, lr, (long long)s.epoch + 1);
    progress.set_extra(extra);
    progress.set(s.step);
  }
  progress.finish();

  DpoResult result;
  result.step = s.step;
  result.total_steps = total_steps_;
  result.finished = s.step >= total_steps_;
  result.train = s.last_train;
  result.val = s.last_val;
  result.train_pairs = int64_t(s.train.size());
  result.val_pairs = int64_t(s.val.size());
  result.dropped_pairs = s.dropped;
  result.truncated_pairs = s.truncated;
  if (s.last_checkpoint_step != s.step && (!result.finished || c.checkpoint_every > 0)) save_checkpoint();
  write_plots();
  if (result.finished) {
    const FinetunedOutputs written = save_finetuned_outputs(out.string(), model, s.lora, c.merge != 0, *s.tok,
                                                            s.loaded.generation, *s.chat_template, c.model, options_.log);
    result.adapter_dir = written.adapter_dir;
    result.model_dir = written.model_dir;
  }
  return result;
}

std::string DpoTrainer::checkpoint_dir(const std::string& out_dir) { return trainer_checkpoint_dir(out_dir); }

}  // namespace kotoba::train
