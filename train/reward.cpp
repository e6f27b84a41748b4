// The reward-model loop (train/reward.h). Determinism as in SFT: the pair order of epoch e is a
// permutation drawn from (seed, e), the score head comes from the seed and dropout is
// counter-based; (epoch, position), the optimizer moments and the weights are the whole state a
// resumed run needs. The pairwise loss is computed on the host in double from the rewards, and
// its gradient with respect to them seeds the backward pass through the model.
#include "train/reward.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/progress.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/preference_data.h"
#include "io/model_dir.h"
#include "io/reward_model_dir.h"
#include "nn/lora.h"
#include "nn/reward_model.h"
#include "ops/autograd.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/loss_log.h"
#include "train/optim.h"
#include "train/sft.h"

namespace kotoba::train {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config ----

std::span<const ConfigField<RewardConfig>> reward_config_fields() {
  using C = RewardConfig;
  static const ConfigField<C> fields[] = {
      {"model", &C::model, "causal-LM directory (a score head is added) or reward-model directory to train", true},
      {"data", &C::data, "preference data: prompt/chosen/rejected, prompt/response_1/response_2/preference, or ranked",
       true},
      {"format", &C::format, "data shape: auto, pairs, choice or ranked", true},
      {"val_data", &C::val_data, "validation pairs (empty: hold out val_fraction of data)", true},
      {"val_fraction", &C::val_fraction, "share of pairs held out for validation when val_data is empty", true},
      {"chat_template", &C::chat_template, "chatml, llama2, alpaca or plain; auto: the model's, else alpaca", true},
      {"max_length", &C::max_length,
       "tokens per sequence, prompt and reply; longer ones are cut, and counted (0: 1024, or the model's context)", true},
      {"batch", &C::batch, "pairs per micro-batch (chosen and rejected rows run as one batch)", true},
      {"grad_accum", &C::grad_accum, "micro-batches per optimizer step", true},
      {"epochs", &C::epochs, "passes over the training pairs (when steps is 0)", false},
      {"steps", &C::steps, "optimizer steps (0: from epochs)", false},
      {"lr", &C::lr, "peak learning rate", true},
      {"min_lr", &C::min_lr, "learning rate at the last step (cosine decay)", true},
      {"warmup", &C::warmup, "linear warm-up steps", true},
      {"weight_decay", &C::weight_decay, "AdamW decoupled weight decay (matrices only)", true},
      {"beta1", &C::beta1, "AdamW beta1", true},
      {"beta2", &C::beta2, "AdamW beta2", true},
      {"eps", &C::eps, "AdamW epsilon", true},
      {"clip", &C::clip, "global gradient-norm clipping (0: off)", true},
      {"center_rewards_coefficient", &C::center_rewards_coefficient,
       "weight of mean((r_chosen + r_rejected)^2), which keeps rewards centred on 0 (0: off)", true},
      {"disable_dropout", &C::disable_dropout, "1: train without dropout", true},
      {"lora_r", &C::lora_r, "LoRA rank (0: full fine-tuning); the score head is trained in full", true},
      {"lora_alpha", &C::lora_alpha, "LoRA alpha (scaling alpha / r)", true},
      {"lora_dropout", &C::lora_dropout, "dropout on the adapters' input", true},
      {"lora_targets", &C::lora_targets,
       "layers to adapt: names (c_attn or q_proj,v_proj), a regex, or all-linear (empty: PEFT's default)", true},
      {"eval_every", &C::eval_every, "steps between validation passes (0: each epoch's end)", false},
      {"checkpoint_every", &C::checkpoint_every, "steps between checkpoints (0: none)", false},
      {"log_every", &C::log_every, "steps between loss.csv rows", false},
      {"seed", &C::seed, "seed of the pair order, the split and the score head", true},
      {"threads", &C::threads, "CPU threads (0: all cores)", false},
      {"device", &C::device, "where the model trains: cpu or cuda", false},
      {"out", &C::out, "output directory", false},
  };
  return fields;
}

void validate_reward_config(const RewardConfig& c) {
  auto positive = [](int64_t v, const char* name) {
    KOTOBA_CHECK(v > 0, "reward config: '", name, "' must be positive, got ", v);
  };
  auto non_negative = [](double v, const char* name) {
    KOTOBA_CHECK(v >= 0, "reward config: '", name, "' must not be negative, got ", v);
  };
  parse_device(c.device, "reward config: 'device'");
  KOTOBA_CHECK(!c.model.empty(), "reward config: 'model' (the model directory to train) is required");
  KOTOBA_CHECK(!c.data.empty(), "reward config: 'data' (the preference pairs) is required");
  KOTOBA_CHECK(c.val_fraction >= 0 && c.val_fraction < 1, "reward config: 'val_fraction' must be in [0, 1), got ",
               c.val_fraction);
  non_negative(double(c.max_length), "max_length");
  positive(c.batch, "batch");
  positive(c.grad_accum, "grad_accum");
  positive(c.log_every, "log_every");
  KOTOBA_CHECK(c.steps > 0 || c.epochs > 0, "reward config: give 'steps' or a positive 'epochs'");
  non_negative(c.epochs, "epochs");
  non_negative(double(c.steps), "steps");
  validate_optimizer_config(c, "reward", /*lr_required=*/true);
  non_negative(c.center_rewards_coefficient, "center_rewards_coefficient");
  KOTOBA_CHECK(c.disable_dropout == 0 || c.disable_dropout == 1, "reward config: 'disable_dropout' must be 0 or 1, got ",
               c.disable_dropout);
  validate_lora_config(c, "reward");
  KOTOBA_CHECK(c.lora_dropout >= 0 && c.lora_dropout < 1, "reward config: 'lora_dropout' must be in [0, 1), got ",
               c.lora_dropout);
  KOTOBA_CHECK(c.lora_r > 0 || c.lora_targets.empty(), "reward config: 'lora_targets' applies with LoRA (set 'lora_r')");
  validate_run_config(c, "reward");
  KOTOBA_CHECK(!c.out.empty(), "reward config: 'out' (the output directory) is required");
}

double reward_learning_rate(const RewardConfig& c, int64_t step, int64_t total_steps) {
  if (c.warmup > 0 && step <= c.warmup) return c.lr * double(step) / double(c.warmup);
  const int64_t decay_steps = total_steps - c.warmup;
  if (decay_steps <= 0) return c.lr;
  const double progress = std::clamp(double(step - c.warmup) / double(decay_steps), 0.0, 1.0);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(M_PI * progress));
}

