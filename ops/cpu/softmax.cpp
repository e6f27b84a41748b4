// CPU kernels: softmax over the last dim and its backward, one row per task.
// Accumulation: dx is written (=) unless `accumulate`, then added (+=).
#include <algorithm>
#include <cmath>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

template <typename T>
inline float row_max(const T* x, int64_t C) {
  Vec m = vset(-INFINITY);
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes) m = vmax(m, vload(x + j));
  float r = vhmax(m);
  for (; j < C; ++j) r = r > to_f32(x[j]) ? r : to_f32(x[j]);
  return r;
}

// x (rows, C), out (rows, C): out = exp(x - max) / sum(exp(x - max)), row by row.
template <typename T>
void softmax_forward_typed(const SoftmaxForwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  T* out = static_cast<T*>(args.out);
  const int64_t rows = args.rows, C = args.cols;
  constexpr bool kF32 = sizeof(T) == sizeof(float);
#pragma omp parallel for schedule(static) if (rows * C > kGrain && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T* orow = out + r * C;
    const Vec vmax_x = vset(row_max(xr, C));
    // f32 rows keep exp(x - max) in `out` and rescale it; bf16 rows recompute the exponent
    // rather than round it twice.
    Vec acc = vzero();
    int64_t j = 0;
    for (; j + kLanes <= C; j += kLanes) {
      Vec e = vexp(vload(xr + j) - vmax_x);
      acc = acc + e;
      if constexpr (kF32) vstore(orow + j, e);
    }
    if (j < C) {
      // zero-filled tail lanes must not count: exp(0 - max) is not 0
      alignas(64) float tail[kLanes];
      vstore(tail, vexp(vload_n(xr + j, C - j) - vmax_x));
      for (int64_t t = C - j; t < kLanes; ++t) tail[t] = 0.0f;
      acc = acc + vload(tail);
      if constexpr (kF32) vstore_n(orow + j, vload(tail), C - j);
    }
    const Vec inv = vset(1.0f / vsum(acc));
    j = 0;
    for (; j + kLanes <= C; j += kLanes) {
      if constexpr (kF32)
        vstore(orow + j, vload(orow + j) * inv);
      else
        vstore(orow + j, vexp(vload(xr + j) - vmax_x) * inv);
    }
    if (j < C) {
      if constexpr (kF32)
        vstore_n(orow + j, vload_n(orow + j, C - j) * inv, C - j);
      else
        vstore_n(orow + j, vexp(vload_n(xr + j, C - j) - vmax_x) * inv, C - j);
    }
  }
}

// The forward was y = softmax(x) per row, so dx_j = y_j (dy_j - sum_k dy_k y_k).
// out, dout, dx (rows, C).
template <typename T>
void softmax_backward_typed(const SoftmaxBackwardArgs& args) {
  const T* y = static_cast<const T*>(args.out);
  const T* dy = static_cast<const T*>(args.dout);
  T* dx = static_cast<T*>(args.dx);
  const int64_t rows = args.rows, C = args.cols;
  const bool acc = args.accumulate;
#pragma omp parallel for schedule(static) if (rows * C > kGrain && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * C;
    const T* dr = dy + r * C;
    T* xr = dx + r * C;
    Vec dot = vzero();
    int64_t j = 0;
    for (; j + kLanes <= C; j += kLanes) dot = vfma(vload(yr + j), vload(dr + j), dot);
    if (j < C) dot = vfma(vload_n(yr + j, C - j), vload_n(dr + j, C - j), dot);
    const Vec vdot = vset(vsum(dot));
    j = 0;
    for (; j + kLanes <= C; j += kLanes) {
      Vec g = vload(yr + j) * (vload(dr + j) - vdot);
      vstore(xr + j, acc ? g + vload(xr + j) : g);
    }
    if (j < C) {
      const int64_t m = C - j;
      Vec g = vload_n(yr + j, m) * (vload_n(dr + j, m) - vdot);
      vstore_n(xr + j, acc ? g + vload_n(xr + j, m) : g, m);
    }
  }
}

template <typename T>
void attention_softmax_typed(const AttentionSoftmaxArgs& a) {
  T* probs = static_cast<T*>(a.probs);
  const int64_t C = a.cols;
#pragma omp parallel for schedule(static) if (a.rows * C > kGrain && a.rows > 1)
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.scores + r * C;
    T* p = probs + r * C;
    const int64_t t = r % a.queries;
    const int64_t visible = a.causal ? std::clamp<int64_t>(t + (C - a.queries) + 1, 0, C) : C;
    float m = -INFINITY;
    for (int64_t j = 0; j < visible; ++j) m = std::max(m, x[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < visible; ++j) sum += std::exp(x[j] - m);
    const float inv = visible > 0 ? 1.0f / sum : 0.0f;
    for (int64_t j = 0; j < visible; ++j) p[j] = from_f32<T>(std::exp(x[j] - m) * inv);
    for (int64_t j = visible; j < C; ++j) p[j] = from_f32<T>(0.0f);
  }
}

void attention_softmax(const AttentionSoftmaxArgs& args) {
  if (args.dtype == DType::bf16)
    attention_softmax_typed<bf16>(args);
  else
    attention_softmax_typed<float>(args);
}

void softmax_forward(const SoftmaxForwardArgs& args) {
  if (args.dtype == DType::bf16)
    softmax_forward_typed<bf16>(args);
  else
    softmax_forward_typed<float>(args);
}
void softmax_backward(const SoftmaxBackwardArgs& args) {
  if (args.dtype == DType::bf16)
    softmax_backward_typed<bf16>(args);
  else
    softmax_backward_typed<float>(args);
}

}  // namespace

void register_softmax_kernels(Backend& b) {
  b.softmax_forward = softmax_forward;
  b.softmax_backward = softmax_backward;
  b.attention_softmax = attention_softmax;
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
