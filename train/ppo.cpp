// PPO for language models (train/ppo.h). Layouts: a rollout's arithmetic (KL, rewards, GAE,
// whitening; train/ppo_math.h) runs on "reply" rows of T = longest reply + 1 positions, where t
// indexes the reply's tokens and position L (one past the last token) is where the score is
// credited and the value of the finished reply is read; the model passes run on right-padded
// prompt + reply rows, where reply token t is predicted at column prompt_len - 1 + t. The losses
// are taken in that column layout, so one forward gives the policy's log-probabilities and the
// value head's estimates together. Determinism: an update's prompts come from the epoch's
// permutation (seed, epoch), its replies from per-prompt seeds (seed, update, prompt), its
// minibatch order from (seed, update, PPO epoch); a checkpoint after an update (weights,
// moments, KL coefficient, epoch and position) is the whole state a resumed run needs.
#include "train/ppo.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>

#include "core/progress.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/preference_data.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "io/peft.h"
#include "io/safetensors.h"
#include "nn/layers.h"
#include "nn/lora.h"
#include "nn/reward_model.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/logprobs.h"
#include "train/loss_log.h"
#include "train/optim.h"
#include "train/plot.h"
#include "train/ppo_math.h"
#include "train/reward_model_reward.h"
#include "train/rollout.h"
#include "train/sft.h"

