// CPU kernels: LayerNorm and RMSNorm over the last dim, forward and backward, one row per task.
// Accumulation: dweight/dbias are parameter gradients (+=); dx is written (=) unless
// `accumulate`. Weight gradients are summed per thread, then the partials are reduced in a
// fixed order, so there are no races and no atomics.
#include <cmath>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

// Rows per parallel task: enough work that a task amortises scheduling.
inline int64_t row_grain(int64_t cols) { return max_i64(1, 4096 / max_i64(1, cols)); }

template <typename T>
inline Vec load_part(const T* p, int64_t n) {
  return n == kLanes ? vload(p) : vload_n(p, n);
}
template <typename T>
inline void store_part(T* p, Vec v, int64_t n) {
  if (n == kLanes)
    vstore(p, v);
  else
    vstore_n(p, v, n);
}

// Loops over a row in full vectors and one partial tail: f(index, lanes).
template <typename F>
inline void for_lanes(int64_t cols, F f) {
  int64_t j = 0;
  for (; j + kLanes <= cols; j += kLanes) f(j, int64_t(kLanes));
  if (j < cols) f(j, cols - j);
}

// ---- LayerNorm ----
// x (rows, C), weight/bias (C) (bias may be null), out (rows, C); mean/rstd (rows) f32, may be null.
// out = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps) (biased variance).
template <typename T>
void layernorm_forward_typed(const NormForwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const T* weight = static_cast<const T*>(args.weight);
  const T* bias = static_cast<const T*>(args.bias);
  T* out = static_cast<T*>(args.out);
  const int64_t rows = args.rows, C = args.cols;
  const float inv_c = 1.0f / float(C);
  const int64_t grain = row_grain(C);
#pragma omp parallel for schedule(static) if (rows * C > kGrain)
  for (int64_t r0 = 0; r0 < rows; r0 += grain) {
    for (int64_t r = r0; r < min_i64(rows, r0 + grain); ++r) {
      const T* xr = x + r * C;
      T* orow = out + r * C;
      Vec acc = vzero();
      for_lanes(C, [&](int64_t j, int64_t m) { acc = acc + load_part(xr + j, m); });
      const float mean = vsum(acc) * inv_c;
      const Vec vmean = vset(mean);
      // second pass on centred values: no cancellation when |mean| >> std
      acc = vzero();
      int64_t j = 0;
      for (; j + kLanes <= C; j += kLanes) {
        Vec d = vload(xr + j) - vmean;
        acc = vfma(d, d, acc);
      }
      if (j < C) {
        alignas(64) float tail[kLanes] = {};
        vstore(tail, vload_n(xr + j, C - j) - vmean);
        for (int64_t t = C - j; t < kLanes; ++t) tail[t] = 0.0f;
        Vec d = vload(tail);
        acc = vfma(d, d, acc);
      }
      const float rstd = 1.0f / std::sqrt(vsum(acc) * inv_c + args.eps);
      if (args.mean) args.mean[r] = mean;
      if (args.rstd) args.rstd[r] = rstd;
      const Vec vrstd = vset(rstd);
      for_lanes(C, [&](int64_t j, int64_t m) {
        Vec y = (load_part(xr + j, m) - vmean) * vrstd * load_part(weight + j, m);
        if (bias) y = y + load_part(bias + j, m);
        store_part(orow + j, y, m);
      });
    }
  }
}

// Threads for a row-parallel backward: one per kGrain elements of work, at most one per row.
inline int threads_for_rows(int64_t rows, int64_t cols) {
  if (omp_in_parallel()) return 1;
  int64_t by_work = rows * cols / kGrain;
  int64_t t = min_i64(omp_get_max_threads(), min_i64(by_work, rows));
  return int(max_i64(1, t));
}

// dst (C) += sum over threads of partial[t] (C), for each of `count` stacked vectors.
template <typename T>
void reduce_partials(const float* partial, int used, int64_t C, int count, T* const* dst) {
  for (int k = 0; k < count; ++k) {
    if (!dst[k]) continue;
    T* d = dst[k];
    const int64_t stride = int64_t(count) * C;
#pragma omp parallel for schedule(static) if (C * used > kGrain)
    for (int64_t j0 = 0; j0 < C; j0 += 256) {
      const int64_t j1 = min_i64(C, j0 + 256);
      for_lanes(j1 - j0, [&](int64_t jj, int64_t m) {
        const int64_t j = j0 + jj;
        Vec s = load_part(partial + int64_t(k) * C + j, m);
        for (int t = 1; t < used; ++t) s = s + load_part(partial + t * stride + int64_t(k) * C + j, m);
        store_part(d + j, load_part(d + j, m) + s, m);
      });
    }
  }
}

