// PPO's per-token rewards, GAE, whitening and clipped losses (see train/ppo_math.h). The losses
// are one autograd node each over the (B, T) log-probabilities and values: the forward is cheap
// scalar work in double, and the backward writes d loss / d logp and d loss / d v directly.
#include "train/ppo_math.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "ops/autograd.h"

namespace kotoba::train {

namespace {

void check_sizes(PpoShape shape, std::initializer_list<const std::vector<float>*> vectors, const char* what) {
  for (const std::vector<float>* v : vectors)
    KOTOBA_CHECK(int64_t(v->size()) == shape.size(), what, ": a per-token vector holds ", v->size(),
                 " values, expected batch ", shape.batch, " x length ", shape.length);
}

std::vector<float> host_values(const Tensor& t, const Shape& shape, const char* name) {
  KOTOBA_CHECK(t.defined(), "ppo_loss: ", name, " is undefined");
  KOTOBA_CHECK(t.shape() == shape, "ppo_loss: ", name, " has shape ", shape_str(t.shape()), ", expected ",
               shape_str(shape));
  KOTOBA_CHECK(t.dtype() == DType::f32, "ppo_loss: ", name, " must be f32, got ", dtype_name(t.dtype()));
  return t.to_vector();
}

// Writes `grad * upstream` into the gradient of the tensor `meta` belongs to, on its device (the
// (B, T) gradient is made on the host and copied over: a few KB).
void deliver(const std::shared_ptr<AutogradMeta>& meta, const Shape& shape, Device device,
             const std::vector<float>& grad, float upstream) {
  if (!meta || !meta->requires_grad) return;
  GradTarget target = grad_target(meta, shape, DType::f32, device);
  if (device == Device::cpu) {
    float* g = target.tensor.data<float>();
    for (size_t i = 0; i < grad.size(); ++i) g[i] = (target.accumulate ? g[i] : 0.0f) + upstream * grad[i];
    return;
  }
  std::vector<float> g = target.accumulate ? target.tensor.to_vector() : std::vector<float>(grad.size(), 0.0f);
  for (size_t i = 0; i < grad.size(); ++i) g[i] += upstream * grad[i];
  target.tensor.copy_from(Tensor::from_vector(g, shape));
}

}  // namespace

std::vector<float> token_kl(const std::vector<float>& logprobs, const std::vector<float>& ref_logprobs,
                            const std::vector<float>& mask, PpoShape shape, KlEstimator estimator) {
  check_sizes(shape, {&logprobs, &ref_logprobs, &mask}, "token_kl");
  std::vector<float> kl(logprobs.size(), 0.0f);
  for (size_t i = 0; i < kl.size(); ++i) {
    if (mask[i] == 0.0f) continue;
    const double log_ratio = double(ref_logprobs[i]) - double(logprobs[i]);  // log p_ref / p
    kl[i] = float(estimator == KlEstimator::k1 ? -log_ratio : std::expm1(log_ratio) - log_ratio);
  }
  return kl;
}

std::vector<float> token_rewards(const std::vector<float>& kl, const std::vector<float>& scores,
                                 const std::vector<float>& value_mask, PpoShape shape, double kl_coef) {
  check_sizes(shape, {&kl, &value_mask}, "token_rewards");
  KOTOBA_CHECK(int64_t(scores.size()) == shape.batch, "token_rewards: ", scores.size(), " scores for ", shape.batch,
               " rollouts");
  std::vector<float> rewards(kl.size());
  for (size_t i = 0; i < kl.size(); ++i) rewards[i] = float(-kl_coef * double(kl[i]));
  for (int64_t b = 0; b < shape.batch; ++b) {
    int64_t last = -1;
    for (int64_t t = 0; t < shape.length; ++t)
      if (value_mask[size_t(b * shape.length + t)] != 0.0f) last = t;
    KOTOBA_CHECK(last >= 0, "token_rewards: rollout ", b, " has no response token to credit its score to");
    rewards[size_t(b * shape.length + last)] += scores[size_t(b)];
  }
  return rewards;
}

void masked_whiten(std::vector<float>& x, const std::vector<float>& mask, bool shift_mean) {
  KOTOBA_CHECK(x.size() == mask.size(), "masked_whiten: ", x.size(), " values and ", mask.size(), " mask entries");
  double n = 0, sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    n += mask[i];
    sum += double(mask[i]) * x[i];
  }
  KOTOBA_CHECK(n >= 2, "masked_whiten: needs at least 2 positions on the mask, got ", n);
  const double mean = sum / n;
  double squares = 0;
  for (size_t i = 0; i < x.size(); ++i) squares += double(mask[i]) * (x[i] - mean) * (x[i] - mean);
  const double var = squares / n * (n / (n - 1));  // TRL's masked_var with unbiased=True
  const double inv_std = 1.0 / std::sqrt(var + 1e-8);
  for (size_t i = 0; i < x.size(); ++i) {
    if (mask[i] == 0.0f) continue;
    double w = (x[i] - mean) * inv_std;
    if (!shift_mean) w += mean;
    x[i] = float(w);
  }
}

