// Small helpers shared by the CPU kernel files: parallel chunking, a per-thread scratch buffer
// and the stable sigmoid. Compiled per ISA like the kernels, so no STL here either.
#pragma once
// GCC 12 reports the deliberately undefined pass-through operand of AVX-512 intrinsics
// (_mm512_undefined_ps) as maybe-uninitialized (or uninitialized) once they are inlined into
// OpenMP regions.
// The state must be set before <immintrin.h> is first seen, so include this header first.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <new>

#include "ops/cpu/simd.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {

// Elements per parallel work item for memory-bound element-wise loops: large enough that a
// thread's share amortises the fork, small enough to balance.
constexpr int64_t kGrain = int64_t(1) << 14;

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

// Calls body(begin, end) over [0, n) in chunks of `grain`, in parallel when there is more than
// one chunk.
template <typename Body>
inline void parallel_chunks(int64_t n, int64_t grain, Body body) {
  int64_t chunks = (n + grain - 1) / grain;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) body(c * grain, min_i64(n, (c + 1) * grain));
}

// A grow-only f32 buffer, 64-byte aligned. Kernels keep one per thread (thread_local) and per
// purpose, so that steady state allocates nothing; never hold one across another kernel's call.
struct Scratch {
  float* data = nullptr;
  size_t capacity = 0;  // floats
  ~Scratch() { std::free(data); }
  float* get(size_t count) {
    if (count > capacity) {
      std::free(data);
      data = nullptr;
      capacity = 0;
      size_t rounded = (count + 15) & ~size_t(15);
      data = static_cast<float*>(std::aligned_alloc(64, rounded * sizeof(float)));
      if (!data) throw std::bad_alloc();
      capacity = rounded;
    }
    return data;
  }
};
// The calling thread's general-purpose scratch buffer.
inline void* thread_scratch(size_t bytes) {
  thread_local Scratch buffer;
  return buffer.get((bytes + sizeof(float) - 1) / sizeof(float));
}

// Prefetches the cache line kStreamAhead bytes past p, for kernels that stream quantised weight
// codes from memory (quant_gemm, int8_gemm): at 1 or 0.5 bytes per weight the out-of-order window
// alone covers too few bytes to keep enough cache misses in flight, and a prefetch a few tiles of
// rows ahead brings the bandwidth up to what f32 rows get from the hardware prefetchers (batch-1
// int8 decode 54 -> 68 tokens/s on a 2-core Xeon; 1-24 KB ahead measured, 12 KB among the best).
constexpr int64_t kStreamAhead = 12288;
inline void prefetch_stream(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kStreamAhead, _MM_HINT_T0);
}

inline Vec vabs(Vec x) { return vmax(x, vzero() - x); }

// 1/d for d in [1, 2] (no zeros, infinities or denormals): the hardware estimate refined by
// one Newton step, r (2 - d r), to about 1 ulp; several times cheaper than a division.
inline Vec vrecip_1_2(Vec d) {
#if defined(KOTOBA_ISA_AVX512)
  Vec r{_mm512_rcp14_ps(d.v)};
#else
  Vec r{_mm256_rcp_ps(d.v)};
#endif
  return r * vfma(vzero() - d, r, vset(2.0f));
}

// sigmoid(z) without overflow: with e = exp(-|z|) (0 for |z| > 87), s = 1/(1+e) for z > 0 and
// e/(1+e) otherwise, so the tails are exactly 0 and 1. Also returns s(1-s) = e/(1+e)^2.
inline Vec vsigmoid(Vec z, Vec* s_one_minus_s = nullptr) {
  Vec e = vexp(vzero() - vabs(z));
  Vec r = vrecip_1_2(vset(1.0f) + e);
  if (s_one_minus_s) *s_one_minus_s = e * r * r;
  return vselect_gt(z, vzero(), r, e * r);
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