namespace kotoba::train {

namespace fs = std::filesystem;

// ---- config ----

std::span<const ConfigField<PpoConfig>> ppo_config_fields() {
  using C = PpoConfig;
  static const ConfigField<C> fields[] = {
      {"model", &C::model, "the policy's model directory (usually an SFT result)", true},
      {"data", &C::data, "prompts: JSONL/JSON records with a prompt (any preference shape: only prompts are used)", true},
      {"format", &C::format, "data shape: auto, prompts, pairs, choice or ranked", true},
      {"val_data", &C::val_data, "validation prompts (mean reward of one sample each)", true},
      {"val_fraction", &C::val_fraction, "share of the prompts held out for validation when val_data is empty", true},
      {"chat_template", &C::chat_template, "chatml, llama2, alpaca or plain; auto: the model's, else alpaca", true},
      {"reward_model", &C::reward_model, "a reward-model directory (kotoba reward) that scores prompt + reply", true},
      {"reward", &C::reward, "or a rule reward: ends-with:TEXT, contains:TEXT or regex:PATTERN (1 or 0)", true},
      {"reward_cmd", &C::reward_cmd,
       "or a checker command: JSONL {prompt, completion} on stdin, one score a line on stdout", true},
      {"missing_eos_penalty", &C::missing_eos_penalty,
       "subtracted from the score of a reply cut at response_length (0: none)", true},
      {"response_length", &C::response_length, "tokens per sampled reply at most", true},
      {"temperature", &C::temperature, "sampling temperature (the log-probabilities use it too, as TRL)", true},
      {"top_k", &C::top_k, "sampling: keep the k most probable tokens (0: off)", true},
      {"top_p", &C::top_p, "sampling: nucleus mass (1: off)", true},
      {"kl_coef", &C::kl_coef, "KL penalty coefficient per token (the start value when adaptive)", true},
      {"kl_estimator", &C::kl_estimator, "k1 (logp - ref) or k3 ((r - 1) - log r)", true},
      {"target_kl", &C::target_kl, "adaptive KL: the target KL per reply (0: fixed kl_coef)", true},
      {"kl_horizon", &C::kl_horizon, "adaptive KL: the controller's horizon in replies", true},
      {"cliprange", &C::cliprange, "policy ratio clip", true},
      {"cliprange_value", &C::cliprange_value, "value clip around the rollout's values", true},
      {"vf_coef", &C::vf_coef, "weight of the value loss", true},
      {"gamma", &C::gamma, "discount", true},
      {"lam", &C::lam, "GAE lambda", true},
      {"whiten_rewards", &C::whiten_rewards, "1: whiten the per-token rewards (scale only) before GAE", true},
      {"batch", &C::batch, "prompts sampled per update (one reply each)", true},
      {"num_ppo_epochs", &C::num_ppo_epochs, "passes over each update's replies", true},
      {"num_mini_batches", &C::num_mini_batches, "minibatches (optimizer steps) per pass", true},
      {"grad_accum", &C::grad_accum, "micro-batches per minibatch", true},
      {"epochs", &C::epochs, "passes over the prompts (when steps is 0)", false},
      {"steps", &C::steps, "updates (0: from epochs)", false},
      {"lr", &C::lr, "peak learning rate (0: 3e-6 full as TRL's PPOConfig, 1e-4 LoRA)", true},
      {"min_lr", &C::min_lr, "learning rate at the last step (cosine decay)", true},
      {"warmup", &C::warmup, "linear warm-up (optimizer steps)", true},
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
      {"eval_every", &C::eval_every, "updates between validation passes (0: each epoch's end)", false},
      {"checkpoint_every", &C::checkpoint_every, "updates between checkpoints (0: none)", false},
      {"log_every", &C::log_every, "updates between loss.csv rows", false},
      {"seed", &C::seed, "seed of the prompt order, sampling, minibatches and LoRA init", true},
      {"threads", &C::threads, "CPU threads (0: all cores)", false},
      {"device", &C::device, "where the policy trains: cpu or cuda", false},
      {"out", &C::out, "output directory", false},
  };
  return fields;
}

void validate_ppo_config(const PpoConfig& c) {
  parse_device(c.device, "ppo config: 'device'");
  auto positive = [](int64_t v, const char* name) {
    KOTOBA_CHECK(v > 0, "ppo config: '", name, "' must be positive, got ", v);
  };
  auto non_negative = [](double v, const char* name) {
    KOTOBA_CHECK(v >= 0, "ppo config: '", name, "' must not be negative, got ", v);
  };
  KOTOBA_CHECK(!c.model.empty(), "ppo config: 'model' (the policy's model directory) is required");
  KOTOBA_CHECK(c.val_fraction >= 0 && c.val_fraction < 1, "ppo config: 'val_fraction' must be in [0, 1), got ",
               c.val_fraction);
  non_negative(c.missing_eos_penalty, "missing_eos_penalty");
  positive(c.response_length, "response_length");
  KOTOBA_CHECK(c.temperature > 0, "ppo config: 'temperature' must be positive, got ", c.temperature);
  non_negative(double(c.top_k), "top_k");
  KOTOBA_CHECK(c.top_p > 0 && c.top_p <= 1, "ppo config: 'top_p' must be in (0, 1], got ", c.top_p);
  non_negative(c.kl_coef, "kl_coef");
  KOTOBA_CHECK(c.kl_estimator == "k1" || c.kl_estimator == "k3", "ppo config: 'kl_estimator' must be k1 or k3, got '",
               c.kl_estimator, "'");
  non_negative(c.target_kl, "target_kl");
  KOTOBA_CHECK(c.kl_horizon > 0, "ppo config: 'kl_horizon' must be positive, got ", c.kl_horizon);
  KOTOBA_CHECK(c.cliprange > 0 && c.cliprange < 1, "ppo config: 'cliprange' must be in (0, 1), got ", c.cliprange);
  KOTOBA_CHECK(c.cliprange_value > 0, "ppo config: 'cliprange_value' must be positive, got ", c.cliprange_value);
  non_negative(c.vf_coef, "vf_coef");
  KOTOBA_CHECK(c.gamma >= 0 && c.gamma <= 1, "ppo config: 'gamma' must be in [0, 1], got ", c.gamma);
  KOTOBA_CHECK(c.lam >= 0 && c.lam <= 1, "ppo config: 'lam' must be in [0, 1], got ", c.lam);
  KOTOBA_CHECK(c.whiten_rewards == 0 || c.whiten_rewards == 1, "ppo config: 'whiten_rewards' must be 0 or 1, got ",
               c.whiten_rewards);
  positive(c.batch, "batch");
  positive(c.num_ppo_epochs, "num_ppo_epochs");
  positive(c.num_mini_batches, "num_mini_batches");
  positive(c.grad_accum, "grad_accum");
  KOTOBA_CHECK(c.batch % (c.num_mini_batches * c.grad_accum) == 0, "ppo config: 'batch' (", c.batch,
               ") must split evenly into num_mini_batches (", c.num_mini_batches, ") x grad_accum (", c.grad_accum,
               ") micro-batches");
  KOTOBA_CHECK(c.batch >= 2, "ppo config: 'batch' must be at least 2 (advantages are whitened over the batch), got ",
               c.batch);
  positive(c.log_every, "log_every");
  KOTOBA_CHECK(c.steps > 0 || c.epochs > 0, "ppo config: give 'steps' or a positive 'epochs'");
  non_negative(c.epochs, "epochs");
  non_negative(double(c.steps), "steps");
  validate_optimizer_config(c, "ppo");
  validate_lora_config(c, "ppo");
  KOTOBA_CHECK(c.lora_r > 0 || (c.lora_targets.empty() && c.merge == 0),
               "ppo config: 'lora_targets' and 'merge' apply with LoRA (set 'lora_r')");
  KOTOBA_CHECK(c.merge == 0 || c.merge == 1, "ppo config: 'merge' must be 0 or 1, got ", c.merge);
  validate_run_config(c, "ppo");
  KOTOBA_CHECK(!c.out.empty(), "ppo config: 'out' (the output directory) is required");
}

// ---- metrics.csv ----

namespace {

constexpr CheckpointKind kCheckpoint{"kotoba-ppo-checkpoint", "PPO", 1};
constexpr const char* kMetricsHeader =
    "update,score,rlhf_reward,kl,entropy,pg_loss,vf_loss,pg_clipfrac,vf_clipfrac,approxkl,ratio,kl_coef,"
    "response_length,ended,val_reward\n";
constexpr size_t kMetricsColumns = 15;
constexpr const char* kValueHeadWeight = "v_head.summary.weight";
constexpr const char* kValueHeadBias = "v_head.summary.bias";

struct MetricsRow {
  int64_t update = 0;
  PpoUpdateMetrics m;
  double val_reward = std::nan("");
};

std::vector<double*> metric_fields(MetricsRow& r) {
  PpoUpdateMetrics& m = r.m;
  return {&m.score,  &m.rlhf_reward, &m.kl,    &m.entropy, &m.pg_loss,         &m.vf_loss, &m.pg_clipfrac,
          &m.vf_clipfrac, &m.approxkl, &m.ratio, &m.kl_coef, &m.response_length, &m.ended, &r.val_reward};
}

std::string metrics_line(MetricsRow r) {
  std::vector<double> values;
  for (double* v : metric_fields(r)) values.push_back(*v);
  return csv_line(r.update, values);
}

std::vector<MetricsRow> read_metrics_csv(const std::string& path, int64_t up_to_update) {
  std::vector<MetricsRow> rows;
  for (const CsvRow& cells : read_csv_rows(path, kMetricsColumns, up_to_update)) {
    MetricsRow r;
    r.update = cells.step;
    std::vector<double*> fields = metric_fields(r);
    for (size_t i = 0; i < fields.size(); ++i) *fields[i] = cells.values[i];
    rows.push_back(r);
  }
  return rows;
}

// One sampled reply and what the update learns from it.
struct Sample {
  size_t prompt = 0;           // index into the training prompts
  std::vector<int32_t> ids;    // prompt + reply tokens
  int64_t prompt_len = 0, reply_len = 0;
  bool ended = false;
  double score = 0;
  // Reply layout: old_logprobs and ref_logprobs over [0, L), values, advantages and returns over [0, L].
  std::vector<float> old_logprobs, ref_logprobs, values, advantages, returns;
};

// Right-padded prompt + reply rows of `samples` (in `rows` order): ids and next-token targets
// (the reply's tokens at columns prompt_len - 1 + t, -100 elsewhere), (B, S) i32.
struct ColumnBatch {
  Tensor ids, targets;
  int64_t S = 0;
};

ColumnBatch column_batch(const std::vector<Sample>& samples, std::span<const size_t> rows, int32_t pad_id) {
  ColumnBatch b;
  for (size_t r : rows) b.S = std::max(b.S, int64_t(samples[r].ids.size()));
  const int64_t B = int64_t(rows.size());
  std::vector<int32_t> ids(size_t(B * b.S), pad_id), targets(size_t(B * b.S), data::kIgnoreLabel);
  for (int64_t i = 0; i < B; ++i) {
    const Sample& s = samples[rows[size_t(i)]];
    std::copy(s.ids.begin(), s.ids.end(), ids.begin() + i * b.S);
    for (int64_t t = 0; t < s.reply_len; ++t)
      targets[size_t(i * b.S + s.prompt_len - 1 + t)] = s.ids[size_t(s.prompt_len + t)];
  }
  b.ids = Tensor::from_vector_i32(ids, {B, b.S});
  b.targets = Tensor::from_vector_i32(targets, {B, b.S});
  return b;
}

// Per-token log-probabilities of the targets under logits / temperature (TRL divides by
// temperature + 1e-7 in its rollouts and its loss alike).
Tensor tempered_logprobs(const Tensor& logits, const Tensor& targets, double temperature) {
  return token_logprobs(scale(logits, float(1.0 / (temperature + 1e-7))), targets);
}

}  // namespace

// ---- the trainer ----

struct PpoTrainer::State {
  LoadedModel loaded;
  LoadedModel reference;  // full training: a frozen copy of the start
  std::unique_ptr<nn::Linear> value_head;
  Generator value_head_gen{0};
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::optional<chat::ChatTemplate> chat_template;
  std::optional<nn::LoraConfig> lora;
  RewardFunction reward;
  std::vector<data::PreferencePair> train, val;
  std::vector<std::vector<int32_t>> train_prompt_ids, val_prompt_ids;
  int32_t pad_id = 0;
  double lr = 0;
  std::unique_ptr<AdamW> optimizer;
  std::vector<Tensor> trainable;
  std::optional<AdaptiveKlController> kl;

