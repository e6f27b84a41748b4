// GRPO: rewards, advantages, the clipped surrogate and the loop (train/grpo.h). Determinism: the
// prompt order of epoch e is a permutation drawn from (seed, e), and the completions of a step
// are sampled from generators seeded by (seed, step, micro-batch), so the trainable weights, the
// optimizer moments and (epoch, position) are the whole state a resumed run needs. With
// num_iterations mu > 1 a generated batch serves mu steps and lives only in memory, so
// checkpoints are written at the end of a batch's last step only.
#include "train/grpo.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <optional>


#include "core/progress.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/packing.h"
#include "data/preference_data.h"
#include "infer/generate.h"
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
#include "train/reward_model_reward.h"
#include "train/rollout.h"
#include "train/sft.h"

namespace kotoba::train {

namespace fs = std::filesystem;

// ---- advantages and the loss ----

const char* grpo_loss_type_name(GrpoLossType type) {
  switch (type) {
    case GrpoLossType::grpo: return "grpo";
    case GrpoLossType::bnpo: return "bnpo";
    case GrpoLossType::dr_grpo: return "dr_grpo";
    case GrpoLossType::dapo: return "dapo";
  }
  return "?";
}

GrpoLossType parse_grpo_loss_type(const std::string& name) {
  if (name == "grpo") return GrpoLossType::grpo;
  if (name == "bnpo") return GrpoLossType::bnpo;
  if (name == "dr_grpo") return GrpoLossType::dr_grpo;
  if (name == "dapo") return GrpoLossType::dapo;
  throw Error("grpo: unknown loss_type '" + name + "' (expected dapo, grpo, bnpo or dr_grpo)");
}

namespace {
// Unbiased standard deviation (torch.std) of v[begin, end).
double stddev(const std::vector<double>& v, size_t begin, size_t end) {
  const size_t n = end - begin;
  if (n < 2) return std::nan("");  // torch gives NaN for one value
  double mean = 0;
  for (size_t i = begin; i < end; ++i) mean += v[i];
  mean /= double(n);
  double ss = 0;
  for (size_t i = begin; i < end; ++i) ss += (v[i] - mean) * (v[i] - mean);
  return std::sqrt(ss / double(n - 1));
}
}  // namespace

std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t group, const std::string& scale) {
  KOTOBA_CHECK(group > 0 && rewards.size() % size_t(group) == 0, "group_advantages: ", rewards.size(),
               " rewards do not split into groups of ", group);
  KOTOBA_CHECK(scale == "group" || scale == "batch" || scale == "none", "grpo: unknown scale_rewards '", scale,
               "' (expected group, batch or none)");
  std::vector<double> out(rewards.size());
  const double batch_std = scale == "batch" ? stddev(rewards, 0, rewards.size()) : 0.0;
  for (size_t g = 0; g < rewards.size(); g += size_t(group)) {
    double mean = 0;
    for (size_t i = g; i < g + size_t(group); ++i) mean += rewards[i];
    mean /= double(group);
    double denom = 1.0;
    if (scale == "group") denom = stddev(rewards, g, g + size_t(group)) + 1e-4;
    if (scale == "batch") denom = batch_std + 1e-4;
    for (size_t i = g; i < g + size_t(group); ++i) out[i] = (rewards[i] - mean) / denom;
  }
  return out;
}

