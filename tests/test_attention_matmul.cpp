// Attention as matrix products (AttentionAlgorithm::matmul: gemm, masked softmax, gemm, the
// backward from the kept probabilities) against the fused kernel, which tests/test_ops.cpp holds
// to PyTorch: outputs and the gradients of q, k and v, and of packed qkv, in f32 and bf16, causal
// and full, grouped kv heads, more keys than queries, strided (transposed) inputs. On a GPU
// (skipped here) the CUDA matmul form is compared with the CPU's fused one.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "nn/module.h"
#include "ops/ops.h"
#include "test_util.h"

namespace kotoba {
namespace {

class AlgorithmScope {
 public:
  explicit AlgorithmScope(AttentionAlgorithm a) : previous_(attention_algorithm()) { set_attention_algorithm(a); }
  ~AlgorithmScope() { set_attention_algorithm(previous_); }

 private:
  AttentionAlgorithm previous_;
};

struct Case {
  int64_t B, H, Hkv, T, S, D;
  bool causal;
  std::string name() const {
    return "B" + std::to_string(B) + " H" + std::to_string(H) + " Hkv" + std::to_string(Hkv) + " T" +
           std::to_string(T) + " S" + std::to_string(S) + " D" + std::to_string(D) + (causal ? " causal" : "");
  }
};

struct Result {
  std::vector<float> out, dq, dk, dv;
};

// A (B, heads, len, D) input drawn as (B, len, heads, D) and viewed transposed, as LLaMA's
// projections reach attention: head stride D, token stride heads * D.
Tensor strided_input(int64_t B, int64_t heads, int64_t len, int64_t D, Generator& gen, DType dt, Device device) {
  Tensor t = Tensor::empty({B, len, heads, D});
  nn::init_normal(t, 1.0f, gen);
  Tensor moved = to_device(t.to(dt), device);
  moved.set_requires_grad(true);
  return moved;
}

Result run_sdpa(const Case& c, DType dt, Device device, AttentionAlgorithm algorithm, uint64_t seed) {
  Generator gen(seed);
  Tensor q = strided_input(c.B, c.H, c.T, c.D, gen, dt, device);
  Tensor k = strided_input(c.B, c.Hkv, c.S, c.D, gen, dt, device);
  Tensor v = strided_input(c.B, c.Hkv, c.S, c.D, gen, dt, device);
  Tensor w = Tensor::empty({c.B, c.H, c.T, c.D});
  nn::init_normal(w, 1.0f, gen);
  w = to_device(w.to(dt), device);
  AlgorithmScope scope(algorithm);
  Tensor out = scaled_dot_product_attention(transpose(q, 1, 2), transpose(k, 1, 2), transpose(v, 1, 2), c.causal);
  sum(mul(out, w)).backward();
  return {out.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
}

Result run_packed(int64_t B, int64_t T, int64_t H, int64_t D, bool causal, DType dt, Device device,
                  AttentionAlgorithm algorithm, uint64_t seed) {
  Generator gen(seed);
  Tensor qkv = Tensor::empty({B, T, 3 * H * D}), w = Tensor::empty({B, T, H * D});
  nn::init_normal(qkv, 1.0f, gen);
  nn::init_normal(w, 1.0f, gen);
  qkv = to_device(qkv.to(dt), device);
  qkv.set_requires_grad(true);
  w = to_device(w.to(dt), device);
  AlgorithmScope scope(algorithm);
  Tensor out = attention_packed_qkv(qkv, H, causal);
  sum(mul(out, w)).backward();
  return {out.to_vector(), qkv.grad().to_vector(), {}, {}};
}

// ||got - want|| / ||want||
double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1.0));
}

// f32: both forms sum in f32 in other orders. bf16: the matmul form rounds P (and dP) to bf16,
// the fused kernel keeps them in f32 registers: about 8 bits apart.
double tolerance(DType dt) { return dt == DType::bf16 ? 2e-2 : 2e-5; }