// ---- the loss and the batches ----

PairwiseLoss pairwise_reward_loss(std::span<const float> rewards, double centre, std::span<const double> margins) {
  KOTOBA_CHECK(rewards.size() % 2 == 0 && !rewards.empty(), "pairwise_reward_loss: ", rewards.size(),
               " rewards; expected the chosen and rejected rows of at least one pair");
  const size_t P = rewards.size() / 2;
  KOTOBA_CHECK(margins.empty() || margins.size() == P, "pairwise_reward_loss: ", margins.size(), " margins for ", P,
               " pairs");
  PairwiseLoss out;
  out.grad.assign(rewards.size(), 0.0);
  for (size_t p = 0; p < P; ++p) {
    const double rc = rewards[p], rr = rewards[P + p];
    const double d = rc - rr - (margins.empty() ? 0.0 : margins[p]);
    // -log sigmoid(d) = softplus(-d), written so that neither branch overflows.
    out.loss += (d < 0 ? -d : 0.0) + std::log1p(std::exp(-std::abs(d)));
    const double s = d >= 0 ? std::exp(-d) / (1.0 + std::exp(-d)) : 1.0 / (1.0 + std::exp(d));  // sigmoid(-d)
    out.grad[p] -= s / double(P);
    out.grad[P + p] += s / double(P);
    if (centre > 0) {
      out.loss += centre * (rc + rr) * (rc + rr);
      out.grad[p] += centre * 2.0 * (rc + rr) / double(P);
      out.grad[P + p] += centre * 2.0 * (rc + rr) / double(P);
    }
    out.correct += rc > rr;
    out.margin_sum += rc - rr;
  }
  out.loss /= double(P);
  return out;
}

