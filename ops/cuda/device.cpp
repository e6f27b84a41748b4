// The CUDA backend's runtime: device detection, the Backend table, memory hooks for the
// caching allocator, host<->device copies and the one stream all work is ordered on.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/allocator.h"
#include "core/error.h"
#include "ops/backend.h"
#include "ops/cuda/kernels.h"

namespace kotoba::cuda {
namespace {

#define KOTOBA_CUDA_CHECK(call)                                                   \
  do {                                                                            \
    cudaError_t kotoba_err_ = (call);                                             \
    if (kotoba_err_ != cudaSuccess)                                               \
      fail(#call, cudaGetErrorString(kotoba_err_), __FILE__, __LINE__);           \
  } while (0)

cudaStream_t g_stream = nullptr;

// Returns null on failure so that the caching allocator can free its cache and retry.
void* cuda_allocate(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error state of the failed call
    return nullptr;
  }
  return p;
}
// Blocks may still be read by queued kernels; cudaFree waits for the device first.
void cuda_release(void* p) { (void)cudaFree(p); }

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  KOTOBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream));
  KOTOBA_CUDA_CHECK(cudaStreamSynchronize(g_stream));
}
void copy_from_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  KOTOBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream));
  KOTOBA_CUDA_CHECK(cudaStreamSynchronize(g_stream));
}
void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  KOTOBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream));
}
void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width_bytes, size_t rows) {
  if (width_bytes == 0 || rows == 0) return;
  KOTOBA_CUDA_CHECK(
      cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width_bytes, rows, cudaMemcpyDeviceToDevice, g_stream));
}
void synchronize() { KOTOBA_CUDA_CHECK(cudaStreamSynchronize(g_stream)); }

}  // namespace

void fail(const char* call, const char* error, const char* file, int line) {
  throw Error(detail::concat("CUDA: ", call, " failed: ", error, " (", file, ":", line, ")"));
}

void* stream_handle() { return g_stream; }

void* scratch_allocate(size_t bytes) { return device_allocate(Device::cuda, bytes); }
void scratch_free(void* ptr, size_t bytes) { device_free(Device::cuda, ptr, bytes); }

bool tf32_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("KOTOBA_CUDA_TF32");
    return v && std::strcmp(v, "1") == 0;
  }();
  return enabled;
}

std::string init_backend() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return detail::concat("cudaGetDeviceCount failed: ", cudaGetErrorString(err));
  }
  if (count == 0) return "cudaGetDeviceCount found no CUDA device";
  KOTOBA_CUDA_CHECK(cudaSetDevice(0));
  KOTOBA_CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  set_device_memory_hooks(Device::cuda, DeviceMemoryHooks{cuda_allocate, cuda_release});

  static Backend b;
  b.name = "cuda";
  b.device = Device::cuda;
#define KOTOBA_CUDA_KERNEL_FILL(name, Args) b.name = &cuda::name;
  KOTOBA_KERNELS(KOTOBA_CUDA_KERNEL_FILL)
#undef KOTOBA_CUDA_KERNEL_FILL
  b.copy_to_host = copy_to_host;
  b.copy_from_host = copy_from_host;
  b.copy_on_device = copy_on_device;
  b.copy_2d = copy_2d;
  b.synchronize = synchronize;
  register_backend(Device::cuda, &b);
  return "";
}

}  // namespace kotoba::cuda
