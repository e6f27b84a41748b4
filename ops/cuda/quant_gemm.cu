// CUDA kernel: out (m, n) = x (m, k) @ W^T with W quantised in quant/packed.h's layout (per block
// of `blocksize` columns an f32 scale; int8 codes, or two 4-bit codes per byte looked up in a
// 16-entry table, element j of a block's first half in the low nibble of byte j and element
// j + blocksize/2 in its high nibble). One warp per output element, lanes striding over k; the
// table travels by value in the launch. All pointers are device memory.
#include <algorithm>

#include "ops/cuda/common.cuh"

namespace kotoba::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

struct Table16 {
  float v[16];
};

// Element j of a row of W (its codes at w), before the block's scale.
__device__ __forceinline__ float code_value(const uint8_t* w, int64_t j, int64_t blocksize, int bits,
                                            const Table16& table) {
  if (bits == 8) return float(int8_t(w[j]));
  const int64_t half = blocksize / 2, b = j / blocksize, i = j % blocksize;
  const uint8_t byte = w[b * half + (i % half)];
  return table.v[i < half ? (byte & 15) : (byte >> 4)];
}

__global__ void quant_gemm_kernel(const float* x, int64_t ldx, const uint8_t* codes, int64_t row_bytes,
                                  const float* scales, int64_t blocksize, int bits, Table16 table, float* out,
                                  int64_t ldo, int64_t m, int64_t n, int64_t k, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t col = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t row = blockIdx.y;
  if (col >= n || row >= m) return;
  const uint8_t* w = codes + col * row_bytes;
  const float* s = scales + col * (k / blocksize);
  const float* xr = x + row * ldx;
  float acc = 0.0f;
  for (int64_t j = lane; j < k; j += 32) acc += code_value(w, j, blocksize, bits, table) * s[j / blocksize] * xr[j];
  acc = warp_sum(acc);
  if (lane == 0) {
    float* o = out + row * ldo + col;
    *o = (accumulate ? *o : 0.0f) + acc;
  }
}

__global__ void dequantize_kernel(const uint8_t* codes, int64_t row_bytes, const float* scales, int64_t blocksize,
                                  int bits, Table16 table, int64_t rows, int64_t cols, float* out) {
  const int64_t blocks = cols / blocksize;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * cols;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, j = i % cols;
    out[i] = code_value(codes + r * row_bytes, j, blocksize, bits, table) * scales[r * blocks + j / blocksize];
  }
}

}  // namespace

void dequantize(const DequantizeArgs& a) {
  const int64_t total = a.rows * a.cols;
  if (total == 0) return;
  Table16 table{};
  if (a.table)
    for (int i = 0; i < 16; ++i) table.v[i] = a.table[i];  // the table pointer is host memory
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  dequantize_kernel<<<unsigned(blocks), threads, 0, stream()>>>(a.codes, a.row_bytes, a.scales, a.blocksize, a.bits,
                                                               table, a.rows, a.cols, a.out);
  KOTOBA_CUDA_LAUNCHED();
}

void quant_gemm(const QuantGemmArgs& a) {
  if (a.m == 0 || a.n == 0) return;
  Table16 table{};
  if (a.table)
    for (int i = 0; i < 16; ++i) table.v[i] = a.table[i];  // the table pointer is host memory
  const dim3 grid(unsigned((a.n + kWarpsPerBlock - 1) / kWarpsPerBlock), unsigned(a.m));
  quant_gemm_kernel<<<grid, 32 * kWarpsPerBlock, 0, stream()>>>(a.x, a.ldx, a.codes, a.row_bytes, a.scales,
                                                                a.blocksize, a.bits, table, a.out, a.ldo, a.m, a.n,
                                                                a.k, a.accumulate);
  KOTOBA_CUDA_LAUNCHED();
}

}  // namespace kotoba::cuda
