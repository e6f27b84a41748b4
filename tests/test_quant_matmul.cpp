// Quantised weights in the kernels' layout (quant/packed.h) and the quantised matmul op: the
// packed matrix dequantises to exactly what the format's own dequantiser gives, and
// quantized_linear (the register-decoding kernel for few rows, the tiled GEMM for many, and the
// backward) equals x @ dequantised(W)^T computed in double. Run under both CPU kernel sets.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/ops.h"
#include "quant/formats.h"
#include "quant/packed.h"
#include "test_util.h"

namespace kt = kotoba::testing;
using namespace kotoba;
using namespace kotoba::quant;

namespace {

std::vector<float> random_matrix(Generator& gen, int64_t n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = scale * gen.normal();
  return v;
}

TEST(QuantMatmul, PackedWeightsDequantiseAsTheirFormat) {
  Generator gen(kt::test_seed());
  const int64_t rows = 6, cols = 192, n = rows * cols;
  const std::vector<float> w = random_matrix(gen, n, 0.1f);
  std::vector<float> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
  for (WeightFormat f : {WeightFormat::int8, WeightFormat::q8_0, WeightFormat::q4_0, WeightFormat::nf4}) {
    PackedWeight p = pack_weight(w.data(), rows, cols, f);
    p.dequantize_rows(0, rows, got.data());
    switch (f) {
      case WeightFormat::int8: dequantize_int8_rows(quantize_int8_rows(w.data(), rows, cols), want.data()); break;
      case WeightFormat::nf4: dequantize_nf4(quantize_nf4(w.data(), n), want.data()); break;
      case WeightFormat::q8_0:
      case WeightFormat::q4_0: {
        const bool q4 = f == WeightFormat::q4_0;
        std::vector<uint8_t> bytes(size_t(n / kGgmlBlock * (q4 ? kQ4_0Bytes : kQ8_0Bytes)));
        (q4 ? quantize_q4_0 : quantize_q8_0)(w.data(), n, bytes.data());
        (q4 ? dequantize_q4_0 : dequantize_q8_0)(bytes.data(), n, want.data());
        break;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      // int8: the kernel's scale is absmax / 127 folded once (bitsandbytes multiplies twice).
      const float tol = f == WeightFormat::int8 ? 1e-6f * std::abs(want[size_t(i)]) : 0.0f;
      ASSERT_NEAR(got[size_t(i)], want[size_t(i)], tol) << weight_format_name(f) << " " << i;
    }
    const double ratio = double(p.bytes()) / double(n * 4);
    EXPECT_LT(ratio, weight_format_bits(f) == 4 ? 0.16 : 0.29) << weight_format_name(f);
  }
}

TEST(QuantMatmul, ForwardAndBackwardMatchDequantisedProduct) {
  Generator gen(kt::test_seed() + 1);
  for (WeightFormat f : {WeightFormat::int8, WeightFormat::q8_0, WeightFormat::q4_0, WeightFormat::nf4}) {
    for (int64_t rows_x : {1, 3, 4, 7, 16, 37}) {
      const int64_t out = 45, in = 128;
      const std::vector<float> wv = random_matrix(gen, out * in, 0.2f);
      auto w = std::make_shared<const PackedWeight>(pack_weight(wv.data(), out, in, f));
      std::vector<float> deq(static_cast<size_t>(out * in));
      w->dequantize_rows(0, out, deq.data());
      const std::vector<float> xv = random_matrix(gen, rows_x * in, 1.0f), dyv = random_matrix(gen, rows_x * out, 1.0f);
      Tensor x = Tensor::from_vector(xv, {rows_x, in});
      x.set_requires_grad(true);
      Tensor bias = Tensor::from_vector(random_matrix(gen, out, 1.0f), {out});
      Tensor y = quantized_linear(x, w, bias);
      ASSERT_EQ(y.shape(), (Shape{rows_x, out}));
      backward(y, Tensor::from_vector(dyv, {rows_x, out}));
      const std::vector<float> yv = y.to_vector(), bv = bias.to_vector(), dx = x.grad().to_vector();
      for (int64_t r = 0; r < rows_x; ++r) {
        for (int64_t o = 0; o < out; ++o) {
          double want = bv[size_t(o)], mag = std::abs(bv[size_t(o)]);
          for (int64_t i = 0; i < in; ++i) {
            want += double(xv[size_t(r * in + i)]) * deq[size_t(o * in + i)];
            mag += std::abs(double(xv[size_t(r * in + i)]) * deq[size_t(o * in + i)]);
          }
          ASSERT_NEAR(yv[size_t(r * out + o)], want, 1e-5 * mag + 1e-6)
              << weight_format_name(f) << " rows " << rows_x << " at " << r << "," << o;
        }
        for (int64_t i = 0; i < in; ++i) {
          double want = 0, mag = 0;
          for (int64_t o = 0; o < out; ++o) {
            want += double(dyv[size_t(r * out + o)]) * deq[size_t(o * in + i)];
            mag += std::abs(double(dyv[size_t(r * out + o)]) * deq[size_t(o * in + i)]);
          }
          ASSERT_NEAR(dx[size_t(r * in + i)], want, 1e-5 * mag + 1e-6) << weight_format_name(f) << " dx " << r << "," << i;
        }
      }
    }
  }
}

// Decoding a batch of sequences must give each row what it gets alone (batched generation equals
// one-by-one): the kernel's per-row sums may not depend on how many rows share a decoded vector.
TEST(QuantMatmul, ARowGetsTheSameBitsAloneAndInABatch) {
  Generator gen(kt::test_seed() + 2);
  for (WeightFormat f : {WeightFormat::int8, WeightFormat::q8_0, WeightFormat::q4_0, WeightFormat::nf4}) {
    const int64_t out = 37, in = 256, rows = 7;
    const std::vector<float> wv = random_matrix(gen, out * in, 0.2f);
    auto w = std::make_shared<const PackedWeight>(pack_weight(wv.data(), out, in, f));
    const std::vector<float> xv = random_matrix(gen, rows * in, 1.0f);
    const std::vector<float> batch = quantized_linear(Tensor::from_vector(xv, {rows, in}), w, Tensor()).to_vector();
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> row(xv.begin() + r * in, xv.begin() + (r + 1) * in);
      const std::vector<float> alone = quantized_linear(Tensor::from_vector(row, {1, in}), w, Tensor()).to_vector();
      for (int64_t o = 0; o < out; ++o)
        ASSERT_EQ(alone[size_t(o)], batch[size_t(r * out + o)])
            << weight_format_name(f) << " row " << r << " out " << o;
    }
  }
}

TEST(QuantMatmul, ErrorsAreNamed) {
  std::vector<float> w(10 * 48, 0.5f);
  EXPECT_THROW(pack_weight(w.data(), 10, 48, WeightFormat::nf4), Error);  // 48 columns: not whole 64-blocks
  EXPECT_THROW(pack_weight(w.data(), 10, 40, WeightFormat::int8), Error);
  EXPECT_THROW(parse_weight_format("q5_k"), Error);
  auto p = std::make_shared<const PackedWeight>(pack_weight(w.data(), 15, 32, WeightFormat::q8_0));
  EXPECT_THROW(quantized_linear(Tensor::zeros({2, 31}), p), Error);
}

}  // namespace

