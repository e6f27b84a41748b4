// PPO's arithmetic against TRL's definitions (tests/reference/ppo_reference.py, float64): per-token
// KL (k1, k3) and rewards, GAE with TRL's masks, whitening, and the clipped policy and value losses
// with their gradients. Plus the adaptive KL controller's update rule.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "ops/ops.h"
#include "test_util.h"
#include "train/ppo_math.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using namespace kotoba::train;
using nlohmann::json;

namespace {

std::vector<float> as_floats(const Tensor& t) { return t.to(DType::f32).to_vector(); }

void expect_close(const std::vector<float>& got, const Tensor& ref, const std::string& what) {
  kt::Comparison c = kt::compare_to_reference(Tensor::from_vector(got, ref.shape()), ref, {1e-4, 1e-5});
  EXPECT_TRUE(c.ok) << what << ": " << c.describe();
}

class PpoReference : public ::testing::TestWithParam<std::string> {};

TEST_P(PpoReference, RewardsAdvantagesLossesAndGradientsMatchTrl) {
  const fs::path dir = kt::reference_dir() / "ppo" / GetParam();
  ASSERT_TRUE(fs::exists(dir / "reference.safetensors")) << kt::reference_missing(dir / "reference.safetensors");
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  json c = json::parse(std::ifstream(dir / "config.json"));
  auto at = [&](const char* name) -> const Tensor& { return ref.tensors.at(name); };

  const Tensor& lengths = at("lengths");
  const PpoShape shape{at("logprobs").size(0), at("logprobs").size(1)};
  std::vector<float> mask(size_t(shape.size()), 0.0f), value_mask(mask.size(), 0.0f);
  for (int64_t b = 0; b < shape.batch; ++b)
    for (int64_t t = 0; t < shape.length; ++t) {
      const int64_t len = lengths.data<int32_t>()[b];
      mask[size_t(b * shape.length + t)] = t < len;
      value_mask[size_t(b * shape.length + t)] = t < len + 1;
    }

  const KlEstimator estimator = c["estimator"] == "k1" ? KlEstimator::k1 : KlEstimator::k3;
  const std::vector<float> kl = token_kl(as_floats(at("logprobs")), as_floats(at("ref_logprobs")), mask, shape, estimator);
  expect_close(kl, at("kl"), "kl");
  std::vector<float> rewards = token_rewards(kl, as_floats(at("scores")), value_mask, shape, c["kl_coef"].get<double>());
  if (c["whiten_rewards"].get<bool>()) {
    masked_whiten(rewards, value_mask, /*shift_mean=*/false);
    for (size_t i = 0; i < rewards.size(); ++i)
      if (value_mask[i] == 0.0f) rewards[i] = 0.0f;
  }
  expect_close(rewards, at("rewards"), "rewards");
  const Advantages a = generalized_advantages(rewards, as_floats(at("values")), mask, value_mask, shape,
                                              c["gamma"].get<double>(), c["lam"].get<double>());
  expect_close(a.advantages, at("advantages"), "advantages");
  expect_close(a.returns, at("returns"), "returns");

  // The loss against the reference's own advantages and returns (so it is checked on its own).
  const Shape bt{shape.batch, shape.length};
  PpoTargets targets{at("logprobs").to(DType::f32),   at("values").to(DType::f32),
                     at("advantages").to(DType::f32), at("returns").to(DType::f32),
                     Tensor::from_vector(mask, bt),   Tensor::from_vector(value_mask, bt)};
  Tensor logprobs = at("new_logprobs").to(DType::f32);
  Tensor values = at("new_values").to(DType::f32);
  logprobs.set_requires_grad(true);
  values.set_requires_grad(true);
  PpoLossConfig config{c["cliprange"].get<double>(), c["cliprange_value"].get<double>(), c["vf_coef"].get<double>()};
  PpoLossStats stats;
  Tensor loss = ppo_loss(logprobs, values, targets, config, &stats);
  loss.backward();
  const double want = as_floats(at("loss"))[0];
  EXPECT_NEAR(loss.to_vector()[0], want, 1e-4 * std::max(1.0, std::abs(want)));
  EXPECT_NEAR(stats.pg_loss, as_floats(at("pg_loss"))[0], 1e-4 * std::max(1.0, std::abs(stats.pg_loss)));
  EXPECT_NEAR(stats.vf_loss, as_floats(at("vf_loss"))[0], 1e-4 * std::max(1.0, std::abs(stats.vf_loss)));
  EXPECT_NEAR(stats.pg_clipfrac, as_floats(at("pg_clipfrac"))[0], 1e-6);
  EXPECT_GT(stats.pg_clipfrac, 0.0) << "the case should clip some ratios";
  kt::Comparison g1 = kt::compare_to_reference(logprobs.grad(), at("grad_logprobs"), {1e-4, 1e-4});
  EXPECT_TRUE(g1.ok) << "d loss / d logprobs: " << g1.describe();
  kt::Comparison g2 = kt::compare_to_reference(values.grad(), at("grad_values"), {1e-4, 1e-4});
  EXPECT_TRUE(g2.ok) << "d loss / d values: " << g2.describe();
}

INSTANTIATE_TEST_SUITE_P(Cases, PpoReference, ::testing::Values("k1", "k3_whitened"),
                         [](const auto& info) { return info.param; });

// A loss without values (GRPO's shape) is the policy term alone, and its gradient agrees with a
// finite difference of the loss.
TEST(PpoMath, PolicyLossAloneMatchesFiniteDifferences) {
  Generator gen(kt::test_seed());
  const Shape bt{2, 5};
  Tensor old_logp = kt::random_normal(bt, gen, 0.5f);
  Tensor adv = kt::random_normal(bt, gen);
  std::vector<float> mask = {1, 1, 1, 0, 0, 1, 1, 1, 1, 1};
  PpoTargets targets{old_logp, Tensor(), adv, Tensor(), Tensor::from_vector(mask, bt), Tensor()};
  std::vector<float> logp = old_logp.to_vector();
  for (float& x : logp) x += 0.05f * float(gen.normal());
  Tensor x = Tensor::from_vector(logp, bt);
  x.set_requires_grad(true);
  PpoLossConfig config;
  Tensor loss = ppo_loss(x, Tensor(), targets, config);
  loss.backward();
  const std::vector<float> grad = x.grad().to_vector();
  for (size_t i = 0; i < logp.size(); ++i) {
    const float h = 1e-3f;
    std::vector<float> up = logp, down = logp;
    up[i] += h;
    down[i] -= h;
    NoGradGuard no_grad;
    const double fd = (ppo_loss(Tensor::from_vector(up, bt), Tensor(), targets, config).to_vector()[0] -
                       ppo_loss(Tensor::from_vector(down, bt), Tensor(), targets, config).to_vector()[0]) /
                      (2 * h);
    EXPECT_NEAR(grad[i], fd, 2e-3) << i;
    if (mask[i] == 0.0f) {
      EXPECT_EQ(grad[i], 0.0f);
    }
  }
}

TEST(PpoMath, AdaptiveKlControllerFollowsZieglersRule) {
  AdaptiveKlController k(0.2, 6.0, 10000);
  k.update(12.0, 256);  // kl twice the target: error clipped to +0.2
  EXPECT_NEAR(k.value(), 0.2 * (1 + 0.2 * 256 / 10000.0), 1e-12);
  const double before = k.value();
  k.update(5.4, 100);  // error -0.1
  EXPECT_NEAR(k.value(), before * (1 - 0.1 * 100 / 10000.0), 1e-12);
}

TEST(PpoMath, BadShapesAreNamed) {
  const PpoShape shape{2, 3};
  std::vector<float> six(6, 0.0f), five(5, 0.0f);
  EXPECT_THROW(token_kl(six, five, six, shape, KlEstimator::k1), Error);
  EXPECT_THROW(token_rewards(six, {1.0f}, six, shape, 0.05), Error);  // one score for two rollouts
  EXPECT_THROW(token_rewards(six, {1.0f, 2.0f}, six, shape, 0.05), Error);  // an empty value mask
}

}  // namespace