  int64_t epoch = -1;
  std::vector<size_t> order;
  int64_t position = 0;

  int64_t update = 0, last_checkpoint_update = 0;
  bool resumed = false;
  PpoUpdateMetrics last;
  double last_val = std::nan("");
  std::vector<LossRow> rows;
  std::vector<MetricsRow> metric_rows;
};

PpoTrainer::PpoTrainer(PpoConfig config, PpoOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_ppo_config(config_);
  KOTOBA_CHECK(!config_.data.empty(), "ppo config: 'data' (the prompts) is required");
  config_.data = fs::absolute(config_.data).lexically_normal().string();
  if (!config_.val_data.empty()) config_.val_data = fs::absolute(config_.val_data).lexically_normal().string();
  std::vector<data::PreferencePair> train = data::read_preference_dataset(config_.data, config_.format);
  std::vector<data::PreferencePair> val;
  if (!config_.val_data.empty()) val = data::read_preference_dataset(config_.val_data, config_.format);
  setup(std::move(train), std::move(val));
}

PpoTrainer::PpoTrainer(PpoConfig config, std::vector<data::PreferencePair> prompts,
                       std::vector<data::PreferencePair> val, PpoOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_ppo_config(config_);
  setup(std::move(prompts), std::move(val));
}

PpoTrainer::~PpoTrainer() = default;

void PpoTrainer::setup(std::vector<data::PreferencePair> prompts, std::vector<data::PreferencePair> val) {
  config_.model = fs::absolute(config_.model).lexically_normal().string();
  State& s = *state_;
  if (options_.reward) {
    s.reward = options_.reward;
  } else {
    const int given = int(!config_.reward_model.empty()) + int(!config_.reward.empty()) + int(!config_.reward_cmd.empty());
    KOTOBA_CHECK(given == 1, "ppo: give exactly one reward: --reward-model DIR, --reward (ends-with:TEXT, "
                             "contains:TEXT, regex:PATTERN) or --reward-cmd CMD");
    if (!config_.reward.empty()) s.reward = rule_reward(config_.reward);
    if (!config_.reward_cmd.empty()) s.reward = command_reward(config_.reward_cmd);
    if (!config_.reward_model.empty()) {
      config_.reward_model = fs::absolute(config_.reward_model).lexically_normal().string();
      try {
        s.reward = reward_model_reward(config_.reward_model, 1024, 16, options_.log);
      } catch (const Error& e) {
        throw Error(detail::concat("ppo: --reward-model (config key reward_model): ", e.what()));
      }
    }
  }

  s.loaded = load_model_dir(config_.model);
  s.tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load_dir(s.loaded.dir));
  KOTOBA_CHECK(s.tok->vocab_size() <= s.loaded.model->vocab_size(), "ppo: the tokenizer of ", config_.model, " has ",
               s.tok->vocab_size(), " tokens but the model only ", s.loaded.model->vocab_size(), " rows");
  s.chat_template.emplace(resolve_chat_template(config_.chat_template, s.loaded.dir, *s.tok, s.loaded.generation));
  s.pad_id = s.tok->pad_id().value_or(s.tok->eos_id().value_or(0));

