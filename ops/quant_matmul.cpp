// x @ W^T with W held quantised (quant/packed.h), forward and backward (to x only: the
// quantised base of QLoRA is frozen). Few rows (decoding) go to the quant_gemm kernel, which
// decodes the codes in registers; many rows (prefill, training) dequantise W a tile of rows at a
// time into a scratch buffer and use the f32 GEMM, so the whole matrix is never expanded.
//
// int8 weights marked int8_activations run LLM.int8()'s mixed decomposition (Dettmers et al.
// 2022, bitsandbytes' Linear8bitLt) instead, at every row count: the input features where some
// row of x has |x| > outlier_threshold are the outlier columns; they are multiplied in f32 with
// the dequantised weight columns (code * absmax_row / 127). The other columns of each row of x are
// quantised like the weights, q = round(x * 127 / absmax) with absmax taken over those columns
// (vector-wise), and multiplied as int8 x int8 -> int32 (exact), rescaled by
// (absmax_x / 127) * (absmax_w / 127). Threshold 0: no outlier columns. (bitsandbytes takes the
// row's absmax over its elements below the threshold, which can include an outlier column's small
// values; here it is the values the int8 product holds.) The backward to x is the weight-only
// one: dy @ dequantised W.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/backend.h"
#include "ops/cpu/int8_gemm.h"
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

// out (m x n) = LLM.int8() of x (m x k) and w, as described at the top.
void llm_int8_forward(const float* x, int64_t m, const quant::PackedWeight& w, float* out) {
  const int64_t k = w.cols, n = w.rows;
  std::vector<int64_t> outliers;
  std::vector<char> is_outlier(size_t(k), 0);
  if (w.outlier_threshold > 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < k; ++c)
        if (std::fabs(x[i * k + c]) > w.outlier_threshold) is_outlier[size_t(c)] = 1;
    for (int64_t c = 0; c < k; ++c)
      if (is_outlier[size_t(c)]) outliers.push_back(c);
  }
  std::vector<int8_t> codes(size_t(m * k));
  std::vector<float> x_scale(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * k;
    float absmax = 0;
    bool finite = true;
    for (int64_t c = 0; c < k; ++c)
      if (!is_outlier[size_t(c)]) {
        finite &= std::isfinite(row[c]);
        absmax = std::max(absmax, std::fabs(row[c]));
      }
    KOTOBA_CHECK(finite, "quantized_linear (LLM.int8): row ", i,
                 " of x holds a non-finite value outside the outlier columns (it cannot be quantised to int8)");
    const float to_code = absmax != 0.0f ? 127.0f / absmax : 0.0f;
    if (std::isfinite(to_code)) {
      for (int64_t c = 0; c < k; ++c)
        codes[size_t(i * k + c)] = is_outlier[size_t(c)] ? int8_t(0) : int8_t(std::nearbyint(row[c] * to_code));
    } else {  // a subnormal absmax: 127 / absmax overflows, so divide first
      for (int64_t c = 0; c < k; ++c)
        codes[size_t(i * k + c)] =
            is_outlier[size_t(c)] ? int8_t(0) : int8_t(std::nearbyint(row[c] / absmax * 127.0f));
    }
    x_scale[size_t(i)] = absmax / 127.0f;
  }
  cpu::Int8GemmArgs a;
  a.m = m;
  a.n = n;
  a.k = k;
  a.a = codes.data();
  a.b = reinterpret_cast<const int8_t*>(w.codes.data());
  a.a_scale = x_scale.data();
  a.b_scale = w.scales.data();  // one block per row: absmax / 127
  a.c = out;
  a.ldc = n;
  // The instruction set is chosen once, at start-up (ops/backend.cpp).
  static const auto int8_gemm = cpu_isa() == "avx512" ? cpu::avx512::int8_gemm : cpu::avx2::int8_gemm;
  int8_gemm(a);
  if (outliers.empty()) return;
  // out += x[:, outliers] @ (dequantised W[:, outliers])^T in f32.
  const int64_t o = int64_t(outliers.size());
  std::vector<float> xo(size_t(m * o)), wo(size_t(n * o));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t q = 0; q < o; ++q) xo[size_t(i * o + q)] = x[i * k + outliers[size_t(q)]];
  const int8_t* wc = reinterpret_cast<const int8_t*>(w.codes.data());
  for (int64_t j = 0; j < n; ++j)
    for (int64_t q = 0; q < o; ++q)
      wo[size_t(j * o + q)] = float(wc[j * k + outliers[size_t(q)]]) * w.scales[size_t(j)];
  GemmArgs g = plain_gemm(true, m, n, o, xo.data(), o, wo.data(), o, 1.0f, out, n);
  KOTOBA_DISPATCH(Device::cpu, gemm, g);
}

// Rows of W per dequantised tile on a GPU: up to 64 MB of f32.
int64_t device_tile_rows(const quant::PackedWeight& w) { return std::max<int64_t>(16, (int64_t(1) << 24) / w.cols); }

