// The arithmetic of PPO for language models, as TRL's PPOTrainer defines it: per-token rewards
// (a KL penalty to the reference model on every response token, the reward model's score added at
// the end), generalised advantage estimation, masked whitening, and the clipped policy and value
// losses with their gradients. The rollout loop (sampling, scoring, minibatches) builds on these.
//
// Layout: a batch of B rollouts over T response positions, row-major (B*T). Two masks, as TRL
// keeps them: `mask` is 1 on the response's tokens (through its EOS), `value_mask` additionally on
// the one position after the last token (TRL's padding_mask_p1), where the score is credited and
// which the value loss covers.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace kotoba::train {

enum class KlEstimator { k1, k3 };  // k1: logp - ref_logp; k3: (r - 1) - log r with r = p_ref / p

struct PpoShape {
  int64_t batch = 0, length = 0;
  int64_t size() const { return batch * length; }
};

// kl_t from the policy's and the reference's log-probabilities of the sampled tokens (0 off `mask`).
std::vector<float> token_kl(const std::vector<float>& logprobs, const std::vector<float>& ref_logprobs,
                            const std::vector<float>& mask, PpoShape shape, KlEstimator estimator);

// rewards_t = -kl_coef * kl_t, plus scores[b] at row b's last value_mask position.
std::vector<float> token_rewards(const std::vector<float>& kl, const std::vector<float>& scores,
                                 const std::vector<float>& value_mask, PpoShape shape, double kl_coef);

// (x - mean) / sqrt(var + 1e-8) over the positions where mask is 1, var the unbiased (n - 1)
// variance; with shift_mean false the mean is added back. Positions off the mask are left as they are.
void masked_whiten(std::vector<float>& x, const std::vector<float>& mask, bool shift_mean = true);

struct Advantages {
  std::vector<float> advantages;  // whitened over `mask`, 0 off it
  std::vector<float> returns;     // raw advantages + values
};
// GAE backwards over each row: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda
// A_{t+1}, with V (and r) taken as 0 off value_mask and V_T = 0.
Advantages generalized_advantages(const std::vector<float>& rewards, const std::vector<float>& values,
                                  const std::vector<float>& mask, const std::vector<float>& value_mask, PpoShape shape,
                                  double gamma, double lam);

struct PpoLossConfig {
  double cliprange = 0.2;        // policy ratio clip
  double cliprange_value = 0.2;  // value prediction clip around the rollout's values
  double vf_coef = 0.1;          // weight of the value loss
};

// What a minibatch's loss is measured against: all (B, T) f32, no gradient.
struct PpoTargets {
  Tensor old_logprobs, old_values, advantages, returns, mask, value_mask;
};

struct PpoLossStats {
  double loss = 0, pg_loss = 0, vf_loss = 0;
  double pg_clipfrac = 0, vf_clipfrac = 0;  // share of positions where the clipped term was the larger
  double approxkl = 0;                      // 0.5 mean (logp - old_logp)^2
  double ratio = 0;                         // mean probability ratio
};

// pg_loss = masked_mean(max(-A r, -A clip(r, 1 - c, 1 + c)), mask), r = exp(logp - old_logp);
// vf_loss = 0.5 masked_mean(max((v - R)^2, (clip(v, v_old - cv, v_old + cv) - R)^2), value_mask);
// loss = pg_loss + vf_coef vf_loss. `logprobs` and `values` are (B, T) f32 on the CPU with
// gradients flowing back to both (values may be undefined: no value loss, as GRPO has none).
Tensor ppo_loss(const Tensor& logprobs, const Tensor& values, const PpoTargets& targets, const PpoLossConfig& config,
                PpoLossStats* stats = nullptr);

// The adaptive KL coefficient of Ziegler et al. (2019), as TRL kept it: after each batch,
// coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon.
class AdaptiveKlController {
 public:
  AdaptiveKlController(double initial, double target, double horizon)
      : value_(initial), target_(target), horizon_(horizon) {}
  void update(double current_kl, int64_t n_steps);
  double value() const { return value_; }
  void set_value(double v) { value_ = v; }

 private:
  double value_, target_, horizon_;
};

}  // namespace kotoba::train