  split_validation(prompts, val, config_.val_fraction, config_.seed);
  KOTOBA_CHECK(!prompts.empty(), "ppo: ", config_.data.empty() ? std::string("the data") : config_.data,
               " leaves no training prompt");
  s.train = std::move(prompts);
  s.val = std::move(val);
  const int64_t context = s.loaded.model->max_positions();
  s.train_prompt_ids = encode_rollout_prompts(s.train, *s.chat_template, *s.tok, config_.response_length, context, "ppo");
  s.val_prompt_ids = encode_rollout_prompts(s.val, *s.chat_template, *s.tok, config_.response_length, context, "ppo");

  nn::CausalLM& model = *s.loaded.model;
  if (config_.lora_r > 0) {
    s.lora = lora_config_from_settings(config_.lora_r, config_.lora_alpha, 0.0, config_.lora_targets,
                                       model.model_type(), "ppo");
    nn::apply_lora(model, *s.lora, mix64(uint64_t(config_.seed) ^ 0x10a1a17ull));
  } else {
    model.set_requires_grad(true);
    s.reference = load_model_dir(config_.model);
    s.reference.model->set_requires_grad(false);
    s.reference.model->eval();
  }
  model.eval();  // dropout off, as TRL's PPO
  // The value head starts at zero: every value 0, so the first advantages are the rewards' own.
  s.value_head = std::make_unique<nn::Linear>(nn::hidden_size_of(model), 1, /*bias=*/true, 0.0f, s.value_head_gen);
  s.value_head->set_requires_grad(true);

  s.lr = config_.lr > 0 ? config_.lr : (config_.lora_r > 0 ? 1e-4 : 3e-6);
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) trainable.emplace_back(name, p);
  trainable.emplace_back(kValueHeadWeight, s.value_head->weight);
  trainable.emplace_back(kValueHeadBias, s.value_head->bias);
  for (auto& [name, p] : trainable) s.trainable.push_back(p);
  // Before the optimizer: its moments are made beside the parameters (Module::to keeps the
  // tensors' identity, so `trainable` follows the move).
  if (const Device device = parse_device(config_.device, "ppo config: 'device'"); device != Device::cpu) {
    model.to(device);
    s.value_head->to(device);
    if (s.reference.model) s.reference.model->to(device);
  }
  s.optimizer = std::make_unique<AdamW>(trainable, AdamWConfig{.lr = float(s.lr), .beta1 = float(config_.beta1),
                                                               .beta2 = float(config_.beta2), .eps = float(config_.eps),
                                                               .weight_decay = float(config_.weight_decay)});
  s.kl.emplace(config_.kl_coef, config_.target_kl, config_.kl_horizon);
  total_updates_ = config_.steps > 0 ? config_.steps
                                     : std::max<int64_t>(1, int64_t(std::ceil(config_.epochs * double(s.train.size()) /
                                                                              double(config_.batch))));
}

nn::CausalLM& PpoTrainer::model() { return *state_->loaded.model; }
nn::Linear& PpoTrainer::value_head() { return *state_->value_head; }
const tokenizer::Tokenizer& PpoTrainer::tokenizer() const { return *state_->tok; }
const chat::ChatTemplate& PpoTrainer::chat_template() const { return *state_->chat_template; }
std::string PpoTrainer::trainable_parameters_report() const {
  return nn::trainable_parameters_report(*state_->loaded.model);
}

double PpoTrainer::validation_reward() {
  State& s = *state_;
  if (s.val.empty()) return std::nan("");
  infer::GenerationOptions o = rollout_sampling_options(
      {config_.response_length, config_.temperature, config_.top_k, config_.top_p}, *s.tok, *s.chat_template, 1);
  for (size_t i = 0; i < s.val_prompt_ids.size(); ++i)
    o.prompt_seeds.push_back(mix64(uint64_t(config_.seed) ^ 0x7a1ull ^ mix64(i)));
  const std::vector<infer::GenerationResult> results = infer::generate_batch(*s.loaded.model, s.val_prompt_ids, o);
  std::vector<RewardInput> inputs;
  for (size_t i = 0; i < results.size(); ++i)
    inputs.push_back({&s.val[i].prompt, completion_text(results[i].sequences[0], *s.tok, o.stop_strings)});
  const std::vector<double> r = s.reward(inputs);
  KOTOBA_CHECK(r.size() == inputs.size(), "ppo: the reward gave ", r.size(), " scores for ", inputs.size(),
               " replies");
  return std::accumulate(r.begin(), r.end(), 0.0) / double(r.size());
}

// ---- checkpoints ----