RewardBatch make_reward_batch(std::span<const std::vector<int32_t>* const> chosen,
                              std::span<const std::vector<int32_t>* const> rejected, int32_t pad_id) {
  KOTOBA_CHECK(chosen.size() == rejected.size() && !chosen.empty(), "make_reward_batch: ", chosen.size(),
               " chosen and ", rejected.size(), " rejected sequences");
  std::vector<const std::vector<int32_t>*> rows(chosen.begin(), chosen.end());
  rows.insert(rows.end(), rejected.begin(), rejected.end());
  size_t longest = 0;
  for (const auto* r : rows) longest = std::max(longest, r->size());
  KOTOBA_CHECK(longest > 0, "make_reward_batch: every sequence is empty");
  const int64_t B = int64_t(rows.size()), T = int64_t(longest);
  std::vector<int32_t> ids(size_t(B * T), pad_id);
  RewardBatch batch;
  batch.pairs = int64_t(chosen.size());
  for (int64_t b = 0; b < B; ++b) {
    const auto& r = *rows[size_t(b)];
    // The reward is read where transformers reads it: at the last token that is not the pad
    // token (a reply that ends with an EOS serving as pad is scored at the token before it).
    int64_t n = int64_t(r.size());
    while (n > 0 && r[size_t(n - 1)] == pad_id) --n;
    KOTOBA_CHECK(n > 0, "make_reward_batch: sequence ", b, " is empty or padding (id ", pad_id, ") only");
    std::copy(r.begin(), r.end(), ids.begin() + b * T);
    batch.lengths.push_back(n);
  }
  batch.ids = Tensor::from_vector_i32(ids, {B, T});
  return batch;
}

namespace {

struct TokenPair {
  std::vector<int32_t> chosen, rejected;
};

constexpr CheckpointKind kCheckpoint{"kotoba-reward-checkpoint", "reward", 1};

// A loss above this is divergence: a model that scores at random is at ln 2, and -log sigmoid(-d)
// reaches it only when the rewards rank the pairs wrong by a gap of about d.
constexpr double kExplodedLoss = 50.0;

}  // namespace

// ---- the trainer's state ----

struct RewardTrainer::State {
  std::unique_ptr<nn::RewardModel> model;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::optional<chat::ChatTemplate> chat_template;
  json tokenizer_config;
  std::vector<TokenPair> train, val;
  int32_t pad_id = 0;
  std::optional<nn::LoraConfig> lora;
  std::unique_ptr<AdamW> optimizer;
  std::vector<Tensor> trainable;
  int64_t truncated = 0, dropped = 0;

  int64_t epoch = -1;
  std::vector<size_t> order;
  int64_t position = 0;

  int64_t step = 0, last_checkpoint_step = 0;
  bool resumed = false;
  double last_train_loss = std::nan("");
  RewardEval last_val{std::nan(""), std::nan(""), std::nan(""), 0};
  std::vector<LossRow> rows;
};