// On a GPU (the weight's codes and scales copied there): the output and the gradient to x equal
// the CPU's, for few rows (quant_gemm) and many (dequantised tiles and the gemm), every format.
TEST(QuantMatmul, CudaEqualsTheCpu) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  Generator gen(kotoba::testing::test_seed());
  const int64_t in = 128, out = 48;
  const std::vector<float> wv = random_matrix(gen, out * in, 0.1f);
  for (WeightFormat f : {WeightFormat::int8, WeightFormat::q8_0, WeightFormat::q4_0, WeightFormat::nf4}) {
    auto w = std::make_shared<const PackedWeight>(pack_weight(wv.data(), out, in, f));
    const PackedWeightOnDevice on_gpu = PackedWeightOnDevice::make(*w, Device::cuda);
    for (int64_t rows : {3, 40}) {
      const std::vector<float> xv = random_matrix(gen, rows * in, 1.0f), gv = random_matrix(gen, rows * out, 1.0f);
      auto run = [&](Device device, std::vector<float>& dx) {
        Tensor x = on_device(Tensor::from_vector(xv, {rows, in}), device);
        x.set_requires_grad(true);
        Tensor y = quantized_linear(x, w, Tensor(), device == Device::cpu ? nullptr : &on_gpu);
        sum(mul(y, on_device(Tensor::from_vector(gv, {rows, out}), device))).backward();
        dx = x.grad().to_vector();
        return y.to_vector();
      };
      std::vector<float> dx_cpu, dx_gpu;
      const std::vector<float> y_cpu = run(Device::cpu, dx_cpu), y_gpu = run(Device::cuda, dx_gpu);
      for (size_t i = 0; i < y_cpu.size(); ++i)
        EXPECT_NEAR(y_gpu[i], y_cpu[i], 1e-4f * (1 + std::fabs(y_cpu[i]))) << weight_format_name(f) << " rows " << rows;
      for (size_t i = 0; i < dx_cpu.size(); ++i)
        EXPECT_NEAR(dx_gpu[i], dx_cpu[i], 1e-4f * (1 + std::fabs(dx_cpu[i]))) << weight_format_name(f) << " rows " << rows;
    }
  }
  // A weight that is not on x's device is named.
  auto w = std::make_shared<const PackedWeight>(pack_weight(wv.data(), out, in, WeightFormat::q8_0));
  EXPECT_THROW(quantized_linear(to_device(Tensor::zeros({2, in}), Device::cuda), w), Error);
}