void expect_close(const Result& got, const Result& want, DType dt, const std::string& what) {
  const std::vector<float> Result::*fields[] = {&Result::out, &Result::dq, &Result::dk, &Result::dv};
  const char* names[] = {"out", "dq", "dk", "dv"};
  for (int i = 0; i < 4; ++i) {
    const auto& g = got.*fields[i];
    const auto& w = want.*fields[i];
    ASSERT_EQ(g.size(), w.size()) << what << " " << names[i];
    if (w.empty()) continue;
    EXPECT_LE(relative_error(g, w), tolerance(dt)) << what << " " << names[i];
  }
}

const Case kCases[] = {
    {2, 4, 4, 37, 37, 16, true},   // self-attention
    {2, 4, 4, 37, 37, 16, false},  // bidirectional
    {1, 6, 2, 29, 29, 32, true},   // grouped kv heads
    {2, 4, 2, 13, 40, 16, true},   // a cache: more keys than queries, causal aligned to the last
    {1, 2, 1, 9, 23, 64, false},   // cross-attention, one shared kv head
};

// Every case in both dtypes: the matmul form on `device` against the CPU's fused kernel. On the
// CPU the f32 results must also differ in some bit (the products sum in another order), or the
// matmul form did not run.
void expect_matmul_form_equals_fused(Device device, uint64_t seed) {
  for (DType dt : {DType::f32, DType::bf16})
    for (const Case& c : kCases) {
      const std::string what = c.name() + " " + std::string(dtype_name(dt));
      const Result fused = run_sdpa(c, dt, Device::cpu, AttentionAlgorithm::fused, seed);
      const Result matmul = run_sdpa(c, dt, device, AttentionAlgorithm::matmul, seed);
      expect_close(matmul, fused, dt, what);
      if (device == Device::cpu && dt == DType::f32) {
        EXPECT_NE(matmul.dq, fused.dq) << what << ": bit-identical, so the matmul form did not run";
      }
    }
}

TEST(MatmulAttention, EqualsTheFusedKernel) {
  const uint64_t seed = kotoba::testing::test_seed();
  expect_matmul_form_equals_fused(Device::cpu, seed);
  for (DType dt : {DType::f32, DType::bf16})
    for (bool causal : {true, false}) {
      const std::string what = "packed qkv " + std::string(dtype_name(dt)) + (causal ? " causal" : "");
      const Result fused = run_packed(2, 33, 3, 16, causal, dt, Device::cpu, AttentionAlgorithm::fused, seed);
      const Result matmul = run_packed(2, 33, 3, 16, causal, dt, Device::cpu, AttentionAlgorithm::matmul, seed);
      expect_close(matmul, fused, dt, what);
    }
}

// Key masks, windows and packed segments always take the fused kernel, whatever is asked.
TEST(MatmulAttention, MasksFallBackToTheFusedKernel) {
  Generator gen(kotoba::testing::test_seed());
  Tensor q = Tensor::empty({1, 2, 8, 16}), k = Tensor::empty({1, 2, 8, 16}), v = Tensor::empty({1, 2, 8, 16});
  for (Tensor* t : {&q, &k, &v}) nn::init_normal(*t, 1.0f, gen);
  Tensor mask = Tensor::from_vector_i32({1, 1, 1, 0, 1, 1, 0, 1}, {1, 8});
  std::vector<float> fused, matmul;
  {
    AlgorithmScope scope(AttentionAlgorithm::fused);
    fused = scaled_dot_product_attention(q, k, v, true, mask).to_vector();
  }
  {
    AlgorithmScope scope(AttentionAlgorithm::matmul);
    matmul = scaled_dot_product_attention(q, k, v, true, mask).to_vector();
  }
  EXPECT_EQ(matmul, fused);
}

TEST(MatmulAttention, CudaEqualsTheCpusFusedKernel) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const uint64_t seed = kotoba::testing::test_seed();
  expect_matmul_form_equals_fused(Device::cuda, seed);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Result cpu = run_packed(2, 160, 3, 64, true, dt, Device::cpu, AttentionAlgorithm::fused, seed);
    const Result gpu = run_packed(2, 160, 3, 64, true, dt, Device::cuda, AttentionAlgorithm::automatic, seed);
    expect_close(gpu, cpu, dt, "packed qkv, automatic (>= 128 queries: matmul) " + std::string(dtype_name(dt)));
  }
}

}  // namespace
}  // namespace kotoba