// The forward was y = xhat * w + b with xhat = (x - mean) * rstd, so
//   dw += sum over rows of dy * xhat,  db += sum over rows of dy,
//   dxhat = dy * w, and through the mean and variance of the row
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
// x, dout, dx (rows, C); weight, dweight, dbias (C); mean/rstd (rows) f32. dx, dweight or
// dbias may be null when that gradient is not needed.
template <typename T>
void layernorm_backward_typed(const NormBackwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const T* weight = static_cast<const T*>(args.weight);
  const T* dout = static_cast<const T*>(args.dout);
  T* dx = static_cast<T*>(args.dx);
  T* dweight = static_cast<T*>(args.dweight);
  T* dbias = static_cast<T*>(args.dbias);
  const int64_t rows = args.rows, C = args.cols;
  const float inv_c = 1.0f / float(C);
  const bool need_w = dweight || dbias;
  const int threads = threads_for_rows(rows, C);
  float* partial =
      need_w ? static_cast<float*>(thread_scratch(sizeof(float) * size_t(threads) * 2 * size_t(C))) : nullptr;
  int used = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    used = omp_get_num_threads();
    float* pw = need_w ? partial + int64_t(tid) * 2 * C : nullptr;
    float* pb = need_w ? pw + C : nullptr;
    if (need_w)
      for (int64_t j = 0; j < 2 * C; ++j) pw[j] = 0.0f;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * C;
      const T* dr = dout + r * C;
      const Vec vmean = vset(args.mean[r]), vrstd = vset(args.rstd[r]);
      Vec sum_dxhat = vzero(), sum_dxhat_xhat = vzero();
      for_lanes(C, [&](int64_t j, int64_t m) {
        Vec xhat = (load_part(xr + j, m) - vmean) * vrstd;
        Vec dy = load_part(dr + j, m);
        Vec dxhat = dy * load_part(weight + j, m);
        sum_dxhat = sum_dxhat + dxhat;
        sum_dxhat_xhat = vfma(dxhat, xhat, sum_dxhat_xhat);
        if (pw) {
          store_part(pw + j, vfma(dy, xhat, load_part(pw + j, m)), m);
          store_part(pb + j, load_part(pb + j, m) + dy, m);
        }
      });
      if (!dx) continue;
      // tail lanes of the partial loads are zero, so the sums are exact
      const Vec mean_dxhat = vset(vsum(sum_dxhat) * inv_c);
      const Vec mean_dxhat_xhat = vset(vsum(sum_dxhat_xhat) * inv_c);
      T* dxr = dx + r * C;
      for_lanes(C, [&](int64_t j, int64_t m) {
        Vec xhat = (load_part(xr + j, m) - vmean) * vrstd;
        Vec dxhat = load_part(dr + j, m) * load_part(weight + j, m);
        Vec g = vrstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        if (args.accumulate) g = g + load_part(dxr + j, m);
        store_part(dxr + j, g, m);
      });
    }
  }
  if (need_w) {
    T* dst[2] = {dweight, dbias};
    reduce_partials(partial, used, C, 2, dst);
  }
}

// ---- RMSNorm ----
// x (rows, C), weight (C), out (rows, C), rstd (rows) f32 (may be null); mean and bias unused.
// out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
template <typename T>
void rmsnorm_forward_typed(const NormForwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const T* weight = static_cast<const T*>(args.weight);
  T* out = static_cast<T*>(args.out);
  const int64_t rows = args.rows, C = args.cols;
  const float inv_c = 1.0f / float(C);
  const int64_t grain = row_grain(C);
#pragma omp parallel for schedule(static) if (rows * C > kGrain)
  for (int64_t r0 = 0; r0 < rows; r0 += grain) {
    for (int64_t r = r0; r < min_i64(rows, r0 + grain); ++r) {
      const T* xr = x + r * C;
      T* orow = out + r * C;
      Vec acc = vzero();
      for_lanes(C, [&](int64_t j, int64_t m) {
        Vec v = load_part(xr + j, m);
        acc = vfma(v, v, acc);
      });
      const float rstd = 1.0f / std::sqrt(vsum(acc) * inv_c + args.eps);
      if (args.rstd) args.rstd[r] = rstd;
      const Vec vrstd = vset(rstd);
      for_lanes(C, [&](int64_t j, int64_t m) {
        store_part(orow + j, load_part(xr + j, m) * vrstd * load_part(weight + j, m), m);
      });
    }
  }
}

