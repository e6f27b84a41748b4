// The autograd tape's contract (accumulation across backward calls, no-grad mode, frozen
// parameters, gradients through views) and dropout, which PyTorch cannot match bit for bit.
#include <gtest/gtest.h>

#include "ops/ops.h"
#include "tests/test_util.h"

using namespace kotoba;
using namespace kotoba::testing;

namespace {

void expect_near_vectors(const std::vector<float>& got, const std::vector<float>& want, float tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << what << " at " << i;
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  Generator gen(test_seed());
  Tensor w = random_normal({3, 4}, gen).set_requires_grad(true);
  Tensor x = random_normal({2, 4}, gen);
  Tensor weight = random_normal({2, 3}, gen);
  sum(mul(linear(x, w), weight)).backward();
  std::vector<float> once = w.grad().to_vector();
  sum(mul(linear(x, w), weight)).backward();
  std::vector<float> twice = w.grad().to_vector();
  for (size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(twice[i], 2 * once[i], 1e-5f * (1 + std::fabs(once[i])));
  // zero_grad: the next backward overwrites instead of adding.
  w.zero_grad();
  EXPECT_FALSE(w.grad().defined());
  sum(mul(linear(x, w), weight)).backward();
  expect_near_vectors(w.grad().to_vector(), once, 1e-5f, "after zero_grad");
}

// A backward consumes every graph on the tape: a second loss built before the first backward is
// an error naming that, not a pass that silently leaves its parameters without gradients.
TEST(Autograd, BackwardOfAConsumedGraphIsAnError) {
  Tensor w = Tensor::from_vector({1.0f, 2.0f}, {2});
  w.set_requires_grad(true);
  Tensor first = sum(mul(w, w)), second = sum(scale(w, 3.0f));
  first.backward();
  try {
    second.backward();
    FAIL() << "a consumed graph ran backward";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("an earlier backward() consumed the whole tape"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{2.0f, 4.0f})) << "the first loss's gradient stays";
  // Added into one loss, both graphs run.
  w.zero_grad();
  add(sum(mul(w, w)), sum(scale(w, 3.0f))).backward();
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{5.0f, 7.0f}));
}

TEST(Autograd, NoGradRecordsNothing) {
  Generator gen(test_seed());
  Tensor w = random_normal({4, 4}, gen).set_requires_grad(true);
  Tensor x = random_normal({2, 4}, gen);
  clear_tape();
  {
    NoGradGuard no_grad;
    EXPECT_FALSE(grad_enabled());
    Tensor y = gelu(linear(x, w));
    y = softmax(add(y, x));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(tape_size(), 0u);
  }
  EXPECT_TRUE(grad_enabled());
  Tensor y = linear(x, w);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_EQ(tape_size(), 1u);
  clear_tape();
}

TEST(Autograd, FrozenParameterGetsNoGradient) {
  Generator gen(test_seed());
  Tensor frozen = random_normal({3, 4}, gen);  // requires_grad false
  Tensor trained = random_normal({3}, gen).set_requires_grad(true);
  Tensor x = random_normal({2, 4}, gen);
  sum(linear(x, frozen, trained)).backward();
  EXPECT_FALSE(frozen.grad().defined());
  ASSERT_TRUE(trained.grad().defined());
  expect_near_vectors(trained.grad().to_vector(), {2, 2, 2}, 1e-6f, "bias gradient");
  // Nothing that needs a gradient: nothing recorded.
  Tensor y = linear(x, frozen);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(tape_size(), 0u);
}

TEST(Autograd, GradientsThroughViews) {
  Generator gen(test_seed());
  Tensor x = random_normal({2, 3, 4}, gen).set_requires_grad(true);
  // y = slice(transpose(x, 1, 2), dim 1 rows 1..3): picks x[b, j, i] for i in {1, 2}.
  Tensor y = slice(transpose(x, 1, 2), 1, 1, 3);
  ASSERT_EQ(y.shape(), (Shape{2, 2, 3}));
  EXPECT_TRUE(y.same_storage(x)) << "transpose and slice should be views";
  Tensor w = random_normal({2, 2, 3}, gen);
  sum(mul(contiguous(y), w)).backward();
  std::vector<float> g = x.grad().to_vector(), wv = w.to_vector();
  for (int b = 0; b < 2; ++b)
    for (int j = 0; j < 3; ++j)
      for (int i = 0; i < 4; ++i) {
        float want = (i == 1 || i == 2) ? wv[size_t(b * 6 + (i - 1) * 3 + j)] : 0.0f;
        EXPECT_EQ(g[size_t(b * 12 + j * 4 + i)], want) << "b " << b << " j " << j << " i " << i;
      }
  // A value used twice: gradients from both uses add up.
  Tensor z = random_normal({5}, gen).set_requires_grad(true);
  sum(add(mul(z, z), reshape(z, {5}))).backward();
  std::vector<float> gz = z.grad().to_vector(), zv = z.to_vector();
  for (size_t i = 0; i < 5; ++i) EXPECT_NEAR(gz[i], 2 * zv[i] + 1, 1e-5f);
}

