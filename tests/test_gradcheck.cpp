// Finite-difference checks of every op's backward, independent of PyTorch: the directional
// derivative of L = sum(op(x) * W) along a random direction u, by central differences in f32,
// against the analytic <grad L, u> from backward().
#include <gtest/gtest.h>

#include <functional>

#include "ops/ops.h"
#include "tests/test_util.h"

using namespace kotoba;
using namespace kotoba::testing;

namespace {

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// L = sum(out * W) accumulated in double on the host, so the only f32 rounding is the op's own.
double weighted_sum(const Tensor& out, const std::vector<float>& weight) {
  std::vector<float> o = out.to_vector();
  double s = 0;
  for (size_t i = 0; i < o.size(); ++i) s += double(o[i]) * double(weight[i]);
  return s;
}

// inputs: f32 tensors (differentiated when `differentiable[i]`) or i32 tensors (ids, masks).
// eps is the step along u, whose entries are N(0, 1): each coordinate moves by about eps.
// Passes when |fd - analytic| <= rtol * (|analytic| + ||grad||): ||grad|| is the standard
// deviation of <grad, u>, so a direction nearly orthogonal to the gradient cannot demand
// more digits than f32 central differences have.
void gradcheck(const std::string& what, const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable,
               const OpFn& fn, uint64_t seed, double eps = 1e-2, double rtol = 1e-2) {
  SCOPED_TRACE(what);
  ASSERT_EQ(inputs.size(), differentiable.size());
  Generator gen(test_seed() ^ mix64(seed));

  // Analytic.
  std::vector<Tensor> leaves;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor leaf = inputs[i].clone();
    if (differentiable[i]) leaf.set_requires_grad(true);
    leaves.push_back(leaf);
  }
  Tensor out = fn(leaves);
  std::vector<float> weight(size_t(out.numel()));
  for (float& w : weight) w = gen.normal();
  Tensor out32 = out.dtype() == DType::f32 ? out : cast(out, DType::f32);
  Tensor loss = out32.ndim() == 0 ? scale(out32, weight[0])
                                  : sum(mul(out32.is_contiguous() ? out32 : contiguous(out32),
                                            Tensor::from_vector(weight, out32.shape())));
  loss.backward();

  std::vector<std::vector<float>> directions(inputs.size());
  double analytic = 0, grad_sq = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!differentiable[i]) continue;
    Tensor g = leaves[i].grad();
    ASSERT_TRUE(g.defined()) << "input " << i << " received no gradient";
    ASSERT_EQ(g.shape(), inputs[i].shape()) << "gradient of input " << i;
    std::vector<float> gv = g.to_vector();
    directions[i].resize(gv.size());
    for (size_t j = 0; j < gv.size(); ++j) {
      directions[i][j] = gen.normal();
      analytic += double(gv[j]) * directions[i][j];
      grad_sq += double(gv[j]) * gv[j];
    }
  }

  // Central differences, no tape.
  auto evaluate = [&](double step) {
    NoGradGuard no_grad;
    std::vector<Tensor> moved;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!differentiable[i]) {
        moved.push_back(inputs[i].clone());
        continue;
      }
      std::vector<float> v = inputs[i].to_vector();
      for (size_t j = 0; j < v.size(); ++j) v[j] += float(step * directions[i][j]);
      moved.push_back(Tensor::from_vector(v, inputs[i].shape()));
    }
    return weighted_sum(fn(moved), weight);
  };
  double numeric = (evaluate(eps) - evaluate(-eps)) / (2 * eps);
  double allowed = rtol * (std::fabs(analytic) + std::sqrt(grad_sq));
  EXPECT_LE(std::fabs(numeric - analytic), allowed)
      << what << ": directional derivative by finite differences " << numeric << ", by backward " << analytic
      << " (|grad| " << std::sqrt(grad_sq) << ")";
}

std::vector<bool> all(size_t n) { return std::vector<bool>(n, true); }

class Gradcheck : public ::testing::Test {
 protected:
  Generator gen{test_seed()};
  Tensor normal(const Shape& s, float scale = 1.0f) { return random_normal(s, gen, scale); }
};

TEST_F(Gradcheck, ShapeOps) {
  gradcheck("reshape", {normal({2, 3, 4})}, all(1), [](auto& x) { return reshape(x[0], {4, -1}); }, 1);
  gradcheck("transpose", {normal({2, 3, 4})}, all(1), [](auto& x) { return transpose(x[0], 0, 2); }, 2);
  gradcheck("slice", {normal({4, 5})}, all(1), [](auto& x) { return slice(x[0], 1, 1, 4); }, 3);
  gradcheck("contiguous", {normal({3, 4, 2})}, all(1), [](auto& x) { return contiguous(transpose(x[0], 0, 1)); }, 4);
  gradcheck("view chain", {normal({2, 6, 4})}, all(1),
            [](auto& x) { return reshape(contiguous(slice(transpose(x[0], 1, 2), 2, 1, 5)), {-1}); }, 5);
}