void PpoTrainer::save_checkpoint() {
  State& s = *state_;
  save_trainer_checkpoint(checkpoint_dir(config_.out), *s.optimizer, kCheckpoint,
                          {{"update", s.update},
                           {"total_updates", total_updates_},
                           {"epoch", s.epoch},
                           {"position", s.position},
                           {"kl_coef", s.kl->value()},
                           {"score", json_number(s.last.score)},
                           {"val_reward", json_number(s.last_val)},
                           {"config", config_to_json(config_, ppo_config_fields())}});
  s.last_checkpoint_update = s.update;
}

PpoConfig PpoTrainer::read_checkpoint_config(const std::string& out_dir) {
  return read_trainer_checkpoint_config(TrainerState(out_dir, kCheckpoint), ppo_config_fields());
}

void PpoTrainer::resume() {
  State& s = *state_;
  const TrainerState state = read_resumable_trainer_state(config_, kCheckpoint, ppo_config_fields());
  const std::string& state_path = state.path();
  const int64_t update = state.integer("update");
  KOTOBA_CHECK(update >= 0 && update <= total_updates_, state_path, ": update ", update, " is beyond the run's ",
               total_updates_, " updates");
  restore_trainer_checkpoint(state, *s.optimizer);
  s.kl->set_value(state.number("kl_coef"));
  s.update = update;
  const int64_t epoch = state.integer("epoch"), position = state.integer("position");
  if (epoch >= 0) {
    s.epoch = epoch;
    s.order = permutation(s.train.size(), mix64(uint64_t(config_.seed) + uint64_t(epoch)));
    KOTOBA_CHECK(position >= 0 && position <= int64_t(s.order.size()), state_path, ": position ", position,
                 " is outside epoch ", epoch);
    s.position = position;
  }
  s.last.score = state.optional_number("score");
  s.last_val = state.optional_number("val_reward");
  s.last_checkpoint_update = update;
  s.resumed = true;
  s.rows = read_loss_csv((fs::path(config_.out) / "loss.csv").string(), update);
  s.metric_rows = read_metrics_csv((fs::path(config_.out) / "metrics.csv").string(), update);
  if (options_.log)
    options_.log("resumed from " + state.dir() + " at update " + std::to_string(update) + " of " +
                 std::to_string(total_updates_));
}

// ---- the loop ----

