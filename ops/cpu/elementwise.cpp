// CPU kernels: element-wise arithmetic, reductions, fills, activations and SwiGLU.
// Memory-bound loops, so each is one vectorised pass split into chunks across threads.
// Accumulation: activation gradients are written (=) unless `accumulate`, then added (+=).
#include <cmath>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

// ---- binary: out (outer, inner) = a <kind> b, b (outer, inner) or (inner) per row ----

template <BinaryKind K>
inline Vec apply(Vec a, Vec b) {
  if constexpr (K == BinaryKind::add) return a + b;
  if constexpr (K == BinaryKind::sub) return a - b;
  if constexpr (K == BinaryKind::mul) return a * b;
  return a / b;
}

template <BinaryKind K, typename T>
void binary_typed(const BinaryArgs& args) {
  const T* a = static_cast<const T*>(args.a);
  const T* b = static_cast<const T*>(args.b);
  T* out = static_cast<T*>(args.out);
  const int64_t n = args.n, period = args.b_period;
  if (n == 0) return;
  if (period == n) {  // same shape
    parallel_chunks(n, kGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + kLanes <= end; i += kLanes) vstore(out + i, apply<K>(vload(a + i), vload(b + i)));
      if (i < end) vstore_n(out + i, apply<K>(vload_n(a + i, end - i), vload_n(b + i, end - i)), end - i);
    });
  } else if (period == 1) {  // scalar b
    const Vec bv = vset(to_f32(b[0]));
    parallel_chunks(n, kGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + kLanes <= end; i += kLanes) vstore(out + i, apply<K>(vload(a + i), bv));
      if (i < end) vstore_n(out + i, apply<K>(vload_n(a + i, end - i), bv), end - i);
    });
  } else {  // b (inner) repeated over rows
    const int64_t inner = period, rows = n / period;
    parallel_chunks(rows, max_i64(1, kGrain / inner), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* ar = a + r * inner;
        T* orow = out + r * inner;
        int64_t j = 0;
        for (; j + kLanes <= inner; j += kLanes) vstore(orow + j, apply<K>(vload(ar + j), vload(b + j)));
        if (j < inner) vstore_n(orow + j, apply<K>(vload_n(ar + j, inner - j), vload_n(b + j, inner - j)), inner - j);
      }
    });
  }
}

template <typename T>
void binary_dispatch_kind(const BinaryArgs& args) {
  switch (args.kind) {
    case BinaryKind::add:
      binary_typed<BinaryKind::add, T>(args);
      break;
    case BinaryKind::sub:
      binary_typed<BinaryKind::sub, T>(args);
      break;
    case BinaryKind::mul:
      binary_typed<BinaryKind::mul, T>(args);
      break;
    case BinaryKind::div:
      binary_typed<BinaryKind::div, T>(args);
      break;
  }
}

void binary(const BinaryArgs& args) {
  if (args.dtype == DType::bf16)
    binary_dispatch_kind<bf16>(args);
  else
    binary_dispatch_kind<float>(args);
}

// ---- axpby: out (n) = alpha x + beta out ----

template <typename T>
void axpby_typed(const AxpbyArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  T* out = static_cast<T*>(args.out);
  const Vec alpha = vset(args.alpha), beta = vset(args.beta);
  const bool read_out = args.beta != 0.0f;
  parallel_chunks(args.n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    if (read_out) {
      for (; i + kLanes <= end; i += kLanes) vstore(out + i, vfma(alpha, vload(x + i), beta * vload(out + i)));
      if (i < end) vstore_n(out + i, vfma(alpha, vload_n(x + i, end - i), beta * vload_n(out + i, end - i)), end - i);
    } else {
      for (; i + kLanes <= end; i += kLanes) vstore(out + i, alpha * vload(x + i));
      if (i < end) vstore_n(out + i, alpha * vload_n(x + i, end - i), end - i);
    }
  });
}

void axpby(const AxpbyArgs& args) {
  if (args.dtype == DType::bf16)
    axpby_typed<bf16>(args);
  else
    axpby_typed<float>(args);
}

// ---- sum_rows: out (inner) (=|+=) sum over rows of x (outer, inner) ----

