// Differentiable rotary position embedding (rotate-half, as HF LLaMA) and its cos/sin tables.
// The backward is the inverse rotation of the gradient, so nothing but positions is saved.
#include <vector>
#include <cmath>

#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

// x (..., T, H, D) with N = numel / (H D) tokens; positions (T) (shared by every sequence) or
// x's shape without (H, D). The rotation R(p) is orthogonal, so dx = R(p)^T dy = R(-p) dy.
Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin) {
  check_float(x, "rope", "x");
  check_defined(positions, "rope", "positions");
  check_defined(cos, "rope", "cos");
  check_defined(sin, "rope", "sin");
  KOTOBA_CHECK(x.ndim() >= 3, "rope: x must be (B, T, H, D) or (T, H, D), got shape ", shape_str(x.shape()));
  const int64_t D = x.size(-1), H = x.size(-2), T = x.size(-3);
  KOTOBA_CHECK(D % 2 == 0, "rope: head dim must be even, got x ", shape_str(x.shape()));
  KOTOBA_CHECK(positions.dtype() == DType::i32, "rope: positions must be i32, got ", dtype_name(positions.dtype()));
  KOTOBA_CHECK(cos.dtype() == DType::f32 && sin.dtype() == DType::f32, "rope: cos/sin tables must be f32");
  KOTOBA_CHECK(cos.ndim() == 2 && cos.size(1) == D / 2 && sin.shape() == cos.shape(), "rope: cos ",
               shape_str(cos.shape()), " and sin ", shape_str(sin.shape()), " must both be (max_pos, ", D / 2,
               ") for x ", shape_str(x.shape()));
  KOTOBA_CHECK(cos.device() == x.device() && sin.device() == x.device(), "rope: cos/sin tables must be on ",
               device_name(x.device()), " with x");
  const int64_t N = x.numel() / (H * D > 0 ? H * D : 1), max_pos = cos.size(0);
  Shape token_shape(x.shape().begin(), x.shape().end() - 2);
  const bool shared = positions.ndim() == 1 && positions.size(0) == T;
  KOTOBA_CHECK(shared || positions.shape() == token_shape, "rope: positions shape ", shape_str(positions.shape()),
               " must be (T) = [", T, "] or ", shape_str(token_shape), " for x ", shape_str(x.shape()));
  // One position per token (N), checked against the tables.
  Tensor pos = Tensor::empty({N}, DType::i32, Device::cpu);
  {
    Tensor pc = to_device(positions, Device::cpu);
    const int32_t* src = pc.data<int32_t>();
    int32_t* dst = pos.data<int32_t>();
    for (int64_t n = 0; n < N; ++n) {
      const int32_t p = src[shared ? n % T : n];
      KOTOBA_CHECK(p >= 0 && p < max_pos, "rope: position ", p, " at token ", n, " is out of range for tables of ",
                   max_pos, " positions");
      dst[n] = p;
    }
  }
  if (x.device() != Device::cpu) pos = to_device(pos, x.device());
  Tensor xc = as_contiguous(x), cc = as_contiguous(cos), sc = as_contiguous(sin);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) {
    RopeArgs args{xc.raw(), out.raw(), pos.data<int32_t>(), cc.data<float>(), sc.data<float>(), N, H, D, max_pos, false,
                  false,    x.dtype()};
    KOTOBA_DISPATCH(x.device(), rope, args);
  }
  return record("rope", out, {&x},
                [pos, cc = cc.detach(), sc = sc.detach(), meta = x.autograd_meta(), shape = x.shape(),
                 dtype = x.dtype(), device = x.device(), N, H, D, max_pos](const Tensor& g_in) {
                  GradTarget t = grad_target(meta, shape, dtype, device);
                  if (!t || N * H * D == 0) return;
                  Tensor g = as_contiguous(g_in);
                  RopeArgs args{g.raw(),
                                t.tensor.raw(),
                                pos.data<int32_t>(),
                                cc.data<float>(),
                                sc.data<float>(),
                                N,
                                H,
                                D,
                                max_pos,
                                true,
                                t.accumulate,
                                dtype};
                  KOTOBA_DISPATCH(device, rope, args);
                });
}

// cos/sin (max_pos, D/2) f32: angle(p, i) = p * inv_freq[i], inv_freq[i] = theta^(-2i/D), as HF
// computes them (f32 inv_freq times f32 position, then cos/sin of that f32 angle).
void rope_tables(int64_t max_pos, int64_t head_dim, float theta, Tensor& cos, Tensor& sin) {
  KOTOBA_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope_tables: head_dim must be positive and even, got ", head_dim);
  KOTOBA_CHECK(theta > 0.0f, "rope_tables: theta must be positive, got ", theta);
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[size_t(i)] = 1.0f / std::pow(theta, float(2 * i) / float(head_dim));  // f32 steps, as HF
  rope_tables_from_frequencies(max_pos, inv_freq, cos, sin);
}

void rope_tables_from_frequencies(int64_t max_pos, const std::vector<float>& inv_freq, Tensor& cos, Tensor& sin) {
  KOTOBA_CHECK(max_pos > 0, "rope_tables: max_pos must be positive, got ", max_pos);
  KOTOBA_CHECK(!inv_freq.empty(), "rope_tables: no frequencies");
  const int64_t half = int64_t(inv_freq.size());
  cos = Tensor::empty({max_pos, half}, DType::f32, Device::cpu);
  sin = Tensor::empty({max_pos, half}, DType::f32, Device::cpu);
  float* c = cos.data<float>();
  float* s = sin.data<float>();
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(p) * inv_freq[size_t(i)];  // an f32 product, as HF's f32 matmul
      c[p * half + i] = float(std::cos(double(angle)));
      s[p * half + i] = float(std::sin(double(angle)));
    }
}

}  // namespace kotoba