GrpoLoss grpo_loss(const Tensor& policy_in, const Tensor& targets_in, const std::vector<float>& old,
                   const std::vector<float>& ref, const std::vector<double>& advantages, const GrpoLossOptions& o) {
  KOTOBA_CHECK(policy_in.defined() && policy_in.ndim() == 2, "grpo_loss: the policy log-probabilities must be (B, T)");
  const int64_t B = policy_in.size(0), T = policy_in.size(1), N = B * T;
  KOTOBA_CHECK(targets_in.shape() == policy_in.shape(), "grpo_loss: targets ", shape_str(targets_in.shape()),
               " do not match the log-probabilities ", shape_str(policy_in.shape()));
  KOTOBA_CHECK(old.empty() || int64_t(old.size()) == N, "grpo_loss: ", old.size(), " old log-probabilities for ", N,
               " positions");
  KOTOBA_CHECK(o.beta == 0 || int64_t(ref.size()) == N, "grpo_loss: beta ", o.beta, " needs ", N,
               " reference log-probabilities, got ", ref.size());
  KOTOBA_CHECK(int64_t(advantages.size()) == B, "grpo_loss: ", advantages.size(), " advantages for ", B, " rows");
  const std::vector<float> lp = policy_in.to_vector();
  Tensor targets = targets_in.device() == Device::cpu ? targets_in.contiguous() : to_device(targets_in, Device::cpu);
  const int32_t* t = targets.data<int32_t>();
  std::vector<int64_t> counts(size_t(B), 0);
  int64_t tokens = 0;
  for (int64_t n = 0; n < N; ++n)
    if (t[n] != data::kIgnoreLabel) {
      ++counts[size_t(n / T)];
      ++tokens;
    }
  // Each token's weight in the aggregate.
  std::vector<double> row_weight(size_t(B), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    switch (o.loss_type) {
      case GrpoLossType::grpo: row_weight[size_t(b)] = 1.0 / (double(std::max<int64_t>(1, counts[size_t(b)])) * double(B)); break;
      case GrpoLossType::bnpo: row_weight[size_t(b)] = 1.0 / double(std::max<int64_t>(1, tokens)); break;
      case GrpoLossType::dr_grpo: row_weight[size_t(b)] = 1.0 / (double(B) * double(o.max_completion_length)); break;
      case GrpoLossType::dapo:
        row_weight[size_t(b)] = 1.0 / (o.normalizer > 0 ? o.normalizer : double(std::max<int64_t>(1, tokens)));
        break;
    }
  }
  std::vector<double> dlp(size_t(N), 0.0);
  double total = 0, kl_sum = 0;
  int64_t clipped = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (t[n] == data::kIgnoreLabel) continue;
    const int64_t b = n / T;
    const double a = advantages[size_t(b)], l = lp[size_t(n)];
    const double ratio = old.empty() ? 1.0 : std::exp(l - double(old[size_t(n)]));
    const double clamped = std::clamp(ratio, 1.0 - o.epsilon_low, 1.0 + o.epsilon_high);
    const double u = ratio * a, c = clamped * a;
    double loss = -std::min(u, c);
    // torch.min passes the gradient to the smaller term (half to each on a tie, which for a ratio
    // inside the clip range gives the whole of it); the clamped term has none outside the range.
    double d = u <= c ? -a * ratio : 0.0;
    if (u > c) ++clipped;
    if (o.beta != 0) {
      const double x = double(ref[size_t(n)]) - l;
      const double k = std::exp(x) - x - 1.0;
      loss += o.beta * k;
      d += o.beta * (1.0 - std::exp(x));
      kl_sum += k;
    }
    total += loss * row_weight[size_t(b)];
    dlp[size_t(n)] = d * row_weight[size_t(b)];
  }
  GrpoMetrics m;
  m.loss = total;
  m.tokens = tokens;
  m.kl = tokens > 0 ? kl_sum / double(tokens) : 0.0;
  m.clip_ratio = tokens > 0 ? double(clipped) / double(tokens) : 0.0;
  const Device device = policy_in.device();
  auto meta = policy_in.autograd_meta();
  Tensor loss = record("grpo_loss", Tensor::full({}, float(total), DType::f32, device), {&policy_in},
                       [meta, dlp, B, T, device](const Tensor& grad_out) {
                         GradTarget target = grad_target(meta, {B, T}, DType::f32, device);
                         if (!target) return;
                         const double up = grad_out.to_vector()[0];
                         std::vector<float> g(dlp.size());
                         for (size_t i = 0; i < g.size(); ++i) g[i] = float(up * dlp[i]);
                         if (target.accumulate) {
                           const std::vector<float> prev = target.tensor.to_vector();
                           for (size_t i = 0; i < g.size(); ++i) g[i] += prev[i];
                         }
                         target.tensor.copy_from(Tensor::from_vector(g, {B, T}));
                       });
  return {loss, m};
}

// ---- config ----

