// The CUDA kernel entry points, one per entry of ops/op_list.h, and the runtime helpers the
// kernel files share. Plain C++ (no CUDA types), so g++ and nvcc both read it.
#pragma once
#include <cstddef>
#include <string>

#include "ops/op_list.h"

namespace kotoba::cuda {

#define KOTOBA_CUDA_KERNEL_DECL(name, Args) void name(const Args& args);
KOTOBA_KERNELS(KOTOBA_CUDA_KERNEL_DECL)
#undef KOTOBA_CUDA_KERNEL_DECL

// Throws kotoba::Error naming the failed call, its error string and where it was made.
[[noreturn]] void fail(const char* call, const char* error, const char* file, int line);

// The stream every kernel, copy and cuBLASLt call of the backend is ordered on.
void* stream_handle();

// Temporary device memory through the caching allocator. All work is ordered on one stream,
// so a block freed right after the launches that use it is safe to hand out again.
void* scratch_allocate(size_t bytes);
void scratch_free(void* ptr, size_t bytes);

// Registers the CUDA backend when a device is found; otherwise returns why not.
std::string init_backend();

// Whether gemm may use TF32 for f32 operands (KOTOBA_CUDA_TF32=1; off by default).
bool tf32_enabled();

}  // namespace kotoba::cuda