template <typename T>
void sum_rows_typed(const SumRowsArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  T* out = static_cast<T*>(args.out);
  const int64_t outer = args.outer, inner = args.inner;
  auto finish = [&](int64_t j, float s) { out[j] = from_f32<T>(args.accumulate ? to_f32(out[j]) + s : s); };
  const int max_threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t work = outer * inner;
  // Wide rows (or little work): threads own blocks of 8 vectors of columns and walk the rows
  // in order, keeping the block's sums in registers, so each row is read as one contiguous run.
  constexpr int64_t kBlock = 8 * kLanes;
  const int64_t blocks = (inner + kBlock - 1) / kBlock;
  if (work <= kGrain || max_threads == 1 || blocks >= max_threads) {
#pragma omp parallel for schedule(static) if (work > kGrain && blocks > 1)
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const int64_t j0 = bi * kBlock, width = min_i64(kBlock, inner - j0);
      alignas(64) float sums[kBlock];
      if (width == kBlock) {
        Vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero(), a4 = vzero(), a5 = vzero(), a6 = vzero(),
            a7 = vzero();
        for (int64_t r = 0; r < outer; ++r) {
          const T* row = x + r * inner + j0;
          a0 = a0 + vload(row);
          a1 = a1 + vload(row + kLanes);
          a2 = a2 + vload(row + 2 * kLanes);
          a3 = a3 + vload(row + 3 * kLanes);
          a4 = a4 + vload(row + 4 * kLanes);
          a5 = a5 + vload(row + 5 * kLanes);
          a6 = a6 + vload(row + 6 * kLanes);
          a7 = a7 + vload(row + 7 * kLanes);
        }
        vstore(sums, a0);
        vstore(sums + kLanes, a1);
        vstore(sums + 2 * kLanes, a2);
        vstore(sums + 3 * kLanes, a3);
        vstore(sums + 4 * kLanes, a4);
        vstore(sums + 5 * kLanes, a5);
        vstore(sums + 6 * kLanes, a6);
        vstore(sums + 7 * kLanes, a7);
      } else {  // the last, partial block: sums live in L1
        for (int64_t j = 0; j < kBlock; ++j) sums[j] = 0.0f;
        for (int64_t r = 0; r < outer; ++r) {
          const T* row = x + r * inner + j0;
          int64_t j = 0;
          for (; j + kLanes <= width; j += kLanes) vstore(sums + j, vload(sums + j) + vload(row + j));
          if (j < width) vstore(sums + j, vload(sums + j) + vload_n(row + j, width - j));
        }
      }
      for (int64_t j = 0; j < width; ++j) finish(j0 + j, sums[j]);
    }
    return;
  }
  // Tall and narrow: each thread sums a band of rows into its own partial, then the partials
  // are added in a fixed order (deterministic for a given thread count).
  int threads = int(min_i64(max_threads, max_i64(1, work / kGrain)));
  float* partial = static_cast<float*>(thread_scratch(sizeof(float) * size_t(threads) * size_t(inner)));
  int used = 1;
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
#pragma omp single
    used = team;
    float* mine = partial + int64_t(tid) * inner;
    for (int64_t j = 0; j < inner; ++j) mine[j] = 0.0f;
    const int64_t r0 = outer * tid / team, r1 = outer * (tid + 1) / team;
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = x + r * inner;
      int64_t j = 0;
      for (; j + kLanes <= inner; j += kLanes) vstore(mine + j, vload(mine + j) + vload(row + j));
      for (; j < inner; ++j) mine[j] += to_f32(row[j]);
    }
  }
  for (int64_t j = 0; j < inner; ++j) {
    float s = 0.0f;
    for (int t = 0; t < used; ++t) s += partial[int64_t(t) * inner + j];
    finish(j, s);
  }
}

void sum_rows(const SumRowsArgs& args) {
  if (args.dtype == DType::bf16)
    sum_rows_typed<bf16>(args);
  else
    sum_rows_typed<float>(args);
}

// ---- reduce_sum: *out (f64) = sum of x (n) or of x^2 ----

// Adds the lanes of v (or their squares) into two f64 accumulators.
#if defined(KOTOBA_ISA_AVX512)
struct DoubleAcc {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  void add(Vec v, bool squares) {
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v.v));
    __m512d b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v.v), 1)));
    if (squares) {
      lo = _mm512_fmadd_pd(a, a, lo);
      hi = _mm512_fmadd_pd(b, b, hi);
    } else {
      lo = _mm512_add_pd(lo, a);
      hi = _mm512_add_pd(hi, b);
    }
  }
  double total() const { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }
};
#else
struct DoubleAcc {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  void add(Vec v, bool squares) {
    __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v.v));
    __m256d b = _mm256_cvtps_pd(_mm256_extractf128_ps(v.v, 1));
    if (squares) {
      lo = _mm256_fmadd_pd(a, a, lo);
      hi = _mm256_fmadd_pd(b, b, hi);
    } else {
      lo = _mm256_add_pd(lo, a);
      hi = _mm256_add_pd(hi, b);
    }
  }
  double total() const {
    alignas(32) double d[4];
    _mm256_store_pd(d, _mm256_add_pd(lo, hi));
    return (d[0] + d[1]) + (d[2] + d[3]);
  }
};
#endif