std::span<const ConfigField<GrpoConfig>> grpo_config_fields() {
  using C = GrpoConfig;
  static const ConfigField<C> fields[] = {
      {"model", &C::model, "model directory to train (usually an SFT result)", true},
      {"data", &C::data, "prompts: JSONL/JSON records with a prompt (any preference shape: only prompts are used)", true},
      {"format", &C::format, "data shape: auto, prompts, pairs, choice or ranked", true},
      {"val_data", &C::val_data, "validation prompts (mean reward of one sample each)", true},
      {"val_fraction", &C::val_fraction, "share of the prompts held out for validation when val_data is empty", true},
      {"chat_template", &C::chat_template, "chatml, llama2, alpaca or plain; auto: the model's, else alpaca", true},
      {"reward", &C::reward, "a rule reward: ends-with:TEXT, contains:TEXT or regex:PATTERN (1 or 0)", true},
      {"reward_cmd", &C::reward_cmd,
       "a checker command: JSONL {prompt, completion} on stdin, one score a line on stdout", true},
      {"reward_model", &C::reward_model,
       "a reward-model directory (`kotoba reward`'s OUT/model): its score of prompt + completion", true},
      {"num_generations", &C::num_generations, "completions sampled per prompt (the group)", true},
      {"max_completion_length", &C::max_completion_length, "tokens per completion at most", true},
      {"temperature", &C::temperature, "sampling temperature", true},
      {"top_k", &C::top_k, "sampling: keep the k most probable tokens (0: off)", true},
      {"top_p", &C::top_p, "sampling: nucleus mass (1: off)", true},
      {"beta", &C::beta, "KL coefficient towards the reference (0: none, TRL's default)", true},
      {"epsilon", &C::epsilon, "clipping of the probability ratio (TRL's 0.2)", true},
      {"epsilon_high", &C::epsilon_high, "upper clipping (0: epsilon; DAPO uses 0.28)", true},
      {"loss_type", &C::loss_type, "dapo (TRL's default), grpo, bnpo or dr_grpo", true},
      {"scale_rewards", &C::scale_rewards, "advantage scaling: group (std of the group), batch or none", true},
      {"num_iterations", &C::num_iterations, "optimizer steps per generated batch (mu)", true},
      {"batch", &C::batch, "prompts per micro-batch (each with num_generations completions)", true},
      {"grad_accum", &C::grad_accum, "micro-batches per optimizer step", true},
      {"epochs", &C::epochs, "passes over the prompts (when steps is 0)", false},
      {"steps", &C::steps, "optimizer steps (0: from epochs)", false},
      {"lr", &C::lr, "peak learning rate (0: 1e-6 full as TRL's GRPOConfig, 1e-5 LoRA)", true},
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
      {"seed", &C::seed, "seed of the prompt order, sampling and LoRA init", true},
      {"threads", &C::threads, "CPU threads (0: all cores)", false},
      {"device", &C::device, "where the policy trains: cpu or cuda", false},
      {"out", &C::out, "output directory", false},
  };
  return fields;
}

void validate_grpo_config(const GrpoConfig& c) {
  parse_device(c.device, "grpo config: 'device'");
  auto positive = [](int64_t v, const char* name) {
    KOTOBA_CHECK(v > 0, "grpo config: '", name, "' must be positive, got ", v);
  };
  auto non_negative = [](double v, const char* name) {
    KOTOBA_CHECK(v >= 0, "grpo config: '", name, "' must not be negative, got ", v);
  };
  KOTOBA_CHECK(!c.model.empty(), "grpo config: 'model' (the model directory to train) is required");
  KOTOBA_CHECK(c.val_fraction >= 0 && c.val_fraction < 1, "grpo config: 'val_fraction' must be in [0, 1), got ",
               c.val_fraction);
  KOTOBA_CHECK(c.num_generations >= 2, "grpo config: 'num_generations' must be at least 2 (advantages compare a group), got ",
               c.num_generations);
  positive(c.max_completion_length, "max_completion_length");
  KOTOBA_CHECK(c.temperature > 0, "grpo config: 'temperature' must be positive, got ", c.temperature);
  non_negative(double(c.top_k), "top_k");
  KOTOBA_CHECK(c.top_p > 0 && c.top_p <= 1, "grpo config: 'top_p' must be in (0, 1], got ", c.top_p);
  non_negative(c.beta, "beta");
  KOTOBA_CHECK(c.epsilon > 0 && c.epsilon < 1, "grpo config: 'epsilon' must be in (0, 1), got ", c.epsilon);
  non_negative(c.epsilon_high, "epsilon_high");
  parse_grpo_loss_type(c.loss_type);
  KOTOBA_CHECK(c.scale_rewards == "group" || c.scale_rewards == "batch" || c.scale_rewards == "none",
               "grpo config: 'scale_rewards' must be group, batch or none, got '", c.scale_rewards, "'");
  positive(c.num_iterations, "num_iterations");
  positive(c.batch, "batch");
  positive(c.grad_accum, "grad_accum");
  positive(c.log_every, "log_every");
  KOTOBA_CHECK(c.steps > 0 || c.epochs > 0, "grpo config: give 'steps' or a positive 'epochs'");
  non_negative(c.epochs, "epochs");
  non_negative(double(c.steps), "steps");
  validate_optimizer_config(c, "grpo");
  validate_lora_config(c, "grpo");
  KOTOBA_CHECK(c.lora_r > 0 || (c.lora_targets.empty() && c.merge == 0),
               "grpo config: 'lora_targets' and 'merge' apply with LoRA (set 'lora_r')");
  KOTOBA_CHECK(c.merge == 0 || c.merge == 1, "grpo config: 'merge' must be 0 or 1, got ", c.merge);
  validate_run_config(c, "grpo");
  KOTOBA_CHECK(!c.out.empty(), "grpo config: 'out' (the output directory) is required");
}

// ---- the trainer ----