RewardTrainer::RewardTrainer(RewardConfig config, RewardOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_reward_config(config_);
  config_.model = fs::absolute(config_.model).lexically_normal().string();
  config_.data = fs::absolute(config_.data).lexically_normal().string();
  if (!config_.val_data.empty()) config_.val_data = fs::absolute(config_.val_data).lexically_normal().string();
  State& s = *state_;

  // The model: a reward-model directory as it is, or a causal LM with a fresh score head.
  GenerationConfig generation;
  s.tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load_dir(config_.model));
  s.pad_id = s.tok->pad_id().value_or(s.tok->eos_id().value_or(0));
  if (is_reward_model_dir(config_.model)) {
    s.model = std::move(load_reward_model_dir(config_.model).model);
    if (!s.model->pad_token_id()) s.model->set_pad_token_id(s.pad_id);
    s.pad_id = int32_t(*s.model->pad_token_id());
  } else {
    LoadedModel loaded = load_model_dir(config_.model);
    generation = loaded.generation;
    s.model = reward_model_from_causal_lm(std::move(loaded), s.pad_id, mix64(uint64_t(config_.seed) ^ 0x5c0e4eadull));
  }
  nn::RewardModel& model = *s.model;
  KOTOBA_CHECK(s.tok->vocab_size() <= model.backbone().vocab_size(), "reward: the tokenizer of ", config_.model,
               " has ", s.tok->vocab_size(), " tokens but the model only ", model.backbone().vocab_size(), " rows");
  if (config_.max_length == 0) config_.max_length = std::min<int64_t>(1024, model.backbone().max_positions());
  KOTOBA_CHECK(config_.max_length <= model.backbone().max_positions(), "reward config: 'max_length' (",
               config_.max_length, ") exceeds the model's context (", model.backbone().max_positions(), " positions)");
  s.chat_template.emplace(resolve_chat_template(config_.chat_template, config_.model, *s.tok, generation));
  s.tokenizer_config =
      finetuned_tokenizer_config(*s.tok, *s.chat_template, model.backbone().max_positions(), config_.model);

  // Data: read, split, tokenise both replies of every pair.
  std::vector<data::PreferencePair> pairs = data::read_preference_dataset(config_.data, config_.format);
  for (const auto& p : pairs)
    KOTOBA_CHECK(!p.chosen.empty() || !p.rejected.empty(), p.where,
                 ": a record of prompts only (no chosen/rejected replies) cannot train a reward model");
  std::vector<data::PreferencePair> train_pairs, val_pairs;
  if (!config_.val_data.empty()) {
    train_pairs = std::move(pairs);
    val_pairs = data::read_preference_dataset(config_.val_data, config_.format);
  } else {
    const size_t n_val = size_t(std::floor(double(pairs.size()) * config_.val_fraction));
    std::vector<size_t> order = permutation(pairs.size(), mix64(uint64_t(config_.seed) ^ 0x5a11d5eedull));
    std::vector<bool> is_val(pairs.size(), false);
    for (size_t i = 0; i < n_val; ++i) is_val[order[i]] = true;
    for (size_t i = 0; i < pairs.size(); ++i) (is_val[i] ? val_pairs : train_pairs).push_back(std::move(pairs[i]));
  }
  auto tokenize = [&](const std::vector<data::PreferencePair>& in, std::vector<TokenPair>& out) {
    for (const auto& p : in) {
      data::SftTokens c = data::tokenize_sft_example(data::preference_example(p, p.chosen), *s.chat_template, *s.tok,
                                                     config_.max_length);
      data::SftTokens r = data::tokenize_sft_example(data::preference_example(p, p.rejected), *s.chat_template,
                                                     *s.tok, config_.max_length);
      s.truncated += c.truncated + r.truncated;
      // Cut to the same tokens (a prompt longer than max_length), a pair says nothing.
      if (c.ids == r.ids) {
        ++s.dropped;
        continue;
      }
      for (const auto* ids : {&c.ids, &r.ids})
        for (int32_t id : *ids)
          KOTOBA_CHECK(id >= 0 && id < model.backbone().vocab_size(), p.where, ": token id ", id,
                       " is outside the model's vocabulary (", model.backbone().vocab_size(), ")");
      out.push_back({std::move(c.ids), std::move(r.ids)});
    }
  };
  tokenize(train_pairs, s.train);
  tokenize(val_pairs, s.val);
  KOTOBA_CHECK(!s.train.empty(), "reward: ", config_.data, " leaves no training pair",
               train_pairs.empty() ? " (every pair went to validation: lower --val-fraction)"
                                   : detail::concat(" (", s.dropped, " pairs were identical once cut at max_length ",
                                                    config_.max_length, ": raise --max-length)"));
  if (options_.log && (s.truncated > 0 || s.dropped > 0))
    options_.log(detail::concat("warning: ", s.truncated, " sequences were cut at max_length ", config_.max_length,
                                s.dropped ? detail::concat("; ", s.dropped, " pairs left out (identical once cut)") : ""));

  // Full fine-tuning of backbone and head, or LoRA on the backbone with the head trained in full.
  if (config_.lora_r > 0) {
    s.lora = lora_config_from_settings(config_.lora_r, config_.lora_alpha, config_.lora_dropout, config_.lora_targets,
                                       model.model_type(), "reward");
    nn::apply_lora(model.backbone(), *s.lora, mix64(uint64_t(config_.seed) ^ 0x10a1a17ull));
    model.score.set_requires_grad(true);
  } else {
    model.set_requires_grad(true);
  }
  model.backbone().dropout_generator().set_state(mix64(uint64_t(config_.seed) ^ 0xd50f7ull), 0);
  model.set_training(config_.disable_dropout == 0);
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) trainable.emplace_back(name, p);
  for (auto& [name, p] : trainable) s.trainable.push_back(p);
  // Before the optimizer: its moments are made beside the parameters (Module::to keeps the
  // tensors' identity, so `trainable` follows the move).
  if (const Device device = parse_device(config_.device, "reward config: 'device'"); device != Device::cpu)
    model.to(device);
  s.optimizer = std::make_unique<AdamW>(trainable, AdamWConfig{.lr = float(config_.lr), .beta1 = float(config_.beta1),
                                                               .beta2 = float(config_.beta2), .eps = float(config_.eps),
                                                               .weight_decay = float(config_.weight_decay)});
  const int64_t per_step = config_.batch * config_.grad_accum;
  total_steps_ = config_.steps > 0 ? config_.steps
                                   : std::max<int64_t>(1, int64_t(std::ceil(config_.epochs * double(s.train.size()) /
                                                                             double(per_step))));
}

