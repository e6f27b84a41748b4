// x @ W^T with W held quantised (quant/packed.h), forward and backward (to x only: the
// quantised base of QLoRA is frozen). Few rows (decoding) go to the quant_gemm kernel, which
// decodes the codes in registers; many rows (prefill, training) dequantise W a tile of rows at a
// time into a scratch buffer and use the f32 GEMM, so the whole matrix is never expanded.
#include <algorithm>
#include <vector>

#include "ops/backend.h"
#include "ops/ops.h"
#include "quant/packed.h"

namespace kotoba {

namespace {

// Up to this many rows of x the register-decoding kernel beats dequantise-then-GEMM.
constexpr int64_t kKernelRows = 16;

// Rows of W per dequantised tile: about 1 MB of f32.
int64_t tile_rows(const quant::PackedWeight& w) { return std::max<int64_t>(16, (int64_t(1) << 18) / w.cols); }

GemmArgs plain_gemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                    int64_t ldb, float beta, float* c, int64_t ldc) {
  GemmArgs g{};
  g.trans_a = false;
  g.trans_b = trans_b;
  g.m = m;
  g.n = n;
  g.k = k;
  g.alpha = 1.0f;
  g.a = a;
  g.lda = lda;
  g.b = b;
  g.ldb = ldb;
  g.beta = beta;
  g.c = c;
  g.ldc = ldc;
  g.batch = 1;
  g.dtype_ab = DType::f32;
  g.dtype_c = DType::f32;
  return g;
}

}  // namespace

Tensor quantized_linear(const Tensor& x_in, const std::shared_ptr<const quant::PackedWeight>& w, const Tensor& bias) {
  KOTOBA_CHECK(w != nullptr, "quantized_linear: no weight");
  KOTOBA_CHECK(x_in.defined() && x_in.ndim() >= 1 && x_in.size(-1) == w->cols, "quantized_linear: expected x (..., ",
               w->cols, ") for a ", w->rows, " x ", w->cols, " ", quant::weight_format_name(w->format),
               " weight, got x ", x_in.defined() ? shape_str(x_in.shape()) : std::string("undefined"));
  KOTOBA_CHECK(x_in.dtype() == DType::f32 && x_in.device() == Device::cpu,
               "quantized_linear: quantised weights run on the CPU with f32 activations, got ",
               dtype_name(x_in.dtype()), " on ", x_in.device() == Device::cpu ? "cpu" : "cuda");
  const Tensor x = x_in.contiguous();
  const int64_t k = w->cols, n = w->rows, m = x.numel() / k;
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, DType::f32, Device::cpu);
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  if (m <= kKernelRows) {
    QuantGemmArgs a{m, n, k, xp, k, w->codes.data(), w->row_bytes(), w->scales.data(), w->blocksize, w->bits,
                    w->table.data(), op, n, false};
    KOTOBA_DISPATCH(Device::cpu, quant_gemm, a);
  } else {
    const int64_t tile = tile_rows(*w);
    std::vector<float> buffer(size_t(std::min(tile, n) * k));
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t rows = std::min(tile, n - r0);
      w->dequantize_rows(r0, r0 + rows, buffer.data());
      // out[:, r0:r0+rows] = x @ tile^T
      GemmArgs g = plain_gemm(true, m, rows, k, xp, k, buffer.data(), k, 0.0f, op + r0, n);
      KOTOBA_DISPATCH(Device::cpu, gemm, g);
    }
  }
  auto x_meta = x_in.autograd_meta();
  Tensor result = record("quantized_linear", out, {&x_in}, [w, x_meta, x_shape = x_in.shape(), m, n, k](
                                                              const Tensor& grad_in) {
    GradTarget dx = grad_target(x_meta, x_shape, DType::f32, Device::cpu);
    if (!dx) return;
    const Tensor dy = grad_in.contiguous();
    // dx (m, k) = dy (m, n) @ W (n, k), a tile of W's rows at a time.
    const int64_t tile = tile_rows(*w);
    std::vector<float> buffer(size_t(std::min(tile, n) * k));
    bool written = dx.accumulate;
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t rows = std::min(tile, n - r0);
      w->dequantize_rows(r0, r0 + rows, buffer.data());
      GemmArgs g = plain_gemm(false, m, k, rows, dy.data<float>() + r0, n, buffer.data(), k, written ? 1.0f : 0.0f,
                              dx.tensor.data<float>(), k);
      KOTOBA_DISPATCH(Device::cpu, gemm, g);
      written = true;
    }
  });
  return bias.defined() ? add(result, bias) : result;
}

}  // namespace kotoba