PpoResult PpoTrainer::run(int64_t stop_after_update) {
  State& s = *state_;
  const PpoConfig& c = config_;
  fs::path out(c.out);
  prepare_output_dir("ppo", c.out, s.resumed);
  const std::string csv_path = (out / "loss.csv").string(), metrics_path = (out / "metrics.csv").string();
  write_loss_csv(csv_path, s.rows);
  write_csv_file(metrics_path, kMetricsHeader, s.metric_rows, metrics_line);
  auto write_plots = [&]() {
    write_loss_plot((out / "loss.png").string(), s.rows, "PPO loss (policy + vf_coef x value)");
    if (s.metric_rows.empty()) return;
    Series score{"mean score", {}, {}}, rlhf{"score - KL penalty", {}, {}}, val{"validation reward", {}, {}};
    Series kl{"KL to the reference (per reply)", {}, {}}, entropy{"entropy (per reply)", {}, {}};
    Series clipfrac{"policy clip fraction", {}, {}}, vf{"value loss", {}, {}};
    for (const auto& r : s.metric_rows) {
      const double x = double(r.update);
      for (auto [series, y] : {std::pair{&score, r.m.score}, {&rlhf, r.m.rlhf_reward}, {&kl, r.m.kl},
                               {&entropy, r.m.entropy}, {&clipfrac, r.m.pg_clipfrac}, {&vf, r.m.vf_loss}}) {
        series->x.push_back(x);
        series->y.push_back(y);
      }
      if (std::isfinite(r.val_reward)) {
        val.x.push_back(x);
        val.y.push_back(r.val_reward);
      }
    }
    std::vector<Series> rewards = {score, rlhf};
    if (!val.x.empty()) rewards.push_back(val);  // a legend entry only when there is a validation set
    write_line_plot((out / "reward.png").string(), rewards, "PPO reward", "update", "reward");
    write_line_plot((out / "kl.png").string(), {kl, entropy}, "PPO KL and entropy", "update", "nats");
    write_line_plot((out / "ppo_losses.png").string(), {clipfrac, vf}, "PPO clip fraction and value loss", "update",
                    "value");
  };
  const int64_t end_update = stop_after_update > 0 ? std::min(stop_after_update, total_updates_) : total_updates_;
  nn::CausalLM& model = *s.loaded.model;
  nn::Linear& value_head = *s.value_head;
  const double explode_nll = 4.0 * std::log(double(model.vocab_size()));
  auto stopped = [&](const std::string& what) {
    throw Error(stopped_message("ppo", what, "update", s.last_checkpoint_update, checkpoint_dir(c.out)));
  };
  SftConfig schedule;
  schedule.warmup = c.warmup;
  schedule.min_lr = c.min_lr;
  const int64_t steps_per_update = c.num_ppo_epochs * c.num_mini_batches;
  const int64_t total_steps = total_updates_ * steps_per_update;
  const int64_t micro = c.batch / (c.num_mini_batches * c.grad_accum);
  const KlEstimator estimator = c.kl_estimator == "k3" ? KlEstimator::k3 : KlEstimator::k1;
  const PpoLossConfig loss_config{c.cliprange, c.cliprange_value, c.vf_coef};
  const infer::GenerationOptions sampling = rollout_sampling_options(
      {c.response_length, c.temperature, c.top_k, c.top_p}, *s.tok, *s.chat_template, 1);

  // Samples one reply per prompt of the update and scores it.
  auto sample_replies = [&](int64_t update) {
    // An update takes `batch` prompts, running on into the next epoch's order when this one ends.
    std::vector<size_t> picked;
    while (int64_t(picked.size()) < c.batch) {
      if (s.position >= int64_t(s.order.size())) {
        s.epoch += 1;
        s.position = 0;
        s.order = permutation(s.train.size(), mix64(uint64_t(c.seed) + uint64_t(s.epoch)));
      }
      picked.push_back(s.order[size_t(s.position++)]);
    }
    infer::GenerationOptions o = sampling;
    std::vector<std::vector<int32_t>> prompts;
    for (size_t k = 0; k < picked.size(); ++k) {
      prompts.push_back(s.train_prompt_ids[picked[k]]);
      o.prompt_seeds.push_back(mix64(uint64_t(c.seed) ^ mix64(uint64_t(update) * 1000003 + uint64_t(k))));
    }
    const std::vector<infer::GenerationResult> results = infer::generate_batch(model, prompts, o);
    std::vector<Sample> samples(picked.size());
    std::vector<RewardInput> inputs;
    for (size_t k = 0; k < picked.size(); ++k) {
      const infer::GeneratedSequence& seq = results[k].sequences[0];
      Sample& smp = samples[k];
      smp.prompt = picked[k];
      smp.ids = prompts[k];
      smp.prompt_len = int64_t(prompts[k].size());
      smp.ids.insert(smp.ids.end(), seq.ids.begin(), seq.ids.end());
      smp.reply_len = int64_t(seq.ids.size());
      KOTOBA_CHECK(smp.reply_len > 0, "ppo: ", s.train[picked[k]].where, ": the policy generated nothing");
      smp.ended = seq.finish_reason == infer::FinishReason::eos || seq.finish_reason == infer::FinishReason::stop_string;
      inputs.push_back({&s.train[picked[k]].prompt, completion_text(seq, *s.tok, o.stop_strings)});
    }
    const std::vector<double> scores = s.reward(inputs);
    KOTOBA_CHECK(scores.size() == inputs.size(), "ppo: the reward gave ", scores.size(), " scores for ", inputs.size(),
                 " replies");
    for (size_t k = 0; k < samples.size(); ++k) {
      KOTOBA_CHECK(std::isfinite(scores[k]), "ppo: the reward gave a non-finite score ", scores[k], " to ",
                   s.train[samples[k].prompt].where);
      samples[k].score = scores[k] - (samples[k].ended ? 0.0 : c.missing_eos_penalty);
    }
    return samples;
  };

  // The rollout's log-probabilities (policy and reference) and values, without gradients.
  auto score_rollouts = [&](std::vector<Sample>& samples) {
    NoGradGuard no_grad;
    for (size_t begin = 0; begin < samples.size(); begin += size_t(micro)) {
      std::vector<size_t> rows;
      for (size_t i = begin; i < std::min(samples.size(), begin + size_t(micro)); ++i) rows.push_back(i);
      ColumnBatch b = column_batch(samples, rows, s.pad_id);
      const Tensor ids = on_device(b.ids, model.device());  // columns are built on the host
      Tensor hidden = model.hidden_states(ids);
      const std::vector<float> lp = tempered_logprobs(model.head_logits(hidden), b.targets, c.temperature).to_vector();
      const std::vector<float> v = value_head.forward(hidden).to_vector();  // (B, S, 1)
      std::vector<float> ref;
      if (s.reference.model) {
        ref = tempered_logprobs(s.reference.model->logits(ids), b.targets, c.temperature).to_vector();
      } else {
        nn::LoraDisabled off(model);
        ref = tempered_logprobs(model.logits(ids), b.targets, c.temperature).to_vector();
      }
      for (size_t i = 0; i < rows.size(); ++i) {
        Sample& smp = samples[rows[i]];
        const size_t base = i * size_t(b.S) + size_t(smp.prompt_len - 1);
        smp.old_logprobs.assign(lp.begin() + ptrdiff_t(base), lp.begin() + ptrdiff_t(base + size_t(smp.reply_len)));
        smp.ref_logprobs.assign(ref.begin() + ptrdiff_t(base), ref.begin() + ptrdiff_t(base + size_t(smp.reply_len)));
        smp.values.assign(v.begin() + ptrdiff_t(base), v.begin() + ptrdiff_t(base + size_t(smp.reply_len) + 1));
      }
    }
  };

  // KL, rewards and advantages over the reply layout; fills the update's rollout metrics and
  // returns the mean square of the returns (the scale a sane value loss stays within).
  auto advantages = [&](std::vector<Sample>& samples, PpoUpdateMetrics& m) {
    const int64_t B = int64_t(samples.size());
    int64_t T = 0;
    for (const auto& smp : samples) T = std::max(T, smp.reply_len + 1);
    const PpoShape shape{B, T};
    std::vector<float> logp(size_t(B * T), 0.0f), ref(size_t(B * T), 0.0f), values(size_t(B * T), 0.0f),
        mask(size_t(B * T), 0.0f), value_mask(size_t(B * T), 0.0f);
    std::vector<float> scores;
    for (int64_t b = 0; b < B; ++b) {
      const Sample& smp = samples[size_t(b)];
      for (int64_t t = 0; t <= smp.reply_len; ++t) {
        const size_t i = size_t(b * T + t);
        value_mask[i] = 1.0f;
        values[i] = smp.values[size_t(t)];
        if (t < smp.reply_len) {
          mask[i] = 1.0f;
          logp[i] = smp.old_logprobs[size_t(t)];
          ref[i] = smp.ref_logprobs[size_t(t)];
        }
      }
      scores.push_back(float(smp.score));
    }
    const std::vector<float> kl = token_kl(logp, ref, mask, shape, estimator);
    std::vector<float> rewards = token_rewards(kl, scores, value_mask, shape, s.kl->value());
    if (c.whiten_rewards) masked_whiten(rewards, value_mask, /*shift_mean=*/false);
    Advantages adv = generalized_advantages(rewards, values, mask, value_mask, shape, c.gamma, c.lam);
    double kl_sum = 0, entropy_sum = 0, score_sum = 0, length = 0, ended = 0, returns_sq = 0, value_positions = 0;
    for (size_t i = 0; i < value_mask.size(); ++i)
      if (value_mask[i] != 0.0f) {
        returns_sq += double(adv.returns[i]) * double(adv.returns[i]);
        value_positions += 1;
      }
    const double returns_ms = returns_sq / std::max(1.0, value_positions);
    for (int64_t b = 0; b < B; ++b) {
      Sample& smp = samples[size_t(b)];
      smp.advantages.assign(adv.advantages.begin() + b * T, adv.advantages.begin() + b * T + smp.reply_len + 1);
      smp.returns.assign(adv.returns.begin() + b * T, adv.returns.begin() + b * T + smp.reply_len + 1);
      for (int64_t t = 0; t < smp.reply_len; ++t) {
        kl_sum += kl[size_t(b * T + t)];
        entropy_sum -= smp.old_logprobs[size_t(t)];
      }
      score_sum += smp.score;
      length += double(smp.reply_len);
      ended += smp.ended ? 1.0 : 0.0;
    }
    m.kl_coef = s.kl->value();
    m.score = score_sum / double(B);
    m.kl = kl_sum / double(B);
    m.rlhf_reward = m.score - m.kl_coef * m.kl;
    m.entropy = entropy_sum / double(B);
    m.response_length = length / double(B);
    m.ended = ended / double(B);
    const double nll = entropy_sum / std::max(1.0, length);
    if (!(nll <= explode_nll))
      stopped(detail::concat("the policy's loss exploded at update ", s.update + 1, ": its replies' negative ",
                             "log-likelihood reached ", nll, " per token (more than 4 ln V = ", explode_nll, ")"));
    return returns_ms;
  };

  // The loss targets of micro-batch `rows` in the column layout of `b`.
  auto loss_targets = [&](const std::vector<Sample>& samples, std::span<const size_t> rows, const ColumnBatch& b) {
    const int64_t B = int64_t(rows.size()), S = b.S;
    std::vector<float> old(size_t(B * S), 0.0f), old_v(size_t(B * S), 0.0f), adv(size_t(B * S), 0.0f),
        ret(size_t(B * S), 0.0f), mask(size_t(B * S), 0.0f), vmask(size_t(B * S), 0.0f);
    for (int64_t i = 0; i < B; ++i) {
      const Sample& smp = samples[rows[size_t(i)]];
      for (int64_t t = 0; t <= smp.reply_len; ++t) {
        const size_t j = size_t(i * S + smp.prompt_len - 1 + t);
        vmask[j] = 1.0f;
        old_v[j] = smp.values[size_t(t)];
        ret[j] = smp.returns[size_t(t)];
        adv[j] = smp.advantages[size_t(t)];
        if (t < smp.reply_len) {
          mask[j] = 1.0f;
          old[j] = smp.old_logprobs[size_t(t)];
        }
      }
    }
    auto tensor = [&](const std::vector<float>& v) { return Tensor::from_vector(v, {B, S}); };
    return PpoTargets{tensor(old), tensor(old_v), tensor(adv), tensor(ret), tensor(mask), tensor(vmask)};
  };

  Progress progress("ppo", total_updates_, {.unit = "updates", .quiet = !options_.progress});
  progress.set(s.update);
  using clock = std::chrono::steady_clock;
  auto row_start = clock::now();
  double row_loss = 0;
  int64_t row_updates = 0, row_tokens = 0;
  int64_t epoch_seen = s.epoch;

  while (s.update < end_update) {
    const int64_t update = s.update + 1;
    std::vector<Sample> samples = sample_replies(update);
    score_rollouts(samples);
    PpoUpdateMetrics m;
    const double returns_ms = advantages(samples, m);

    double loss_sum = 0;
    int64_t step_count = 0;
    for (int64_t epoch = 0; epoch < c.num_ppo_epochs; ++epoch) {
      const std::vector<size_t> order =
          permutation(samples.size(), mix64(uint64_t(c.seed) ^ mix64(uint64_t(update) * 7919 + uint64_t(epoch))));
      for (int64_t mb = 0; mb < c.num_mini_batches; ++mb) {
        const int64_t step = (update - 1) * steps_per_update + epoch * c.num_mini_batches + mb + 1;
        const double lr = sft_learning_rate(schedule, s.lr, step, total_steps);
        s.optimizer->set_lr(float(lr));
        s.optimizer->zero_grad();
        PpoLossStats mb_stats;
        for (int64_t a = 0; a < c.grad_accum; ++a) {
          const size_t begin = size_t((mb * c.grad_accum + a) * micro);
          std::span<const size_t> rows(order.data() + begin, size_t(micro));
          ColumnBatch b = column_batch(samples, rows, s.pad_id);
          Tensor hidden = model.hidden_states(on_device(b.ids, model.device()));
          Tensor logp = tempered_logprobs(model.head_logits(hidden), b.targets, c.temperature);
          Tensor values = reshape(value_head.forward(hidden), {b.ids.size(0), b.S});
          PpoLossStats st;
          Tensor loss = ppo_loss(logp, values, loss_targets(samples, rows, b), loss_config, &st);
          if (!std::isfinite(st.loss))
            stopped(detail::concat("the training loss became ", st.loss, " at update ", update));
          // The value head regresses the returns: a loss 10^4 times their mean square (a head
          // predicting 0 scores half of it) means it diverged, even while the float64 sum is finite.
          if (!(st.vf_loss <= 1e4 * (1.0 + returns_ms)))
            stopped(detail::concat("the value loss exploded at update ", update, ": ", st.vf_loss,
                                   " against returns of mean square ", returns_ms));
          scale(loss, float(1.0 / double(c.grad_accum))).backward();
          const double w = 1.0 / double(c.grad_accum);
          mb_stats.loss += st.loss * w;
          mb_stats.pg_loss += st.pg_loss * w;
          mb_stats.vf_loss += st.vf_loss * w;
          mb_stats.pg_clipfrac += st.pg_clipfrac * w;
          mb_stats.vf_clipfrac += st.vf_clipfrac * w;
          mb_stats.approxkl += st.approxkl * w;
          mb_stats.ratio += st.ratio * w;
          row_tokens += b.ids.numel();
        }
        const float norm = global_grad_norm(s.trainable);
        if (!std::isfinite(norm)) stopped(detail::concat("the gradient norm became ", norm, " at update ", update));
        s.optimizer->step(c.clip > 0 ? clip_coefficient(norm, float(c.clip)) : 1.0f);
        loss_sum += mb_stats.loss;
        m.pg_loss += mb_stats.pg_loss;
        m.vf_loss += mb_stats.vf_loss;
        m.pg_clipfrac += mb_stats.pg_clipfrac;
        m.vf_clipfrac += mb_stats.vf_clipfrac;
        m.approxkl += mb_stats.approxkl;
        m.ratio += mb_stats.ratio;
        ++step_count;
      }
    }
    for (double* v : {&m.pg_loss, &m.vf_loss, &m.pg_clipfrac, &m.vf_clipfrac, &m.approxkl, &m.ratio})
      *v /= double(step_count);
    if (c.target_kl > 0) s.kl->update(m.kl, c.batch);
    s.update = update;
    s.last = m;
    row_loss += loss_sum / double(step_count);
    row_updates += 1;

    const bool last = update == total_updates_;
    const bool epoch_ended = s.position >= int64_t(s.order.size()) && s.epoch >= epoch_seen;
    if (epoch_ended) epoch_seen = s.epoch + 1;
    const bool eval_now = !s.val.empty() && (last || (c.eval_every > 0 ? update % c.eval_every == 0 : epoch_ended));
    double val = std::nan("");
    if (eval_now) {
      val = s.last_val = validation_reward();
      if (options_.log) {
        char line[200];
        std::snprintf(line, sizeof line, "update %lld/%lld  score %.4f  kl %.4f  validation reward %.4f",
                      (long long)update, (long long)total_updates_, m.score, m.kl, val);
        options_.log(line);
      }
    }
    if (update % c.log_every == 0 || eval_now || last || update == end_update) {
      const double seconds = std::chrono::duration<double>(clock::now() - row_start).count();
      const double lr = sft_learning_rate(schedule, s.lr, update * steps_per_update, total_steps);
      LossRow row{update, lr, row_loss / double(row_updates), std::nan(""),
                  seconds > 0 ? double(row_tokens) / seconds : 0};
      s.rows.push_back(row);
      append_loss_csv(csv_path, row);
      MetricsRow mrow{update, m, val};
      s.metric_rows.push_back(mrow);
      append_csv_line(metrics_path, metrics_line(mrow));
      row_start = clock::now();
      row_loss = 0;
      row_updates = row_tokens = 0;
    }
    if (c.checkpoint_every > 0 && update % c.checkpoint_every == 0) save_checkpoint();
    if (eval_now || update % 10 == 0) write_plots();
    char extra[200];
    std::snprintf(extra, sizeof extra, "score %.3f  kl %.3f  clip %.3f  vf %.4f", m.score, m.kl, m.pg_clipfrac,
                  m.vf_loss);
    progress.set_extra(extra);
    progress.set(s.update);
  }
  progress.finish();

  PpoResult result;
  result.update = s.update;
  result.total_updates = total_updates_;
  result.finished = s.update >= total_updates_;
  result.train = s.last;
  result.val_reward = s.last_val;
  result.train_prompts = int64_t(s.train.size());
  result.val_prompts = int64_t(s.val.size());
  if (s.last_checkpoint_update != s.update && (!result.finished || c.checkpoint_every > 0)) save_checkpoint();
  write_plots();
  if (result.finished) {
    result.value_head_path = (out / "value_head.safetensors").string();
    save_safetensors(result.value_head_path,
                     {{kValueHeadWeight, value_head.weight.detach()}, {kValueHeadBias, value_head.bias.detach()}},
                     {{"format", "pt"}});
    const FinetunedOutputs written = save_finetuned_outputs(out.string(), model, s.lora, c.merge != 0, *s.tok,
                                                            s.loaded.generation, *s.chat_template, c.model, options_.log);
    result.adapter_dir = written.adapter_dir;
    result.model_dir = written.model_dir;
  }
  return result;
}

std::string PpoTrainer::checkpoint_dir(const std::string& out_dir) { return trainer_checkpoint_dir(out_dir); }

}  // namespace kotoba::train