TEST_F(Gradcheck, Elementwise) {
  struct Pair { Shape a, b; };
  std::vector<Pair> pairs = {{{3, 4}, {3, 4}}, {{2, 3, 4}, {4}}, {{3, 4}, {2, 3, 4}}, {{3, 1, 4}, {3, 2, 4}}};
  for (const auto& p : pairs) {
    std::string shapes = shape_str(p.a) + " " + shape_str(p.b);
    gradcheck("add " + shapes, {normal(p.a), normal(p.b)}, all(2), [](auto& x) { return add(x[0], x[1]); }, 10);
    gradcheck("sub " + shapes, {normal(p.a), normal(p.b)}, all(2), [](auto& x) { return sub(x[0], x[1]); }, 11);
    gradcheck("mul " + shapes, {normal(p.a), normal(p.b)}, all(2), [](auto& x) { return mul(x[0], x[1]); }, 12);
    gradcheck("div " + shapes, {normal(p.a), random_away_from_zero(p.b, gen, 0.5f)}, all(2),
              [](auto& x) { return div(x[0], x[1]); }, 13);
  }
  gradcheck("scale", {normal({5, 6})}, all(1), [](auto& x) { return scale(x[0], -1.7f); }, 14);
  gradcheck("sum", {normal({5, 6})}, all(1), [](auto& x) { return sum(x[0]); }, 15);
  gradcheck("mean", {normal({5, 6})}, all(1), [](auto& x) { return mean(x[0]); }, 16);
}

TEST_F(Gradcheck, Activations) {
  gradcheck("gelu", {normal({4, 9}, 2.0f)}, all(1), [](auto& x) { return gelu(x[0]); }, 20);
  gradcheck("silu", {normal({4, 9}, 2.0f)}, all(1), [](auto& x) { return silu(x[0]); }, 21);
  // relu: inputs stay further from 0 than a step can reach.
  gradcheck("relu", {random_away_from_zero({4, 9}, gen, 0.2f)}, all(1), [](auto& x) { return relu(x[0]); }, 22, 1e-3);
  gradcheck("swiglu", {normal({4, 9}, 2.0f), normal({4, 9})}, all(2), [](auto& x) { return swiglu(x[0], x[1]); }, 23);
}

TEST_F(Gradcheck, MatmulAndLinear) {
  gradcheck("matmul 2-D", {normal({5, 7}), normal({7, 3})}, all(2), [](auto& x) { return matmul(x[0], x[1]); }, 30);
  gradcheck("matmul batched", {normal({2, 3, 4, 5}), normal({2, 3, 5, 6})}, all(2),
            [](auto& x) { return matmul(x[0], x[1]); }, 31);
  gradcheck("matmul shared 2-D b", {normal({3, 4, 5}), normal({5, 6})}, all(2),
            [](auto& x) { return matmul(x[0], x[1]); }, 32);
  gradcheck("linear bias", {normal({2, 3, 8}), normal({5, 8}, 0.3f), normal({5})}, all(3),
            [](auto& x) { return linear(x[0], x[1], x[2]); }, 33);
  gradcheck("linear no bias", {normal({4, 8}), normal({6, 8}, 0.3f)}, all(2),
            [](auto& x) { return linear(x[0], x[1]); }, 34);
}

TEST_F(Gradcheck, Embedding) {
  Tensor ids = Tensor::from_vector_i32({3, 1, 3, 0, 5, 1, 1}, {7});
  gradcheck("embedding", {ids, normal({6, 4})}, {false, true}, [](auto& x) { return embedding(x[0], x[1]); }, 40);
}

TEST_F(Gradcheck, Norms) {
  gradcheck("layer_norm", {normal({3, 8}, 2.0f), normal({8}), normal({8})}, all(3),
            [](auto& x) { return layer_norm(x[0], x[1], x[2], 1e-5f); }, 50);
  gradcheck("layer_norm no bias", {normal({2, 2, 8}, 2.0f), normal({8})}, all(2),
            [](auto& x) { return layer_norm(x[0], x[1], Tensor(), 1e-5f); }, 51);
  gradcheck("rms_norm", {normal({3, 8}, 2.0f), normal({8})}, all(2),
            [](auto& x) { return rms_norm(x[0], x[1], 1e-6f); }, 52);
  gradcheck("softmax", {normal({3, 9}, 2.0f)}, all(1), [](auto& x) { return softmax(x[0]); }, 53);
}