RewardTrainer::~RewardTrainer() = default;

nn::RewardModel& RewardTrainer::model() { return *state_->model; }
const tokenizer::Tokenizer& RewardTrainer::tokenizer() const { return *state_->tok; }
const chat::ChatTemplate& RewardTrainer::chat_template() const { return *state_->chat_template; }

RewardBatch RewardTrainer::next_train_batch() {
  State& s = *state_;
  if (s.epoch < 0 || s.position >= int64_t(s.order.size())) {
    s.epoch += 1;
    s.position = 0;
    s.order = permutation(s.train.size(), mix64(uint64_t(config_.seed) + uint64_t(s.epoch)));
  }
  const int64_t begin = s.position, end = std::min(int64_t(s.order.size()), s.position + config_.batch);
  s.position = end;
  std::vector<const std::vector<int32_t>*> chosen, rejected;
  for (int64_t i = begin; i < end; ++i) {
    chosen.push_back(&s.train[s.order[size_t(i)]].chosen);
    rejected.push_back(&s.train[s.order[size_t(i)]].rejected);
  }
  return make_reward_batch(chosen, rejected, s.pad_id);
}

RewardEval RewardTrainer::evaluate() {
  State& s = *state_;
  RewardEval e;
  if (s.val.empty()) return RewardEval{std::nan(""), std::nan(""), std::nan(""), 0};
  NoGradGuard no_grad;
  s.model->set_training(false);
  int64_t correct = 0;
  double loss_sum = 0, margin_sum = 0;
  for (size_t begin = 0; begin < s.val.size(); begin += size_t(config_.batch)) {
    std::vector<const std::vector<int32_t>*> chosen, rejected;
    for (size_t i = begin; i < std::min(s.val.size(), begin + size_t(config_.batch)); ++i) {
      chosen.push_back(&s.val[i].chosen);
      rejected.push_back(&s.val[i].rejected);
    }
    RewardBatch b = make_reward_batch(chosen, rejected, s.pad_id);
    const std::vector<float> r = s.model->rewards(on_device(b.ids, s.model->device()), b.lengths).to_vector();
    PairwiseLoss l = pairwise_reward_loss(r, config_.center_rewards_coefficient);
    loss_sum += l.loss * double(b.pairs);
    correct += l.correct;
    margin_sum += l.margin_sum;
  }
  s.model->set_training(config_.disable_dropout == 0);
  e.pairs = int64_t(s.val.size());
  e.loss = loss_sum / double(e.pairs);
  e.accuracy = double(correct) / double(e.pairs);
  e.mean_margin = margin_sum / double(e.pairs);
  return e;
}

// ---- checkpoints ----