namespace {

constexpr CheckpointKind kCheckpoint{"kotoba-grpo-checkpoint", "GRPO", 1};
constexpr const char* kMetricsHeader = "step,loss,reward,reward_std,kl,clip_ratio,completion_length,val_reward\n";

struct MetricsRow {
  int64_t step = 0;
  GrpoStepMetrics m;
  double val_reward = std::nan("");
};

std::string metrics_line(const MetricsRow& r) {
  const double values[] = {r.m.loss, r.m.reward, r.m.reward_std, r.m.kl, r.m.clip_ratio, r.m.completion_length,
                           r.val_reward};
  return csv_line(r.step, values);
}

std::vector<MetricsRow> read_metrics_csv(const std::string& path, int64_t up_to_step) {
  std::vector<MetricsRow> rows;
  for (const CsvRow& c : read_csv_rows(path, 8, up_to_step)) {
    const std::vector<double>& v = c.values;
    rows.push_back({c.step, {v[0], v[1], v[2], v[3], v[4], v[5]}, v[6]});
  }
  return rows;
}

// One micro-batch of completions with everything the loss needs.
struct Rollout {
  SftBatch batch;                  // rows: prompt + completion, targets on the completion
  std::vector<double> advantages;  // per row
  std::vector<float> old, ref;     // per position (empty when not needed)
  std::vector<double> rewards;
  double completion_tokens = 0;
};

}  // namespace

struct GrpoTrainer::State {
  LoadedModel loaded;
  LoadedModel reference;  // full training with beta > 0: a frozen copy of the start
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::optional<chat::ChatTemplate> chat_template;
  std::optional<nn::LoraConfig> lora;
  RewardFunction reward;
  GrpoLossOptions loss;
  std::vector<data::PreferencePair> train, val;
  std::vector<std::vector<int32_t>> train_prompt_ids, val_prompt_ids;
  int32_t pad_id = 0;
  double lr = 0;
  std::unique_ptr<AdamW> optimizer;
  std::vector<Tensor> trainable;

  int64_t epoch = -1;
  std::vector<size_t> order;
  int64_t position = 0;

  std::vector<Rollout> rollouts;  // the generated batch of the current num_iterations cycle
  int64_t step = 0, last_checkpoint_step = 0;
  bool resumed = false;
  GrpoStepMetrics last;
  double last_val = std::nan("");
  std::vector<LossRow> rows;
  std::vector<MetricsRow> metric_rows;
};

GrpoTrainer::GrpoTrainer(GrpoConfig config, GrpoOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_grpo_config(config_);
  KOTOBA_CHECK(!config_.data.empty(), "grpo config: 'data' (the prompts) is required");
  config_.data = fs::absolute(config_.data).lexically_normal().string();
  if (!config_.val_data.empty()) config_.val_data = fs::absolute(config_.val_data).lexically_normal().string();
  std::vector<data::PreferencePair> train = data::read_preference_dataset(config_.data, config_.format);
  std::vector<data::PreferencePair> val;
  if (!config_.val_data.empty()) val = data::read_preference_dataset(config_.val_data, config_.format);
  setup(std::move(train), std::move(val));
}

GrpoTrainer::GrpoTrainer(GrpoConfig config, std::vector<data::PreferencePair> prompts,
                         std::vector<data::PreferencePair> val, GrpoOptions options)
    : config_(std::move(config)), options_(std::move(options)), state_(std::make_unique<State>()) {
  validate_grpo_config(config_);
  setup(std::move(prompts), std::move(val));
}

GrpoTrainer::~GrpoTrainer() = default;

