// Small helpers shared by the CPU kernel files: parallel chunking, a per-thread scratch buffer
// and the stable sigmoid. Compiled per ISA like the kernels, so no STL here either.
#pragma once
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

// Threads worth using for `work` elements of memory-bound work.
inline int threads_for(int64_t work) {
  int64_t by_work = work / kGrain;
  int max = omp_get_max_threads();
  if (omp_in_parallel()) return 1;
  return by_work < 1 ? 1 : (by_work < max ? int(by_work) : max);
}

// A grow-only buffer owned by the calling thread, reused across kernel calls so that steady
// state allocates nothing. Kernels must not hold it across a call to another kernel.
struct ScratchBuffer {
  void* data = nullptr;
  size_t bytes = 0;
  ~ScratchBuffer() { std::free(data); }
};
inline void* thread_scratch(size_t bytes) {
  thread_local ScratchBuffer buffer;
  if (buffer.bytes < bytes) {
    std::free(buffer.data);
    size_t rounded = (bytes + 63) & ~size_t(63);
    buffer.data = std::aligned_alloc(64, rounded);
    buffer.bytes = buffer.data ? rounded : 0;
    if (!buffer.data) throw std::bad_alloc();
  }
  return buffer.data;
}

inline Vec vabs(Vec x) { return vmax(x, vzero() - x); }

// sigmoid(z) without overflow: with e = exp(-|z|) (0 for |z| > 87), s = 1/(1+e) for z > 0 and
// e/(1+e) otherwise, so the tails are exactly 0 and 1. Also returns s(1-s) = e/(1+e)^2.
inline Vec vsigmoid(Vec z, Vec* s_one_minus_s = nullptr) {
  Vec e = vexp(vzero() - vabs(z));
  Vec r = vset(1.0f) / (vset(1.0f) + e);
  if (s_one_minus_s) *s_one_minus_s = e * r * r;
  return vselect_gt(z, vzero(), r, e * r);
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
