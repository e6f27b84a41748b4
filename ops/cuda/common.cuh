// Device-side helpers shared by the CUDA kernel files: dtype loads and stores (f32 math on
// f32 or bf16 storage, rounding exactly like core/dtype.h), warp/block reductions, checks.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/dtype.h"
#include "ops/cuda/kernels.h"
#include "ops/kernel_args.h"

#define KOTOBA_CUDA_CHECK(call)                                                         \
  do {                                                                                  \
    cudaError_t kotoba_err_ = (call);                                                   \
    if (kotoba_err_ != cudaSuccess)                                                     \
      ::kotoba::cuda::fail(#call, cudaGetErrorString(kotoba_err_), __FILE__, __LINE__); \
  } while (0)
// After a launch: reports a bad configuration (asynchronous faults surface at the next sync).
#define KOTOBA_CUDA_LAUNCHED() KOTOBA_CUDA_CHECK(cudaGetLastError())

namespace kotoba::cuda {

inline cudaStream_t stream() { return static_cast<cudaStream_t>(stream_handle()); }

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __uint_as_float(uint32_t(v.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float f);
template <> __device__ __forceinline__ float from_f32<float>(float f) { return f; }
// Round to nearest even, NaN stays a quiet NaN: the same bits as kotoba::f32_to_bf16.
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

template <typename T> __device__ __forceinline__ float ld(const void* p, int64_t i) {
  return to_f32(static_cast<const T*>(p)[i]);
}
template <typename T> __device__ __forceinline__ void st(void* p, int64_t i, float v) {
  static_cast<T*>(p)[i] = from_f32<T>(v);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over a block of up to 1024 threads; every thread gets the result. `shared`
// holds 32 floats; the call ends with the block synchronised.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < warps ? shared[lane] : 0.0f;
  t = warp_sum(t);
  return t;
}
__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < warps ? shared[lane] : -INFINITY;
  t = warp_max(t);
  return t;
}

// Calls f(T{}) with T = float or bf16 following the op's dtype.
template <typename F>
inline void dispatch_float(DType dtype, const char* op, F&& f) {
  if (dtype == DType::f32) f(float{});
  else if (dtype == DType::bf16) f(bf16{});
  else fail(op, "unsupported dtype (expected f32 or bf16)", __FILE__, __LINE__);
}

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 32) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return unsigned(b < cap ? b : cap);
}

// Device scratch for the length of one kernel call.
class Scratch {
 public:
  explicit Scratch(size_t bytes) : bytes_(bytes), ptr_(bytes ? scratch_allocate(bytes) : nullptr) {}
  ~Scratch() { if (ptr_) scratch_free(ptr_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }

 private:
  size_t bytes_;
  void* ptr_;
};

}  // namespace kotoba::cuda