template <typename T>
void reduce_sum_typed(const ReduceSumArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const int64_t n = args.n;
  const int64_t grain = 4 * kGrain;
  const int64_t chunks = (n + grain - 1) / grain;
  if (chunks == 0) {
    *args.out = 0.0;
    return;
  }
  // One partial per chunk, added in order: the result does not depend on the thread count.
  double* partial = static_cast<double*>(thread_scratch(sizeof(double) * size_t(chunks)));
  const bool squares = args.squares;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * grain, end = min_i64(n, begin + grain);
    DoubleAcc acc0, acc1;
    int64_t i = begin;
    for (; i + 2 * kLanes <= end; i += 2 * kLanes) {
      acc0.add(vload(x + i), squares);
      acc1.add(vload(x + i + kLanes), squares);
    }
    for (; i + kLanes <= end; i += kLanes) acc0.add(vload(x + i), squares);
    if (i < end) acc1.add(vload_n(x + i, end - i), squares);
    partial[c] = acc0.total() + acc1.total();
  }
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  *args.out = total;
}

void reduce_sum(const ReduceSumArgs& args) {
  if (args.dtype == DType::bf16)
    reduce_sum_typed<bf16>(args);
  else
    reduce_sum_typed<float>(args);
}

void reduce_sum_many(const ReduceSumManyArgs& args) {
  for (int64_t i = 0; i < args.count; ++i) {
    ReduceSumArgs one{args.xs[i], &args.out[i], args.ns[i], args.squares, args.dtype};
    reduce_sum(one);
  }
}

// ---- convert: dst (n) (=|+=) src (n) in another dtype ----

template <typename S, typename D>
void convert_typed(const ConvertArgs& args) {
  const S* src = static_cast<const S*>(args.src);
  D* dst = static_cast<D*>(args.dst);
  const bool acc = args.accumulate;
  parallel_chunks(args.n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) vstore(dst + i, acc ? vload(dst + i) + vload(src + i) : vload(src + i));
    if (i < end) {
      const int64_t r = end - i;
      vstore_n(dst + i, acc ? vload_n(dst + i, r) + vload_n(src + i, r) : vload_n(src + i, r), r);
    }
  });
}

void convert(const ConvertArgs& args) {
  const bool src_bf16 = args.src_dtype == DType::bf16, dst_bf16 = args.dst_dtype == DType::bf16;
  if (src_bf16 && dst_bf16)
    convert_typed<bf16, bf16>(args);
  else if (src_bf16)
    convert_typed<bf16, float>(args);
  else if (dst_bf16)
    convert_typed<float, bf16>(args);
  else
    convert_typed<float, float>(args);
}

// ---- fill: out (n) = value ----

template <typename T>
void fill_typed(const FillArgs& args) {
  T* out = static_cast<T*>(args.out);
  const Vec v = vset(args.value);
  parallel_chunks(args.n, 4 * kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) vstore(out + i, v);
    if (i < end) vstore_n(out + i, v, end - i);
  });
}

void fill(const FillArgs& args) {
  if (args.dtype == DType::bf16)
    fill_typed<bf16>(args);
  else
    fill_typed<float>(args);
}

// ---- unary activations: out (n) = f(x), dx (n) (=|+=) dout * f'(x) ----

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;
// Beyond |x| = 20 the tanh form is exactly 0 or x in f32 (its sigmoid argument exceeds 600),
// and clamping keeps x^3 from overflowing into inf * 0.
constexpr float kGeluClamp = 20.0f;