void GrpoTrainer::setup(std::vector<data::PreferencePair> prompts, std::vector<data::PreferencePair> val) {
  config_.model = fs::absolute(config_.model).lexically_normal().string();
  State& s = *state_;
  if (options_.reward) {
    s.reward = options_.reward;
  } else {
    const int given =
        int(!config_.reward.empty()) + int(!config_.reward_cmd.empty()) + int(!config_.reward_model.empty());
    KOTOBA_CHECK(given == 1, "grpo: give exactly one reward (", given,
                 " given): --reward (ends-with:TEXT, contains:TEXT, regex:PATTERN), --reward-cmd CMD or "
                 "--reward-model RM_DIR (config keys reward, reward_cmd, reward_model)");
    if (!config_.reward.empty()) {
      s.reward = rule_reward(config_.reward);
    } else if (!config_.reward_cmd.empty()) {
      s.reward = command_reward(config_.reward_cmd);
    } else {
      config_.reward_model = fs::absolute(config_.reward_model).lexically_normal().string();
      try {
        s.reward = reward_model_reward(config_.reward_model, 1024, 16, options_.log);
      } catch (const Error& e) {
        throw Error(detail::concat("grpo: --reward-model (config key reward_model): ", e.what()));
      }
    }
  }
  s.loss.epsilon_low = config_.epsilon;
  s.loss.epsilon_high = config_.epsilon_high > 0 ? config_.epsilon_high : config_.epsilon;
  s.loss.beta = config_.beta;
  s.loss.loss_type = parse_grpo_loss_type(config_.loss_type);
  s.loss.max_completion_length = config_.max_completion_length;

  s.loaded = load_model_dir(config_.model);
  s.tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load_dir(s.loaded.dir));
  KOTOBA_CHECK(s.tok->vocab_size() <= s.loaded.model->vocab_size(), "grpo: the tokenizer of ", config_.model, " has ",
               s.tok->vocab_size(), " tokens but the model only ", s.loaded.model->vocab_size(), " rows");
  s.chat_template.emplace(resolve_chat_template(config_.chat_template, s.loaded.dir, *s.tok, s.loaded.generation));
  s.pad_id = s.tok->pad_id().value_or(s.tok->eos_id().value_or(0));

  split_validation(prompts, val, config_.val_fraction, config_.seed);
  KOTOBA_CHECK(!prompts.empty(), "grpo: ", config_.data.empty() ? std::string("the data") : config_.data,
               " leaves no training prompt");
  s.train = std::move(prompts);
  s.val = std::move(val);
  const int64_t context = s.loaded.model->max_positions();
  s.train_prompt_ids =
      encode_rollout_prompts(s.train, *s.chat_template, *s.tok, config_.max_completion_length, context, "grpo");
  s.val_prompt_ids =
      encode_rollout_prompts(s.val, *s.chat_template, *s.tok, config_.max_completion_length, context, "grpo");

  nn::CausalLM& model = *s.loaded.model;
  if (config_.lora_r > 0) {
    s.lora = lora_config_from_settings(config_.lora_r, config_.lora_alpha, 0.0, config_.lora_targets,
                                       model.model_type(), "grpo");
    nn::apply_lora(model, *s.lora, mix64(uint64_t(config_.seed) ^ 0x10a1a17ull));
  } else {
    model.set_requires_grad(true);
    if (config_.beta > 0) {
      s.reference = load_model_dir(config_.model);
      s.reference.model->set_requires_grad(false);
      s.reference.model->eval();
    }
  }
  model.eval();  // dropout off, as TRL's disable_dropout
  s.lr = config_.lr > 0 ? config_.lr : (config_.lora_r > 0 ? 1e-5 : 1e-6);
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) trainable.emplace_back(name, p);
  for (auto& [name, p] : trainable) s.trainable.push_back(p);
  // Before the optimizer: its moments are made beside the parameters (Module::to keeps the
  // tensors' identity, so `trainable` follows the move).
  if (const Device device = parse_device(config_.device, "grpo config: 'device'"); device != Device::cpu) {
    model.to(device);
    if (s.reference.model) s.reference.model->to(device);
  }
  s.optimizer = std::make_unique<AdamW>(trainable, AdamWConfig{.lr = float(s.lr), .beta1 = float(config_.beta1),
                                                               .beta2 = float(config_.beta2), .eps = float(config_.eps),
                                                               .weight_decay = float(config_.weight_decay)});
  const int64_t per_generation = config_.batch * config_.grad_accum;
  total_steps_ = config_.steps > 0
                     ? config_.steps
                     : std::max<int64_t>(1, int64_t(std::ceil(config_.epochs * double(s.train.size()) /
                                                              double(per_generation)))) *
                           config_.num_iterations;
}

nn::CausalLM& GrpoTrainer::model() { return *state_->loaded.model; }
const tokenizer::Tokenizer& GrpoTrainer::tokenizer() const { return *state_->tok; }
const chat::ChatTemplate& GrpoTrainer::chat_template() const { return *state_->chat_template; }
std::string GrpoTrainer::trainable_parameters_report() const {
  return nn::trainable_parameters_report(*state_->loaded.model);
}

namespace {

infer::GenerationOptions sampling_options(const GrpoConfig& c, const tokenizer::Tokenizer& tok,
                                          const chat::ChatTemplate& tmpl, int64_t n) {
  return rollout_sampling_options({c.max_completion_length, c.temperature, c.top_k, c.top_p}, tok, tmpl, n);
}

}  // namespace

double GrpoTrainer::validation_reward() {
  State& s = *state_;
  if (s.val.empty()) return std::nan("");
  infer::GenerationOptions o = sampling_options(config_, *s.tok, *s.chat_template, 1);
  for (size_t i = 0; i < s.val_prompt_ids.size(); ++i)
    o.prompt_seeds.push_back(mix64(uint64_t(config_.seed) ^ 0x7a1ull ^ mix64(i)));
  const std::vector<infer::GenerationResult> results = infer::generate_batch(*s.loaded.model, s.val_prompt_ids, o);
  std::vector<RewardInput> inputs;
  for (size_t i = 0; i < results.size(); ++i)
    inputs.push_back({&s.val[i].prompt, completion_text(results[i].sequences[0], *s.tok, o.stop_strings)});
  const std::vector<double> r = s.reward(inputs);
  KOTOBA_CHECK(r.size() == inputs.size(), "grpo: the reward gave ", r.size(), " scores for ", inputs.size(),
               " completions");
  return std::accumulate(r.begin(), r.end(), 0.0) / double(r.size());
}

