// The backend registry, and the choice of CPU kernels (AVX-512 or AVX2) from the CPU's
// features at start-up; KOTOBA_ISA=avx2 forces the AVX2 kernels (tests run both).
#include "ops/backend.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace kotoba {

namespace cpu::avx512 { void fill_backend(Backend& b); }
#ifdef KOTOBA_HAVE_CUDA
namespace cuda { std::string init_backend(); }  // ops/cuda/device.cpp: "" or why not
#endif
namespace cpu::avx2 { void fill_backend(Backend& b); }

namespace {
const char* const kKernelNames[] = {
#define KOTOBA_KERNEL_NAME(name, Args) #name,
    KOTOBA_KERNELS(KOTOBA_KERNEL_NAME)
#undef KOTOBA_KERNEL_NAME
};
static_assert(sizeof(kKernelNames) / sizeof(kKernelNames[0]) == size_t(Kernel::count));

const Backend* g_backends[2] = {nullptr, nullptr};
const char* g_cpu_isa = "";

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

void cpu_copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width_bytes, size_t rows) {
  char* to = static_cast<char*>(dst);
  const char* from = static_cast<const char*>(src);
  for (size_t r = 0; r < rows; ++r) std::memcpy(to + r * dst_pitch, from + r * src_pitch, width_bytes);
}

const Backend* make_cpu_backend() {
  static Backend b;
  b.name = "cpu";
  b.device = Device::cpu;
  const char* forced = std::getenv("KOTOBA_ISA");
  bool avx512 = cpu_has_avx512();
  if (forced && std::strcmp(forced, "avx2") == 0) avx512 = false;
  if (forced && std::strcmp(forced, "avx512") == 0 && !avx512)
    throw Error("KOTOBA_ISA=avx512 was asked for, but this CPU lacks AVX-512 (F, BW, VL, DQ)");
  if (avx512) {
    cpu::avx512::fill_backend(b);
    g_cpu_isa = "avx512";
  } else {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
      throw Error("kotoba needs a CPU with AVX2 and FMA");
    cpu::avx2::fill_backend(b);
    g_cpu_isa = "avx2";
  }
  b.copy_2d = cpu_copy_2d;
  return &b;
}
}  // namespace

std::string_view kernel_name(Kernel k) { return kKernelNames[int(k)]; }

bool Backend::supports(Kernel k) const {
  switch (k) {
#define KOTOBA_KERNEL_SUPPORTS(name, Args) \
  case Kernel::name: return name != nullptr;
    KOTOBA_KERNELS(KOTOBA_KERNEL_SUPPORTS)
#undef KOTOBA_KERNEL_SUPPORTS
    case Kernel::count: break;
  }
  return false;
}

const Backend& backend_for(Device device) {
  static std::once_flag cpu_once;
  std::call_once(cpu_once, [] { g_backends[0] = make_cpu_backend(); });
  const char* cuda_missing = "this build has no CUDA support";
#ifdef KOTOBA_HAVE_CUDA
  // The CUDA backend registers itself at its first use, if a device is present.
  static std::string cuda_reason;
  if (device == Device::cuda) {
    static std::once_flag cuda_once;
    std::call_once(cuda_once, [] { cuda_reason = cuda::init_backend(); });
  }
  cuda_missing = cuda_reason.c_str();
#endif
  const Backend* b = g_backends[int(device)];
  KOTOBA_CHECK(b != nullptr, "no backend is registered for device '", device_name(device), "' (",
               cuda_missing, ")");
  return *b;
}

void register_backend(Device device, const Backend* backend) { g_backends[int(device)] = backend; }

namespace {
// Allocating a CUDA tensor before any CUDA kernel ran must still start the backend.
const bool g_cuda_bring_up_registered = [] {
  set_device_bring_up(Device::cuda, [] { backend_for(Device::cuda); });
  set_device_copy([](void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
    if (dst_device == Device::cpu && src_device == Device::cpu) {
      std::memcpy(dst, src, bytes);
    } else if (dst_device == Device::cpu) {
      backend_for(src_device).copy_to_host(dst, src, bytes);
    } else if (src_device == Device::cpu) {
      backend_for(dst_device).copy_from_host(dst, src, bytes);
    } else {
      const Backend& b = backend_for(dst_device);
      KOTOBA_CHECK(b.copy_on_device != nullptr, "the ", b.name, " backend cannot copy on the device");
      b.copy_on_device(dst, src, bytes);
    }
  });
  set_device_fill([](void* dst, Device device, DType dtype, int64_t count, float value) {
    if (dtype != DType::f32 && dtype != DType::bf16) return false;
    if (count > 0) {
      FillArgs args{dst, count, value, dtype};
      KOTOBA_DISPATCH(device, fill, args);
    }
    return true;
  });
  return true;
}();
}  // namespace

std::string_view cpu_isa() {
  backend_for(Device::cpu);
  return g_cpu_isa;
}

}  // namespace kotoba
