// CPU kernel: strided-batched GEMM on OpenBLAS. f32 goes straight to cblas_sgemm; bf16
// operands are widened to f32 panels first (AVX512-BF16 / AMX dot products are the later speed path).
// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized on their own `__Y = __Y` (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <new>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

thread_local Scratch t_scratch_a, t_scratch_b, t_scratch_c;

// dst (rows, cols) contiguous f32 = src (rows, cols) with row stride ld, any float dtype.
template <typename T>
void widen_rows(const T* src, int64_t ld, int64_t rows, int64_t cols, float* dst) {
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t(1) << 16) && !omp_in_parallel())
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * ld;
    float* d = dst + r * cols;
    int64_t c = 0;
    for (; c + kLanes <= cols; c += kLanes) vstore(d + c, vload(s + c));
    for (; c < cols; ++c) d[c] = to_f32(s[c]);
  }
}

// C (m, n) with row stride ldc: C = beta * C (beta == 0 writes zeros, ignoring NaNs there).
void scale_c(float* c, int64_t ldc, int64_t m, int64_t n, float beta) {
  for (int64_t r = 0; r < m; ++r) {
    float* row = c + r * ldc;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < n; ++j) row[j] = 0.0f;
    } else if (beta != 1.0f) {
      for (int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

// One f32 product C (m, n) = alpha op(A) op(B) + beta C on OpenBLAS. Inside an OpenMP region
// the OpenMP build of OpenBLAS runs single-threaded, outside it uses its own thread count.
void sgemm_one(const GemmArgs& g, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (g.k == 0 || g.alpha == 0.0f) {
    scale_c(c, ldc, g.m, g.n, g.beta);
    return;
  }
  if (g.m == 1) {
    // One row (decoding a token): a matrix-vector product. sgemm would repack all of B for it.
    // C is zeroed first when beta == 0 so that NaNs in a stale C cannot leak through scal.
    if (g.beta == 0.0f) scale_c(c, ldc, 1, g.n, 0.0f);
    const blasint incx = blasint(g.trans_a ? lda : 1);  // A: (1, k), or stored (k, 1) when transposed
    if (g.trans_b)  // B stored (n, k): c = B a
      cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(g.n), blasint(g.k), g.alpha, b, blasint(ldb), a, incx, g.beta,
                  c, 1);
    else  // B stored (k, n): c = B^T a
      cblas_sgemv(CblasRowMajor, CblasTrans, blasint(g.k), blasint(g.n), g.alpha, b, blasint(ldb), a, incx, g.beta,
                  c, 1);
    return;
  }
  // OpenBLAS honours beta == 0 exactly (its beta pass and its small-matrix "b0" kernels
  // write C without reading it), so NaNs in a stale C do not leak in.
  cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans,
              blasint(g.m), blasint(g.n), blasint(g.k), g.alpha, a, blasint(lda), b, blasint(ldb),
              g.beta, c, blasint(ldc));
}

// Rows and columns of op(X) as stored: A is (m, k) or stored (k, m) when transposed.
inline int64_t stored_rows_a(const GemmArgs& g) { return g.trans_a ? g.k : g.m; }
inline int64_t stored_cols_a(const GemmArgs& g) { return g.trans_a ? g.m : g.k; }
inline int64_t stored_rows_b(const GemmArgs& g) { return g.trans_b ? g.n : g.k; }
inline int64_t stored_cols_b(const GemmArgs& g) { return g.trans_b ? g.k : g.n; }

// One batch entry with any dtypes: widen what is bf16, multiply in f32, round C back.
void gemm_mixed_one(const GemmArgs& g, int64_t batch_index) {
  const float* a;
  const float* b;
  int64_t lda = g.lda, ldb = g.ldb;
  if (g.dtype_ab == DType::f32) {
    a = static_cast<const float*>(g.a) + batch_index * g.stride_a;
    b = static_cast<const float*>(g.b) + batch_index * g.stride_b;
  } else {
    const bf16* a16 = static_cast<const bf16*>(g.a) + batch_index * g.stride_a;
    const bf16* b16 = static_cast<const bf16*>(g.b) + batch_index * g.stride_b;
    float* aw = t_scratch_a.get(size_t(stored_rows_a(g) * stored_cols_a(g)));
    float* bw = t_scratch_b.get(size_t(stored_rows_b(g) * stored_cols_b(g)));
    widen_rows(a16, g.lda, stored_rows_a(g), stored_cols_a(g), aw);
    widen_rows(b16, g.ldb, stored_rows_b(g), stored_cols_b(g), bw);
    a = aw;
    b = bw;
    lda = stored_cols_a(g) > 0 ? stored_cols_a(g) : 1;
    ldb = stored_cols_b(g) > 0 ? stored_cols_b(g) : 1;
  }
  if (g.dtype_c == DType::f32) {
    float* c = static_cast<float*>(g.c) + batch_index * g.stride_c;
    sgemm_one(g, a, lda, b, ldb, c, g.ldc);
    return;
  }
  bf16* c16 = static_cast<bf16*>(g.c) + batch_index * g.stride_c;
  float* cw = t_scratch_c.get(size_t(g.m * g.n));
  if (g.beta != 0.0f) widen_rows(c16, g.ldc, g.m, g.n, cw);
  sgemm_one(g, a, lda, b, ldb, cw, g.n > 0 ? g.n : 1);
  for (int64_t r = 0; r < g.m; ++r) {
    bf16* d = c16 + r * g.ldc;
    const float* s = cw + r * g.n;
    int64_t j = 0;
    for (; j + kLanes <= g.n; j += kLanes) vstore(d + j, vload(s + j));
    for (; j < g.n; ++j) d[j] = f32_to_bf16(s[j]);
  }
}

// Below this many multiply-adds per matrix, one thread per batch entry beats a threaded sgemm.
constexpr int64_t kSmallGemmFlops = int64_t(1) << 21;

// C_b (M, N) = alpha op(A_b) (M, K) @ op(B_b) (K, N) + beta C_b for each b < batch.
void gemm(const GemmArgs& g) {
  if (!(g.dtype_ab == DType::f32 || g.dtype_ab == DType::bf16) || !(g.dtype_c == DType::f32 || g.dtype_c == DType::bf16))
    throw Error("gemm: A, B and C must be f32 or bf16");
  if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return;
  const bool small = g.m * g.n * g.k < kSmallGemmFlops;
  if (g.batch > 1 && small && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < g.batch; ++i) gemm_mixed_one(g, i);
    return;
  }
  // Big matrices (or already inside a parallel region): one product after another, each
  // threaded by OpenBLAS; bf16 panels are widened by all threads (widen_rows).
  for (int64_t i = 0; i < g.batch; ++i) gemm_mixed_one(g, i);
}

}  // namespace

void register_gemm_kernels(Backend& b) { b.gemm = gemm; }
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