// ---- checkpoints ----

void GrpoTrainer::save_checkpoint() {
  State& s = *state_;
  save_trainer_checkpoint(checkpoint_dir(config_.out), *s.optimizer, kCheckpoint,
                          {{"step", s.step},
                           {"total_steps", total_steps_},
                           {"epoch", s.epoch},
                           {"position", s.position},
                           {"train_loss", json_number(s.last.loss)},
                           {"reward", json_number(s.last.reward)},
                           {"val_reward", json_number(s.last_val)},
                           {"config", config_to_json(config_, grpo_config_fields())}});
  s.last_checkpoint_step = s.step;
}

GrpoConfig GrpoTrainer::read_checkpoint_config(const std::string& out_dir) {
  return read_trainer_checkpoint_config(TrainerState(out_dir, kCheckpoint), grpo_config_fields());
}

void GrpoTrainer::resume() {
  State& s = *state_;
  const TrainerState state = read_resumable_trainer_state(config_, kCheckpoint, grpo_config_fields());
  const std::string& state_path = state.path();
  const int64_t step = state.integer("step");
  KOTOBA_CHECK(step >= 0 && step <= total_steps_ && step % config_.num_iterations == 0, state_path, ": step ", step,
               " is beyond the run's ", total_steps_, " steps or inside a generated batch");
  restore_trainer_checkpoint(state, *s.optimizer);
  s.step = step;
  const int64_t epoch = state.integer("epoch"), position = state.integer("position");
  if (epoch >= 0) {
    s.epoch = epoch;
    s.order = permutation(s.train.size(), mix64(uint64_t(config_.seed) + uint64_t(epoch)));
    KOTOBA_CHECK(position >= 0 && position <= int64_t(s.order.size()), state_path, ": position ", position,
                 " is outside epoch ", epoch);
    s.position = position;
  }
  s.last.loss = state.optional_number("train_loss");
  s.last.reward = state.optional_number("reward");
  s.last_val = state.optional_number("val_reward");
  s.last_checkpoint_step = step;
  s.resumed = true;
  s.rows = read_loss_csv((fs::path(config_.out) / "loss.csv").string(), step);
  s.metric_rows = read_metrics_csv((fs::path(config_.out) / "metrics.csv").string(), step);
  if (options_.log)
    options_.log("resumed from " + state.dir() + " at step " + std::to_string(step) + " of " +
                 std::to_string(total_steps_));
}

// ---- the loop ----