Advantages generalized_advantages(const std::vector<float>& rewards, const std::vector<float>& values,
                                  const std::vector<float>& mask, const std::vector<float>& value_mask, PpoShape shape,
                                  double gamma, double lam) {
  check_sizes(shape, {&rewards, &values, &mask, &value_mask}, "generalized_advantages");
  Advantages out;
  out.advantages.assign(rewards.size(), 0.0f);
  out.returns.assign(rewards.size(), 0.0f);
  for (int64_t b = 0; b < shape.batch; ++b) {
    const size_t row = size_t(b * shape.length);
    double next_value = 0, last_gae = 0;
    for (int64_t t = shape.length - 1; t >= 0; --t) {
      const size_t i = row + size_t(t);
      const double v = value_mask[i] != 0.0f ? values[i] : 0.0;
      const double r = value_mask[i] != 0.0f ? rewards[i] : 0.0;
      const double delta = r + gamma * next_value - v;
      last_gae = delta + gamma * lam * last_gae;
      out.advantages[i] = float(last_gae);
      out.returns[i] = float(last_gae + v);
      next_value = v;
    }
  }
  masked_whiten(out.advantages, mask, true);
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i] == 0.0f) out.advantages[i] = 0.0f;
  return out;
}

Tensor ppo_loss(const Tensor& logprobs, const Tensor& values, const PpoTargets& targets, const PpoLossConfig& config,
                PpoLossStats* stats) {
  KOTOBA_CHECK(logprobs.defined() && logprobs.ndim() == 2, "ppo_loss: logprobs must be (B, T)");
  const Shape shape = logprobs.shape();
  const std::vector<float> logp = host_values(logprobs, shape, "logprobs"),
                           old_logp = host_values(targets.old_logprobs, shape, "old_logprobs"),
                           adv = host_values(targets.advantages, shape, "advantages"),
                           mask = host_values(targets.mask, shape, "mask");
  const size_t n = logp.size();
  double mask_sum = 0;
  for (float m : mask) mask_sum += m;
  KOTOBA_CHECK(mask_sum > 0, "ppo_loss: the mask selects no token");

  PpoLossStats s;
  std::vector<float> dlogp(n, 0.0f), dvalues;
  const double lo = 1.0 - config.cliprange, hi = 1.0 + config.cliprange;
  double pg_sum = 0, clipped = 0, kl_sum = 0, ratio_sum = 0;
  for (size_t i = 0; i < n; ++i) {
    if (mask[i] == 0.0f) continue;
    const double diff = double(logp[i]) - double(old_logp[i]), ratio = std::exp(diff), a = adv[i];
    const double unclipped = -a * ratio, clipped_ratio = std::clamp(ratio, lo, hi), clipped_loss = -a * clipped_ratio;
    pg_sum += mask[i] * std::max(unclipped, clipped_loss);
    clipped += mask[i] * (clipped_loss > unclipped);
    kl_sum += mask[i] * 0.5 * diff * diff;
    ratio_sum += mask[i] * ratio;
    // d/dlogp of the larger term (the clipped one is flat outside [lo, hi]); at a tie both are
    // the same function of the ratio, so either derivative is the derivative.
    double d = 0;
    if (unclipped >= clipped_loss) d = -a * ratio;
    else if (ratio > lo && ratio < hi) d = -a * ratio;
    dlogp[i] = float(mask[i] * d / mask_sum);
  }
  s.pg_loss = pg_sum / mask_sum;
  s.pg_clipfrac = clipped / mask_sum;
  s.approxkl = kl_sum / mask_sum;
  s.ratio = ratio_sum / mask_sum;

  if (values.defined()) {
    const std::vector<float> v = host_values(values, shape, "values"),
                             old_v = host_values(targets.old_values, shape, "old_values"),
                             ret = host_values(targets.returns, shape, "returns"),
                             vmask = host_values(targets.value_mask, shape, "value_mask");
    double vmask_sum = 0;
    for (float m : vmask) vmask_sum += m;
    KOTOBA_CHECK(vmask_sum > 0, "ppo_loss: the value mask selects no position");
    dvalues.assign(n, 0.0f);
    double vf_sum = 0, vf_clipped = 0;
    for (size_t i = 0; i < n; ++i) {
      if (vmask[i] == 0.0f) continue;
      const double delta = double(v[i]) - old_v[i];
      const double v_clipped = old_v[i] + std::clamp(delta, -config.cliprange_value, config.cliprange_value);
      const double e1 = v[i] - double(ret[i]), e2 = v_clipped - ret[i];
      const double l1 = e1 * e1, l2 = e2 * e2;
      vf_sum += vmask[i] * std::max(l1, l2);
      vf_clipped += vmask[i] * (l2 > l1);
      double d = 0;  // d/dv of 0.5 max(l1, l2)
      if (l1 >= l2) d = e1;
      else if (std::abs(delta) < config.cliprange_value) d = e2;
      dvalues[i] = float(vmask[i] * config.vf_coef * d / vmask_sum);
    }
    s.vf_loss = 0.5 * vf_sum / vmask_sum;
    s.vf_clipfrac = vf_clipped / vmask_sum;
  }
  s.loss = s.pg_loss + config.vf_coef * s.vf_loss;
  if (stats) *stats = s;

  const Device device = logprobs.device();
  Tensor loss = Tensor::full({}, float(s.loss), DType::f32, device);
  auto logp_meta = logprobs.autograd_meta();
  auto values_meta = values.defined() ? values.autograd_meta() : nullptr;
  const Device values_device = values.defined() ? values.device() : device;
  return record("ppo_loss", loss, {&logprobs, &values},
                [logp_meta, values_meta, shape, device, values_device, dlogp = std::move(dlogp),
                 dvalues = std::move(dvalues)](const Tensor& grad_output) {
                  const float upstream = grad_output.to_vector()[0];
                  deliver(logp_meta, shape, device, dlogp, upstream);
                  if (!dvalues.empty()) deliver(values_meta, shape, values_device, dvalues, upstream);
                });
}

void AdaptiveKlController::update(double current_kl, int64_t n_steps) {
  const double error = std::clamp(current_kl / target_ - 1.0, -0.2, 0.2);
  value_ *= 1.0 + error * double(n_steps) / horizon_;
}

}  // namespace kotoba::train