TEST(Dropout, ScalesKeptValuesAndDropsAboutP) {
  const int64_t n = 200000;
  const float p = 0.3f;
  Generator gen(test_seed());
  Tensor x = Tensor::full({n}, 1.0f);
  Tensor y = dropout(x, p, gen);
  std::vector<float> v = y.to_vector();
  int64_t dropped = 0;
  double total = 0;
  for (float e : v) {
    if (e == 0.0f) ++dropped;
    else ASSERT_NEAR(e, 1.0f / (1.0f - p), 1e-6f) << "kept values are scaled by 1/(1-p)";
    total += e;
  }
  double fraction = double(dropped) / double(n);
  double sigma = std::sqrt(p * (1 - p) / double(n));  // binomial standard deviation of the fraction
  EXPECT_NEAR(fraction, p, 5 * sigma) << "fraction dropped";
  EXPECT_NEAR(total / double(n), 1.0, 5 * sigma / (1 - p)) << "mean is preserved";
}

// The kernels draw the mask with their own vector (and CUDA) copies of uniform_at; this pins
// them to core/rng.h's definition, element by element.
TEST(Dropout, MaskIsCoreRngUniformAt) {
  const int64_t n = 1037;
  const float p = 0.25f;
  Generator gen(test_seed());
  gen.advance(12345);  // a non-zero starting offset
  const uint64_t seed = gen.seed(), offset = gen.offset();
  Tensor y = dropout(Tensor::full({n}, 1.0f), p, gen);
  std::vector<float> v = y.to_vector();
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(v[size_t(i)] == 0.0f, uniform_at(seed, offset + uint64_t(i)) < p) << "element " << i;
}

TEST(Dropout, BackwardUsesTheForwardMask) {
  Generator gen(test_seed());
  Tensor x = random_away_from_zero({64, 33}, gen, 0.1f).set_requires_grad(true);
  Tensor w = random_normal({64, 33}, gen);
  Generator dgen(test_seed() + 1);
  Tensor y = dropout(x, 0.4f, dgen);
  sum(mul(y, w)).backward();
  std::vector<float> yv = y.to_vector(), xv = x.to_vector(), wv = w.to_vector(), g = x.grad().to_vector();
  for (size_t i = 0; i < yv.size(); ++i) {
    float factor = yv[i] / xv[i];  // 0 or 1/(1-p)
    EXPECT_NEAR(g[i], wv[i] * factor, 1e-5f * (1 + std::fabs(wv[i]))) << "element " << i;
  }
}

TEST(Dropout, DeterministicPerSeedAndAdvancing) {
  Tensor x = Tensor::full({1000}, 2.0f);
  Generator a(42), b(42), c(43);
  std::vector<float> ya = dropout(x, 0.5f, a).to_vector();
  std::vector<float> yb = dropout(x, 0.5f, b).to_vector();
  std::vector<float> yc = dropout(x, 0.5f, c).to_vector();
  EXPECT_EQ(ya, yb) << "same seed, same mask";
  EXPECT_NE(ya, yc) << "another seed, another mask";
  std::vector<float> ya2 = dropout(x, 0.5f, a).to_vector();
  EXPECT_NE(ya, ya2) << "the generator advances: the next call draws a new mask";
}

TEST(Dropout, IdentityWhenEvaluatingOrPZero) {
  Generator gen(test_seed());
  Tensor x = random_normal({10, 7}, gen);
  EXPECT_EQ(dropout(x, 0.5f, gen, /*training=*/false).to_vector(), x.to_vector());
  EXPECT_EQ(dropout(x, 0.0f, gen).to_vector(), x.to_vector());
}

}  // namespace