GrpoResult GrpoTrainer::run(int64_t stop_after_step) {
  State& s = *state_;
  const GrpoConfig& c = config_;
  fs::path out(c.out);
  prepare_output_dir("grpo", c.out, s.resumed);
  const std::string csv_path = (out / "loss.csv").string(), metrics_path = (out / "metrics.csv").string();
  write_loss_csv(csv_path, s.rows);
  write_csv_file(metrics_path, kMetricsHeader, s.metric_rows, metrics_line);
  auto write_plots = [&]() {
    write_loss_plot((out / "loss.png").string(), s.rows, "GRPO loss");
    Series reward{"mean reward", {}, {}}, val{"validation reward", {}, {}};
    for (const auto& r : s.metric_rows) {
      reward.x.push_back(double(r.step));
      reward.y.push_back(r.m.reward);
      if (std::isfinite(r.val_reward)) {
        val.x.push_back(double(r.step));
        val.y.push_back(r.val_reward);
      }
    }
    if (!s.metric_rows.empty())
      write_line_plot((out / "reward.png").string(), {reward, val}, "GRPO reward", "step", "reward");
  };
  const int64_t end_step = stop_after_step > 0 ? std::min(stop_after_step, total_steps_) : total_steps_;
  nn::CausalLM& model = *s.loaded.model;
  const double explode_nll = 4.0 * std::log(double(model.vocab_size()));
  auto stopped = [&](const std::string& what) {
    throw Error(stopped_message("grpo", what, "step", s.last_checkpoint_step, checkpoint_dir(c.out)));
  };
  SftConfig schedule;
  schedule.warmup = c.warmup;
  schedule.min_lr = c.min_lr;
  const std::vector<std::string> stops = s.chat_template->stop_strings();

  // Generates the micro-batches of one num_iterations cycle.
  auto generate_rollouts = [&](int64_t step) {
    s.rollouts.clear();
    for (int64_t m = 0; m < c.grad_accum; ++m) {
      if (s.epoch < 0 || s.position >= int64_t(s.order.size())) {
        s.epoch += 1;
        s.position = 0;
        s.order = permutation(s.train.size(), mix64(uint64_t(c.seed) + uint64_t(s.epoch)));
      }
      const int64_t begin = s.position, end = std::min(int64_t(s.order.size()), s.position + c.batch);
      s.position = end;
      std::vector<size_t> picked(s.order.begin() + begin, s.order.begin() + end);
      std::vector<std::vector<int32_t>> prompts;
      for (size_t i : picked) prompts.push_back(s.train_prompt_ids[i]);
      // One batch over a KV cache, each prompt's G completions drawn from a seed of its own.
      infer::GenerationOptions o = sampling_options(c, *s.tok, *s.chat_template, c.num_generations);
      for (size_t k = 0; k < picked.size(); ++k)
        o.prompt_seeds.push_back(
            mix64(uint64_t(c.seed) ^ mix64(uint64_t(step) * 1000003 + uint64_t(m) * 1009 + uint64_t(k))));
      const std::vector<infer::GenerationResult> results = infer::generate_batch(model, prompts, o);
      Rollout r;
      std::vector<RewardInput> inputs;
      std::vector<data::PackingExample> rows;
      for (size_t k = 0; k < picked.size(); ++k)
        for (const auto& seq : results[k].sequences) {
          inputs.push_back({&s.train[picked[k]].prompt, completion_text(seq, *s.tok, stops)});
          data::PackingExample e;
          e.ids = prompts[k];
          e.labels.assign(prompts[k].size(), data::kIgnoreLabel);
          for (int32_t id : seq.ids) {
            e.ids.push_back(id);
            e.labels.push_back(id);
          }
          if (seq.ids.empty()) {  // nothing generated (context full): score nothing
            e.ids.push_back(s.pad_id);
            e.labels.push_back(data::kIgnoreLabel);
          }
          r.completion_tokens += double(seq.ids.size());
          rows.push_back(std::move(e));
        }
      r.rewards = s.reward(inputs);
      KOTOBA_CHECK(r.rewards.size() == inputs.size(), "grpo: the reward gave ", r.rewards.size(), " scores for ",
                   inputs.size(), " completions");
      for (double v : r.rewards) KOTOBA_CHECK(std::isfinite(v), "grpo: the reward gave a non-finite score ", v);
      r.advantages = group_advantages(r.rewards, c.num_generations, c.scale_rewards);
      std::vector<const data::PackingExample*> ptrs;
      for (const auto& e : rows) ptrs.push_back(&e);
      r.batch = make_sft_batch(ptrs, s.pad_id);
      NoGradGuard no_grad;
      if (c.num_iterations > 1) r.old = sequence_logprobs(model, r.batch.ids, r.batch.targets).tokens.to_vector();
      if (c.beta > 0) {
        if (s.reference.model) {
          r.ref = sequence_logprobs(*s.reference.model, r.batch.ids, r.batch.targets).tokens.to_vector();
        } else {
          nn::LoraDisabled off(model);
          r.ref = sequence_logprobs(model, r.batch.ids, r.batch.targets).tokens.to_vector();
        }
      }
      s.rollouts.push_back(std::move(r));
    }
  };

  Progress progress("grpo", total_steps_, {.unit = "steps", .quiet = !options_.progress});
  progress.set(s.step);
  using clock = std::chrono::steady_clock;
  auto row_start = clock::now();
  double row_loss = 0;
  int64_t row_steps = 0, row_tokens = 0;
  int64_t epoch_seen = s.epoch;

  while (s.step < end_step) {
    const int64_t step = s.step + 1;
    if ((step - 1) % c.num_iterations == 0 || s.rollouts.empty()) generate_rollouts(step);
    const double lr = sft_learning_rate(schedule, s.lr, step, total_steps_);
    s.optimizer->set_lr(float(lr));
    s.optimizer->zero_grad();
    int64_t step_tokens = 0, step_rows = 0;
    for (const auto& r : s.rollouts) {
      step_tokens += r.batch.target_tokens;
      step_rows += r.batch.ids.size(0);
    }
    GrpoStepMetrics m;
    double kl_tokens = 0, reward_sum = 0, std_sum = 0, groups = 0, completion = 0;
    for (const auto& r : s.rollouts) {
      const int64_t rows = r.batch.ids.size(0);
      for (double v : r.rewards) reward_sum += v;
      for (size_t g = 0; g < r.rewards.size(); g += size_t(c.num_generations)) {
        std_sum += stddev(r.rewards, g, g + size_t(c.num_generations));
        groups += 1;
      }
      completion += r.completion_tokens;
      if (r.batch.target_tokens == 0) continue;
      SequenceLogprobs lp = sequence_logprobs(model, r.batch.ids, r.batch.targets);
      GrpoLossOptions lo = s.loss;
      lo.normalizer = double(step_tokens);
      GrpoLoss loss = grpo_loss(lp.tokens, r.batch.targets, r.old, r.ref, r.advantages, lo);
      if (!std::isfinite(loss.metrics.loss))
        stopped(detail::concat("the training loss became ", loss.metrics.loss, " at step ", step));
      const std::vector<float> sums = lp.sums.to_vector();
      const double nll = -std::accumulate(sums.begin(), sums.end(), 0.0) / double(r.batch.target_tokens);
      if (!(nll <= explode_nll))
        stopped(detail::concat("the policy's loss exploded at step ", step, ": its completions' negative ",
                               "log-likelihood reached ", nll, " per token (more than 4 ln V = ", explode_nll, ")"));
      // dapo is already normalised by the step's tokens; the others average their micro-batches
      // (grpo by sequences).
      double weight = 1.0;
      if (lo.loss_type == GrpoLossType::grpo) weight = double(rows) / double(step_rows);
      if (lo.loss_type == GrpoLossType::bnpo || lo.loss_type == GrpoLossType::dr_grpo)
        weight = 1.0 / double(s.rollouts.size());
      m.loss += loss.metrics.loss * weight;
      m.clip_ratio += loss.metrics.clip_ratio * double(loss.metrics.tokens) / double(step_tokens);
      kl_tokens += loss.metrics.kl * double(loss.metrics.tokens);
      row_tokens += r.batch.ids.numel();
      scale(loss.loss, float(weight)).backward();
    }
    const double n_completions = double(step_rows);
    m.kl = step_tokens > 0 ? kl_tokens / double(step_tokens) : 0.0;
    m.reward = reward_sum / n_completions;
    m.reward_std = groups > 0 ? std_sum / groups : 0.0;
    m.completion_length = completion / n_completions;
    const float norm = global_grad_norm(s.trainable);
    if (!std::isfinite(norm)) stopped(detail::concat("the gradient norm became ", norm, " at step ", step));
    s.optimizer->step(c.clip > 0 ? clip_coefficient(norm, float(c.clip)) : 1.0f);
    s.step = step;
    s.last = m;
    row_loss += m.loss;
    row_steps += 1;

    const bool last = step == total_steps_;
    const bool epoch_ended = s.position >= int64_t(s.order.size()) && s.epoch >= epoch_seen;
    if (epoch_ended) epoch_seen = s.epoch + 1;
    const bool eval_now = !s.val.empty() && (last || (c.eval_every > 0 ? step % c.eval_every == 0 : epoch_ended));
    double val = std::nan("");
    if (eval_now) {
      val = s.last_val = validation_reward();
      if (options_.log) {
        char line[160];
        std::snprintf(line, sizeof line, "step %lld/%lld  reward %.4f  validation reward %.4f", (long long)step,
                      (long long)total_steps_, m.reward, val);
        options_.log(line);
      }
    }
    if (step % c.log_every == 0 || eval_now || last || step == end_step) {
      const double seconds = std::chrono::duration<double>(clock::now() - row_start).count();
      LossRow row{step, lr, row_loss / double(row_steps), std::nan(""), seconds > 0 ? double(row_tokens) / seconds : 0};
      s.rows.push_back(row);
      append_loss_csv(csv_path, row);
      MetricsRow mrow{step, m, val};
      s.metric_rows.push_back(mrow);
      append_csv_line(metrics_path, metrics_line(mrow));
      row_start = clock::now();
      row_loss = 0;
      row_steps = row_tokens = 0;
    }
    const bool cycle_done = step % c.num_iterations == 0;
    if (c.checkpoint_every > 0 && cycle_done && (step / c.num_iterations) % std::max<int64_t>(1, c.checkpoint_every / c.num_iterations) == 0)
      save_checkpoint();
    if (eval_now) write_plots();
    char extra[160];
    std::snprintf(extra, sizeof extra, "reward %.3f  loss %.4f  kl %.4f  lr %.2e", m.reward, m.loss, m.kl, lr);
    progress.set_extra(extra);
    progress.set(s.step);
  }
  progress.finish();

  GrpoResult result;
  result.step = s.step;
  result.total_steps = total_steps_;
  result.finished = s.step >= total_steps_;
  result.train = s.last;
  result.val_reward = s.last_val;
  result.train_prompts = int64_t(s.train.size());
  result.val_prompts = int64_t(s.val.size());
  if (s.last_checkpoint_step != s.step && s.step % c.num_iterations == 0 && (!result.finished || c.checkpoint_every > 0))
    save_checkpoint();
  write_plots();
  if (result.finished) {
    const FinetunedOutputs written = save_finetuned_outputs(out.string(), model, s.lora, c.merge != 0, *s.tok,
                                                            s.loaded.generation, *s.chat_template, c.model, options_.log);
    result.adapter_dir = written.adapter_dir;
    result.model_dir = written.model_dir;
  }
  return result;
}

std::string GrpoTrainer::checkpoint_dir(const std::string& out_dir) { return trainer_checkpoint_dir(out_dir); }

}  // namespace kotoba::train
