// CUDA kernel: a plain tiled GEMM for the layouts cuBLASLt declines (operands aligned to less
// than its kernels need, e.g. bf16 rows at odd offsets). Same contract as GemmArgs; f32 math.
#include "ops/cuda/common.cuh"

namespace kotoba::cuda {
namespace {

constexpr int kTile = 16;

// C_b (M, N) = alpha op(A_b) op(B_b) + beta C_b; grid (ceil(N/16), ceil(M/16), batch).
template <typename TA, typename TC>
__global__ void gemm_tiled_kernel(GemmArgs g) {
  __shared__ float As[kTile][kTile + 1];
  __shared__ float Bs[kTile][kTile + 1];
  const int64_t b = blockIdx.z;
  const TA* A = static_cast<const TA*>(g.a) + b * g.stride_a;
  const TA* B = static_cast<const TA*>(g.b) + b * g.stride_b;
  TC* C = static_cast<TC*>(g.c) + b * g.stride_c;
  const int64_t row = int64_t(blockIdx.y) * kTile + threadIdx.y;
  const int64_t col = int64_t(blockIdx.x) * kTile + threadIdx.x;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < g.k; k0 += kTile) {
    // As[y][x] = op(A)[row][k0 + x], Bs[y][x] = op(B)[k0 + y][col]
    const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    float av = 0.0f, bv = 0.0f;
    if (row < g.m && ka < g.k) av = to_f32(g.trans_a ? A[ka * g.lda + row] : A[row * g.lda + ka]);
    if (col < g.n && kb < g.k) bv = to_f32(g.trans_b ? B[col * g.ldb + kb] : B[kb * g.ldb + col]);
    As[threadIdx.y][threadIdx.x] = av;
    Bs[threadIdx.y][threadIdx.x] = bv;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) acc = fmaf(As[threadIdx.y][kk], Bs[kk][threadIdx.x], acc);
    __syncthreads();
  }
  if (row < g.m && col < g.n) {
    TC* p = C + row * g.ldc + col;
    float r = g.alpha * acc;
    if (g.beta != 0.0f) r = fmaf(g.beta, to_f32(*p), r);
    *p = from_f32<TC>(r);
  }
}

}  // namespace

void gemm_fallback(const GemmArgs& g) {
  const dim3 grid(unsigned((g.n + kTile - 1) / kTile), unsigned((g.m + kTile - 1) / kTile), unsigned(g.batch));
  const dim3 block(kTile, kTile);
  dispatch_float(g.dtype_ab, "gemm", [&](auto atag) {
    using TA = decltype(atag);
    dispatch_float(g.dtype_c, "gemm", [&](auto ctag) {
      using TC = decltype(ctag);
      gemm_tiled_kernel<TA, TC><<<grid, block, 0, stream()>>>(g);
    });
  });
  KOTOBA_CUDA_LAUNCHED();
}

}  // namespace kotoba::cuda