// gelu(x) = 0.5 x (1 + tanh(u)), u = k (x + c x^3). Since 0.5 (1 + tanh(u)) = sigmoid(2u),
// gelu(x) = x sigmoid(2u), which is exact in both tails (no 1 + tanh cancellation).
inline Vec gelu_fwd(Vec x) {
  Vec xc = vmin(vmax(x, vset(-kGeluClamp)), vset(kGeluClamp));
  Vec x2 = xc * xc;
  Vec u = vset(kGeluK) * xc * vfma(vset(kGeluC), x2, vset(1.0f));
  return x * vsigmoid(u + u);
}
// d/dx [x s(2u)] = s + x s (1 - s) 2 u',  u' = k (1 + 3 c x^2)
inline Vec gelu_grad(Vec x) {
  Vec xc = vmin(vmax(x, vset(-kGeluClamp)), vset(kGeluClamp));
  Vec x2 = xc * xc;
  Vec u = vset(kGeluK) * xc * vfma(vset(kGeluC), x2, vset(1.0f));
  Vec ss;
  Vec s = vsigmoid(u + u, &ss);
  Vec du = vset(2.0f * kGeluK) * vfma(vset(3.0f * kGeluC), x2, vset(1.0f));
  return vfma(xc * ss, du, s);
}
// gelu_erf(x) = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)), and its derivative Phi(x) + x phi(x),
// phi(x) = exp(-x^2 / 2) / sqrt(2 pi): lane by lane through std::erf (no vector erf here). Both
// tails are exact in f32: erf saturates to +-1 and x phi(x) underflows to 0.
inline Vec gelu_erf_fwd(Vec x) {
  alignas(64) float v[kLanes];
  vstore(v, x);
  for (int64_t i = 0; i < kLanes; ++i) v[i] = 0.5f * v[i] * (1.0f + std::erf(v[i] * float(M_SQRT1_2)));
  return vload(v);
}
inline Vec gelu_erf_grad(Vec x) {
  alignas(64) float v[kLanes];
  vstore(v, x);
  for (int64_t i = 0; i < kLanes; ++i) {
    const float t = v[i];
    v[i] = 0.5f * (1.0f + std::erf(t * float(M_SQRT1_2))) + t * 0.3989422804014327f * std::exp(-0.5f * t * t);
  }
  return vload(v);
}
// silu(x) = x s(x); silu'(x) = s + x s (1 - s)
inline Vec silu_fwd(Vec x) { return x * vsigmoid(x); }
inline Vec silu_grad(Vec x) {
  Vec ss;
  Vec s = vsigmoid(x, &ss);
  return vfma(x, ss, s);
}

template <UnaryKind K>
inline Vec unary_fwd(Vec x) {
  if constexpr (K == UnaryKind::gelu_tanh) return gelu_fwd(x);
  if constexpr (K == UnaryKind::gelu_erf) return gelu_erf_fwd(x);
  if constexpr (K == UnaryKind::silu) return silu_fwd(x);
  if constexpr (K == UnaryKind::relu) return vmax(x, vzero());
  if constexpr (K == UnaryKind::exp) return vexp(x);
  return vtanh(x);
}
// dout * f'(x)
template <UnaryKind K>
inline Vec unary_bwd(Vec x, Vec dout) {
  if constexpr (K == UnaryKind::gelu_tanh) return dout * gelu_grad(x);
  if constexpr (K == UnaryKind::gelu_erf) return dout * gelu_erf_grad(x);
  if constexpr (K == UnaryKind::silu) return dout * silu_grad(x);
  if constexpr (K == UnaryKind::relu) return vselect_gt(x, vzero(), dout, vzero());
  if constexpr (K == UnaryKind::exp) return dout * vexp(x);
  Vec t = vtanh(x);  // tanh' = 1 - tanh^2
  return dout * (vset(1.0f) - t * t);
}

template <UnaryKind K, typename T>
void unary_forward_typed(const UnaryForwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  T* out = static_cast<T*>(args.out);
  parallel_chunks(args.n, kGrain / 4, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) vstore(out + i, unary_fwd<K>(vload(x + i)));
    if (i < end) vstore_n(out + i, unary_fwd<K>(vload_n(x + i, end - i)), end - i);
  });
}

template <UnaryKind K, typename T>
void unary_backward_typed(const UnaryBackwardArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  const T* dout = static_cast<const T*>(args.dout);
  T* dx = static_cast<T*>(args.dx);
  const bool acc = args.accumulate;
  parallel_chunks(args.n, kGrain / 4, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      Vec g = unary_bwd<K>(vload(x + i), vload(dout + i));
      vstore(dx + i, acc ? g + vload(dx + i) : g);
    }
    if (i < end) {
      int64_t m = end - i;
      Vec g = unary_bwd<K>(vload_n(x + i, m), vload_n(dout + i, m));
      vstore_n(dx + i, acc ? g + vload_n(dx + i, m) : g, m);
    }
  });
}