// The forward was y = xhat * w with xhat = x * rstd, rstd = (mean(x^2) + eps)^-1/2, so
//   dw += sum over rows of dy * xhat,  dxhat = dy * w,
//   dx = rstd * (dxhat - xhat * mean(dxhat * xhat)).
template <typename T>
void rmsnorm_backward_typed(const NormBackwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const T* weight = static_cast<const T*>(args.weight);
  const T* dout = static_cast<const T*>(args.dout);
  T* dx = static_cast<T*>(args.dx);
  T* dweight = static_cast<T*>(args.dweight);
  const int64_t rows = args.rows, C = args.cols;
  const float inv_c = 1.0f / float(C);
  const int threads = threads_for_rows(rows, C);
  float* partial = dweight ? static_cast<float*>(thread_scratch(sizeof(float) * size_t(threads) * size_t(C))) : nullptr;
  int used = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    used = omp_get_num_threads();
    float* pw = dweight ? partial + int64_t(tid) * C : nullptr;
    if (pw)
      for (int64_t j = 0; j < C; ++j) pw[j] = 0.0f;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * C;
      const T* dr = dout + r * C;
      const Vec vrstd = vset(args.rstd[r]);
      Vec sum_dxhat_xhat = vzero();
      for_lanes(C, [&](int64_t j, int64_t m) {
        Vec xhat = load_part(xr + j, m) * vrstd;
        Vec dy = load_part(dr + j, m);
        sum_dxhat_xhat = vfma(dy * load_part(weight + j, m), xhat, sum_dxhat_xhat);
        if (pw) store_part(pw + j, vfma(dy, xhat, load_part(pw + j, m)), m);
      });
      if (!dx) continue;
      const Vec mean_dxhat_xhat = vset(vsum(sum_dxhat_xhat) * inv_c);
      T* dxr = dx + r * C;
      for_lanes(C, [&](int64_t j, int64_t m) {
        Vec xhat = load_part(xr + j, m) * vrstd;
        Vec dxhat = load_part(dr + j, m) * load_part(weight + j, m);
        Vec g = vrstd * (dxhat - xhat * mean_dxhat_xhat);
        if (args.accumulate) g = g + load_part(dxr + j, m);
        store_part(dxr + j, g, m);
      });
    }
  }
  if (dweight) {
    T* dst[1] = {dweight};
    reduce_partials(partial, used, C, 1, dst);
  }
}

void layernorm_forward(const NormForwardArgs& args) {
  if (args.dtype == DType::bf16)
    layernorm_forward_typed<bf16>(args);
  else
    layernorm_forward_typed<float>(args);
}
void layernorm_backward(const NormBackwardArgs& args) {
  if (args.dtype == DType::bf16)
    layernorm_backward_typed<bf16>(args);
  else
    layernorm_backward_typed<float>(args);
}
void rmsnorm_forward(const NormForwardArgs& args) {
  if (args.dtype == DType::bf16)
    rmsnorm_forward_typed<bf16>(args);
  else
    rmsnorm_forward_typed<float>(args);
}
void rmsnorm_backward(const NormBackwardArgs& args) {
  if (args.dtype == DType::bf16)
    rmsnorm_backward_typed<bf16>(args);
  else
    rmsnorm_backward_typed<float>(args);
}

}  // namespace

void register_norm_kernels(Backend& b) {
  b.layernorm_forward = layernorm_forward;
  b.layernorm_backward = layernorm_backward;
  b.rmsnorm_forward = rmsnorm_forward;
  b.rmsnorm_backward = rmsnorm_backward;
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