// The GPU form: few rows through quant_gemm, many through tiles of W dequantised on the device
// and the f32 gemm; the backward the same way.
Tensor device_quantized_linear(const Tensor& x_in, const std::shared_ptr<const quant::PackedWeight>& w,
                               const PackedWeightOnDevice& dw) {
  const Device device = x_in.device();
  const Tensor& x = x_in;
  const Tensor xc = x.is_contiguous() ? x.detach() : contiguous(x.detach());
  const int64_t k = w->cols, n = w->rows, m = xc.numel() / k;
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, DType::f32, device);
  const int64_t blocks = k / w->blocksize;
  // Calls body(first row, rows, decoded tile) for every tile of W's rows. Holds the device copy,
  // so the backward can run after the layer moved away.
  auto for_tiles = [w, dw, blocks, k, n, device](auto body) {
    const uint8_t* codes = reinterpret_cast<const uint8_t*>(dw.codes.raw());
    const float* scales = dw.scales.data<float>();
    const int64_t tile = std::min(device_tile_rows(*w), n);
    Tensor buffer = Tensor::empty({tile, k}, DType::f32, device);
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t rows = std::min(tile, n - r0);
      DequantizeArgs d{codes + r0 * w->row_bytes(), w->row_bytes(), scales + r0 * blocks, w->blocksize, w->bits,
                       w->table.data(), rows, k, buffer.data<float>()};
      KOTOBA_DISPATCH(device, dequantize, d);
      body(r0, rows, buffer.data<float>());
    }
  };
  if (m > 0 && m <= kKernelRows) {
    QuantGemmArgs a{m, n, k, xc.data<float>(), k, reinterpret_cast<const uint8_t*>(dw.codes.raw()), w->row_bytes(),
                    dw.scales.data<float>(), w->blocksize, w->bits, w->table.data(), out.data<float>(), n, false};
    KOTOBA_DISPATCH(device, quant_gemm, a);
  } else if (m > 0) {
    float* op = out.data<float>();
    const float* xp = xc.data<float>();
    for_tiles([&](int64_t r0, int64_t rows, const float* tile) {
      GemmArgs g = plain_gemm(true, m, rows, k, xp, k, tile, k, 0.0f, op + r0, n);
      KOTOBA_DISPATCH(device, gemm, g);
    });
  }
  auto x_meta = x.autograd_meta();
  return record("quantized_linear", out, {&x}, [for_tiles, x_meta, x_shape = x.shape(), m, n, k, device](
                                                   const Tensor& grad_in) {
    GradTarget dx = grad_target(x_meta, x_shape, DType::f32, device);
    if (!dx || m == 0) return;
    const Tensor dy = grad_in.contiguous();
    bool written = dx.accumulate;
    for_tiles([&](int64_t r0, int64_t rows, const float* tile) {
      GemmArgs g = plain_gemm(false, m, k, rows, dy.data<float>() + r0, n, tile, k, written ? 1.0f : 0.0f,
                              dx.tensor.data<float>(), k);
      KOTOBA_DISPATCH(device, gemm, g);
      written = true;
    });
  });
}

}  // namespace

PackedWeightOnDevice PackedWeightOnDevice::make(const quant::PackedWeight& weight, Device device) {
  Tensor codes = Tensor::empty({int64_t(weight.codes.size())}, DType::i8);
  std::copy(weight.codes.begin(), weight.codes.end(), reinterpret_cast<uint8_t*>(codes.raw()));
  Tensor scales = Tensor::from_vector(weight.scales, {int64_t(weight.scales.size())});
  return {to_device(codes, device), to_device(scales, device)};
}

Tensor quantized_linear(const Tensor& x_in, const std::shared_ptr<const quant::PackedWeight>& w, const Tensor& bias,
                        const PackedWeightOnDevice* on_device) {
  KOTOBA_CHECK(w != nullptr, "quantized_linear: no weight");
  KOTOBA_CHECK(x_in.defined() && x_in.ndim() >= 1 && x_in.size(-1) == w->cols, "quantized_linear: expected x (..., ",
               w->cols, ") for a ", w->rows, " x ", w->cols, " ", quant::weight_format_name(w->format),
               " weight, got x ", x_in.defined() ? shape_str(x_in.shape()) : std::string("undefined"));
  // bf16 activations (mixed precision) are multiplied in f32; the cast returns their gradient.
  if (x_in.dtype() == DType::bf16) return quantized_linear(cast(x_in, DType::f32), w, bias, on_device);
  if (x_in.device() != Device::cpu) {
    KOTOBA_CHECK(on_device && on_device->codes.defined() && on_device->codes.device() == x_in.device(),
                 "quantized_linear: x is on ", device_name(x_in.device()), " but the ",
                 quant::weight_format_name(w->format), " weight is not (move the layer there with Module::to)");
    KOTOBA_CHECK(!w->int8_activations, "quantized_linear: LLM.int8() (int8 activations) runs on the CPU only");
    Tensor y = device_quantized_linear(x_in, w, *on_device);
    return bias.defined() ? add(y, bias) : y;
  }
  KOTOBA_CHECK(x_in.dtype() == DType::f32, "quantized_linear: the activations must be f32 or bf16, got ",
               dtype_name(x_in.dtype()));
  const Tensor x = x_in.contiguous();
  const int64_t k = w->cols, n = w->rows, m = x.numel() / k;
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, DType::f32, Device::cpu);
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  KOTOBA_CHECK(!w->int8_activations || w->format == quant::WeightFormat::int8,
               "quantized_linear: int8 activations (LLM.int8) need an int8 weight, got ",
               quant::weight_format_name(w->format));
  if (w->int8_activations) {
    llm_int8_forward(xp, m, *w, op);
  } else if (m <= kKernelRows) {
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