template <typename T>
void unary_forward_kind(const UnaryForwardArgs& args) {
  switch (args.kind) {
    case UnaryKind::gelu_tanh:
      unary_forward_typed<UnaryKind::gelu_tanh, T>(args);
      break;
    case UnaryKind::silu:
      unary_forward_typed<UnaryKind::silu, T>(args);
      break;
    case UnaryKind::relu:
      unary_forward_typed<UnaryKind::relu, T>(args);
      break;
    case UnaryKind::exp:
      unary_forward_typed<UnaryKind::exp, T>(args);
      break;
    case UnaryKind::tanh:
      unary_forward_typed<UnaryKind::tanh, T>(args);
      break;
    case UnaryKind::gelu_erf:
      unary_forward_typed<UnaryKind::gelu_erf, T>(args);
      break;
  }
}
template <typename T>
void unary_backward_kind(const UnaryBackwardArgs& args) {
  switch (args.kind) {
    case UnaryKind::gelu_tanh:
      unary_backward_typed<UnaryKind::gelu_tanh, T>(args);
      break;
    case UnaryKind::silu:
      unary_backward_typed<UnaryKind::silu, T>(args);
      break;
    case UnaryKind::relu:
      unary_backward_typed<UnaryKind::relu, T>(args);
      break;
    case UnaryKind::exp:
      unary_backward_typed<UnaryKind::exp, T>(args);
      break;
    case UnaryKind::tanh:
      unary_backward_typed<UnaryKind::tanh, T>(args);
      break;
    case UnaryKind::gelu_erf:
      unary_backward_typed<UnaryKind::gelu_erf, T>(args);
      break;
  }
}

void unary_forward(const UnaryForwardArgs& args) {
  if (args.dtype == DType::bf16)
    unary_forward_kind<bf16>(args);
  else
    unary_forward_kind<float>(args);
}
void unary_backward(const UnaryBackwardArgs& args) {
  if (args.dtype == DType::bf16)
    unary_backward_kind<bf16>(args);
  else
    unary_backward_kind<float>(args);
}

// ---- SwiGLU: gate, up, out (n); out = silu(gate) * up ----

template <typename T>
void swiglu_forward_typed(const SwigluForwardArgs& args) {
  const T* gate = static_cast<const T*>(args.gate);
  const T* up = static_cast<const T*>(args.up);
  T* out = static_cast<T*>(args.out);
  parallel_chunks(args.n, kGrain / 4, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) vstore(out + i, silu_fwd(vload(gate + i)) * vload(up + i));
    if (i < end) {
      int64_t m = end - i;
      vstore_n(out + i, silu_fwd(vload_n(gate + i, m)) * vload_n(up + i, m), m);
    }
  });
}

// The forward was out = silu(g) * u, so dg = dout * u * silu'(g) and du = dout * silu(g).
// Either of dgate / dup may be null when that input needs no gradient.
template <typename T>
void swiglu_backward_typed(const SwigluBackwardArgs& args) {
  const T* gate = static_cast<const T*>(args.gate);
  const T* up = static_cast<const T*>(args.up);
  const T* dout = static_cast<const T*>(args.dout);
  T* dgate = static_cast<T*>(args.dgate);
  T* dup = static_cast<T*>(args.dup);
  const bool acc = args.accumulate;
  auto step = [&](int64_t i, int64_t m) {
    const bool full = m == kLanes;
    Vec g = full ? vload(gate + i) : vload_n(gate + i, m);
    Vec u = full ? vload(up + i) : vload_n(up + i, m);
    Vec d = full ? vload(dout + i) : vload_n(dout + i, m);
    Vec ss;
    Vec s = vsigmoid(g, &ss);
    if (dgate) {
      Vec r = d * u * vfma(g, ss, s);
      if (acc) r = r + (full ? vload(dgate + i) : vload_n(dgate + i, m));
      if (full)
        vstore(dgate + i, r);
      else
        vstore_n(dgate + i, r, m);
    }
    if (dup) {
      Vec r = d * g * s;
      if (acc) r = r + (full ? vload(dup + i) : vload_n(dup + i, m));
      if (full)
        vstore(dup + i, r);
      else
        vstore_n(dup + i, r, m);
    }
  };
  parallel_chunks(args.n, kGrain / 4, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) step(i, kLanes);
    if (i < end) step(i, end - i);
  });
}

void swiglu_forward(const SwigluForwardArgs& args) {
  if (args.dtype == DType::bf16)
    swiglu_forward_typed<bf16>(args);
  else
    swiglu_forward_typed<float>(args);
}
void swiglu_backward(const SwigluBackwardArgs& args) {
  if (args.dtype == DType::bf16)
    swiglu_backward_typed<bf16>(args);
  else
    swiglu_backward_typed<float>(args);
}

}  // namespace

void register_elementwise_kernels(Backend& b) {
  b.binary = binary;
  b.axpby = axpby;
  b.sum_rows = sum_rows;
  b.reduce_sum = reduce_sum;
  b.reduce_sum_many = reduce_sum_many;
  b.convert = convert;
  b.fill = fill;
  b.unary_forward = unary_forward;
  b.unary_backward = unary_backward;
  b.swiglu_forward = swiglu_forward;
  b.swiglu_backward = swiglu_backward;
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