TEST_F(Gradcheck, Attention) {
  struct Config { int64_t B, H, Hkv, T, S, D; bool causal, masked; };
  for (Config c : {Config{1, 2, 2, 5, 5, 8, true, false}, Config{2, 2, 2, 5, 5, 8, false, true},
                   Config{1, 4, 2, 6, 6, 8, true, true}, Config{1, 2, 1, 3, 7, 4, true, false}}) {
    std::vector<Tensor> in = {normal({c.B, c.H, c.T, c.D}), normal({c.B, c.Hkv, c.S, c.D}),
                              normal({c.B, c.Hkv, c.S, c.D})};
    std::vector<bool> diff = all(3);
    if (c.masked) {
      std::vector<int32_t> mask(size_t(c.B * c.S), 1);
      mask[size_t(c.S - 1)] = 0;  // batch 0 pads its last key
      in.push_back(Tensor::from_vector_i32(mask, {c.B, c.S}));
      diff.push_back(false);
    }
    bool causal = c.causal;
    std::string what = "sdpa B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " Hkv" + std::to_string(c.Hkv) +
                       " T" + std::to_string(c.T) + " S" + std::to_string(c.S) + (causal ? " causal" : "") +
                       (c.masked ? " masked" : "");
    gradcheck(what, in, diff, [causal](auto& x) {
      return scaled_dot_product_attention(x[0], x[1], x[2], causal, x.size() > 3 ? x[3] : Tensor());
    }, 60);
  }
  gradcheck("sdpa sliding window 3", {normal({1, 4, 9, 8}), normal({1, 2, 9, 8}), normal({1, 2, 9, 8})}, all(3),
            [](auto& x) { return scaled_dot_product_attention(x[0], x[1], x[2], true, Tensor(), 0.3f, 3); }, 63);
  // Packed sequences: row 0 holds examples of 3, 4 and 2 tokens; row 1 one segment split into two
  // runs (not contiguous) around another, then padding (segment 0).
  const Tensor segments = Tensor::from_vector_i32({1, 1, 1, 2, 2, 2, 2, 3, 3, 5, 5, 7, 7, 7, 5, 5, 0, 0}, {2, 9});
  for (bool causal : {true, false})
    gradcheck(std::string("sdpa segments GQA") + (causal ? " causal" : " bidir"),
              {normal({2, 4, 9, 8}), normal({2, 2, 9, 8}), normal({2, 2, 9, 8}), segments}, {true, true, true, false},
              [causal](auto& x) {
                return scaled_dot_product_attention(x[0], x[1], x[2], causal, Tensor(),
                                                    std::numeric_limits<float>::quiet_NaN(), 0, x[3]);
              }, 64);
  gradcheck("sdpa segments window 2", {normal({2, 2, 9, 8}), normal({2, 2, 9, 8}), normal({2, 2, 9, 8}), segments},
            {true, true, true, false},
            [](auto& x) { return scaled_dot_product_attention(x[0], x[1], x[2], true, Tensor(), 0.3f, 2, x[3]); }, 65);
  gradcheck("attention_packed_qkv segments", {normal({2, 9, 3 * 8}), segments}, {true, false},
            [](auto& x) { return attention_packed_qkv(x[0], 2, true, Tensor(), x[1]); }, 66);
  gradcheck("attention_packed_qkv", {normal({2, 5, 3 * 8})}, all(1),
            [](auto& x) { return attention_packed_qkv(x[0], 2, true); }, 61);
  gradcheck("attention_packed_qkv bidir masked",
            {normal({2, 4, 3 * 8}), Tensor::from_vector_i32({1, 1, 1, 0, 1, 1, 1, 1}, {2, 4})}, {true, false},
            [](auto& x) { return attention_packed_qkv(x[0], 2, false, x[1]); }, 62);
}

TEST_F(Gradcheck, Rope) {
  Tensor cos, sin;
  rope_tables(16, 8, 10000.0f, cos, sin);
  gradcheck("rope positions (T)", {normal({2, 5, 3, 8}), Tensor::from_vector_i32({3, 4, 5, 6, 7}, {5})}, {true, false},
            [&](auto& x) { return rope(x[0], x[1], cos, sin); }, 70);
  gradcheck("rope positions (B, T)",
            {normal({2, 3, 2, 8}), Tensor::from_vector_i32({0, 1, 2, 9, 4, 15}, {2, 3})}, {true, false},
            [&](auto& x) { return rope(x[0], x[1], cos, sin); }, 71);
}

TEST_F(Gradcheck, CrossEntropy) {
  gradcheck("cross_entropy", {normal({6, 7}, 2.0f), Tensor::from_vector_i32({0, 6, -100, 3, 3, 1}, {6})},
            {true, false}, [](auto& x) { return cross_entropy(x[0], x[1]); }, 80);
  gradcheck("cross_entropy (B, T, V)", {normal({2, 3, 5}), Tensor::from_vector_i32({4, -100, 0, 1, 2, 2}, {2, 3})},
            {true, false}, [](auto& x) { return cross_entropy(x[0], x[1]); }, 81);
}

TEST_F(Gradcheck, Dropout) {
  // A fresh generator with the same seed per evaluation: the same mask every time.
  gradcheck("dropout", {normal({4, 50})}, all(1), [](auto& x) {
    Generator g(1234);
    return dropout(x[0], 0.3f, g);
  }, 90);
}

}  // namespace