void RewardTrainer::save_checkpoint() {
  State& s = *state_;
  save_trainer_checkpoint(checkpoint_dir(config_.out), *s.optimizer, kCheckpoint,
                          {{"step", s.step},
                           {"total_steps", total_steps_},
                           {"epoch", s.epoch},
                           {"position", s.position},
                           {"dropout_generator", generator_json(s.model->backbone().dropout_generator())},
                           {"lora_dropout_generators", lora_dropout_generators_json(*s.model)},
                           {"train_loss", json_number(s.last_train_loss)},
                           {"val_loss", json_number(s.last_val.loss)},
                           {"val_accuracy", json_number(s.last_val.accuracy)},
                           {"config", config_to_json(config_, reward_config_fields())}});
  s.last_checkpoint_step = s.step;
}

RewardConfig RewardTrainer::read_checkpoint_config(const std::string& out_dir) {
  return read_trainer_checkpoint_config(TrainerState(out_dir, kCheckpoint), reward_config_fields());
}

void RewardTrainer::resume() {
  State& s = *state_;
  const TrainerState state = read_resumable_trainer_state(config_, kCheckpoint, reward_config_fields());
  const std::string& state_path = state.path();
  const int64_t step = state.integer("step");
  KOTOBA_CHECK(step >= 0 && step <= total_steps_, state_path, ": step ", step, " is beyond the run's ", total_steps_,
               " steps");
  restore_trainer_checkpoint(state, *s.optimizer);
  state.restore_generator("dropout_generator", s.model->backbone().dropout_generator());
  state.restore_lora_dropout_generators(*s.model);
  s.step = step;
  const int64_t epoch = state.integer("epoch"), position = state.integer("position");
  if (epoch >= 0) {
    s.epoch = epoch;
    s.order = permutation(s.train.size(), mix64(uint64_t(config_.seed) + uint64_t(epoch)));
    KOTOBA_CHECK(position >= 0 && position <= int64_t(s.order.size()), state_path, ": position ", position,
                 " is outside epoch ", epoch, " (", s.order.size(), " pairs)");
    s.position = position;
  }
  s.last_train_loss = state.optional_number("train_loss");
  s.last_val.loss = state.optional_number("val_loss");
  s.last_val.accuracy = state.optional_number("val_accuracy");
  s.last_checkpoint_step = step;
  s.resumed = true;
  s.rows = read_loss_csv((fs::path(config_.out) / "loss.csv").string(), step);
  if (options_.log)
    options_.log("resumed from " + state.dir() + " at step " + std::to_string(step) + " of " +
                 std::to_string(total_steps_));
}

// ---- the loop ----

