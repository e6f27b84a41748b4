// CPU kernels: token embedding lookup and its scatter-add backward.
// The weight gradient is a parameter gradient, so it is always accumulated (+=).
#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

// ids (N) i32 in [0, V) (checked by the op), weight (V, C), out (N, C): out[n] = weight[ids[n]]
void embedding_forward(const EmbeddingForwardArgs& args) {
  const size_t row_bytes = dtype_bytes(args.dtype, size_t(args.dim));
  const char* weight = static_cast<const char*>(args.weight);
  char* out = static_cast<char*>(args.out);
  const int64_t N = args.n_tokens;
#pragma omp parallel for schedule(static) if (N * args.dim > kGrain)
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(out + size_t(n) * row_bytes, weight + size_t(args.ids[n]) * row_bytes, row_bytes);
}

// dweight (V, C) += dout (N, C) scattered by ids (N). Repeated ids would race if tokens were
// split across threads, so threads own disjoint column blocks and each walks every token
// in order: no atomics, and the sum order is fixed.
template <typename T>
void embedding_backward_typed(const EmbeddingBackwardArgs& args) {
  const T* dout = static_cast<const T*>(args.dout);
  T* dweight = static_cast<T*>(args.dweight);
  const int64_t N = args.n_tokens, C = args.dim;
  // Blocks of a multiple of 32 elements (whole cache lines), at least one per thread.
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t block = min_i64(256, max_i64(32, ((C + threads - 1) / threads + 31) / 32 * 32));
  const int64_t blocks = (C + block - 1) / block;
#pragma omp parallel for schedule(static) if (N * C > kGrain && blocks > 1)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t c0 = bi * block, c1 = min_i64(C, c0 + block);
    for (int64_t n = 0; n < N; ++n) {
      const T* src = dout + n * C;
      T* dst = dweight + int64_t(args.ids[n]) * C;
      int64_t c = c0;
      for (; c + kLanes <= c1; c += kLanes) vstore(dst + c, vload(dst + c) + vload(src + c));
      if (c < c1) vstore_n(dst + c, vload_n(dst + c, c1 - c) + vload_n(src + c, c1 - c), c1 - c);
    }
  }
}

void embedding_backward(const EmbeddingBackwardArgs& args) {
  if (args.dtype == DType::bf16)
    embedding_backward_typed<bf16>(args);
  else
    embedding_backward_typed<float>(args);
}

}  // namespace

void register_embedding_kernels(Backend& b) {
  b.embedding_forward = embedding_forward;
  b.embedding_backward = embedding_backward;
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