RewardResult RewardTrainer::run(int64_t stop_after_step) {
  State& s = *state_;
  const RewardConfig& c = config_;
  fs::path out(c.out);
  prepare_output_dir("reward", c.out, s.resumed);
  const std::string csv_path = (out / "loss.csv").string();
  write_loss_csv(csv_path, s.rows);
  const int64_t end_step = stop_after_step > 0 ? std::min(stop_after_step, total_steps_) : total_steps_;
  nn::RewardModel& model = *s.model;
  auto stopped = [&](const std::string& what) {
    clear_tape();
    throw Error(stopped_message("reward", what, "step", s.last_checkpoint_step, checkpoint_dir(c.out)));
  };
  auto write_plot = [&] { write_loss_plot((out / "loss.png").string(), s.rows, "reward-model loss (pairwise)"); };

  Progress progress("reward", total_steps_, {.unit = "steps", .quiet = !options_.progress});
  progress.set(s.step);
  using clock = std::chrono::steady_clock;
  auto row_start = clock::now();
  double row_loss_sum = 0;
  int64_t row_steps = 0, row_tokens = 0, epoch_seen = s.epoch;
  double tokens_per_second = 0;

  while (s.step < end_step) {
    const int64_t step = s.step + 1;
    const double lr = reward_learning_rate(c, step, total_steps_);
    s.optimizer->set_lr(float(lr));
    s.optimizer->zero_grad();
    // The step's loss is the mean over all its pairs (each micro-batch weighted by its share).
    std::vector<RewardBatch> micro;
    int64_t step_pairs = 0, step_tokens = 0;
    for (int64_t m = 0; m < c.grad_accum; ++m) {
      micro.push_back(next_train_batch());
      step_pairs += micro.back().pairs;
      step_tokens += micro.back().ids.numel();
    }
    double loss_sum = 0;
    for (const RewardBatch& b : micro) {
      Tensor rewards = model.rewards(on_device(b.ids, model.device()), b.lengths);  // (2P, 1)
      const std::vector<float> r = rewards.to_vector();
      const PairwiseLoss l = pairwise_reward_loss(r, c.center_rewards_coefficient);
      if (!std::isfinite(l.loss)) stopped(detail::concat("the training loss became ", l.loss, " at step ", step));
      if (l.loss > kExplodedLoss)
        stopped(detail::concat("the training loss exploded to ", l.loss, " at step ", step, " (more than ",
                               kExplodedLoss, "; ln 2 = 0.69 is chance)"));
      const double weight = double(b.pairs) / double(step_pairs);
      loss_sum += l.loss * weight;
      std::vector<float> seed(l.grad.size());
      for (size_t i = 0; i < seed.size(); ++i) seed[i] = float(l.grad[i] * weight);
      Tensor seed_t = Tensor::from_vector(seed, rewards.shape());
      if (rewards.device() != Device::cpu) seed_t = to_device(seed_t, rewards.device());
      backward(rewards, seed_t);
    }
    const float norm = global_grad_norm(s.trainable);
    if (!std::isfinite(norm)) stopped(detail::concat("the gradient norm became ", norm, " at step ", step));
    s.optimizer->step(c.clip > 0 ? clip_coefficient(norm, float(c.clip)) : 1.0f);
    s.step = step;
    s.last_train_loss = loss_sum;
    row_loss_sum += loss_sum;
    row_steps += 1;
    row_tokens += step_tokens;

    const bool last = step == total_steps_;
    const bool epoch_ended = s.position >= int64_t(s.order.size()) && s.epoch >= epoch_seen;
    if (epoch_ended) epoch_seen = s.epoch + 1;
    const bool eval_now = !s.val.empty() && (last || (c.eval_every > 0 ? step % c.eval_every == 0 : epoch_ended));
    double val = std::nan("");
    if (eval_now) {
      s.last_val = evaluate();
      val = s.last_val.loss;
      if (options_.log) {
        char line[200];
        std::snprintf(line, sizeof line, "step %lld/%lld  train loss %.4f  val loss %.4f  accuracy %.1f%%  margin %.3f",
                      (long long)step, (long long)total_steps_, s.last_train_loss, val, 100 * s.last_val.accuracy,
                      s.last_val.mean_margin);
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
    if (eval_now) write_plot();
    char extra[160];
    std::snprintf(extra, sizeof extra, "loss %.4f  lr %.2e  %.0f tokens/s  epoch %lld", s.last_train_loss, lr,
                  tokens_per_second, (long long)s.epoch + 1);
    progress.set_extra(extra);
    progress.set(s.step);
  }
  progress.finish();

  RewardResult result;
  result.step = s.step;
  result.total_steps = total_steps_;
  result.finished = s.step >= total_steps_;
  result.train_loss = s.last_train_loss;
  result.val = s.last_val;
  result.train_pairs = int64_t(s.train.size());
  result.val_pairs = int64_t(s.val.size());
  result.truncated_sequences = s.truncated;
  result.dropped_pairs = s.dropped;
  if (s.last_checkpoint_step != s.step && (!result.finished || c.checkpoint_every > 0)) save_checkpoint();
  write_plot();
  if (result.finished) {
    model.set_training(false);
    if (model.device() != Device::cpu) model.to(Device::cpu);  // the merge and the writers read host memory
    if (s.lora) {
      result.adapter_dir = (out / "adapter").string();
      save_reward_peft_adapter(result.adapter_dir, model, *s.lora, c.model);
      if (options_.log) options_.log("LoRA adapter (PEFT SEQ_CLS layout, score head included) written to " +
                                     result.adapter_dir);
      nn::merge_and_unload(model.backbone());
    }
    result.model_dir = (out / "model").string();
    save_reward_model_dir(result.model_dir, model, *s.tok, s.tokenizer_config);
    if (options_.log) options_.log("reward model written to " + result.model_dir);
  }
  return result;
}

std::string RewardTrainer::checkpoint_dir(const std::string& out_dir) { return trainer_checkpoint_dir(out_dir); }

}  // namespace kotoba::train
