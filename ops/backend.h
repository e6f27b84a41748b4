// Backend dispatch: each device registers a table of kernels generated from ops/op_list.h.
// Callers go through backend_for(device), so a CUDA backend slots in without touching them.
#pragma once
#include <string_view>

#include "core/error.h"
#include "core/tensor.h"
#include "ops/op_list.h"

namespace kotoba {

enum class Kernel : int {
#define KOTOBA_KERNEL_ENUM(name, Args) name,
  KOTOBA_KERNELS(KOTOBA_KERNEL_ENUM)
#undef KOTOBA_KERNEL_ENUM
  count
};

std::string_view kernel_name(Kernel k);

struct Backend {
  const char* name = "";
  Device device = Device::cpu;
#define KOTOBA_KERNEL_FIELD(name, Args) void (*name)(const Args&) = nullptr;
  KOTOBA_KERNELS(KOTOBA_KERNEL_FIELD)
#undef KOTOBA_KERNEL_FIELD
  // Copies bytes between host and this device (unused for the host backend).
  void (*copy_to_host)(void* dst, const void* src, size_t bytes) = nullptr;
  void (*copy_from_host)(void* dst, const void* src, size_t bytes) = nullptr;
  // Device-to-device copy, ordered after the queued kernels; and a wait for all queued work.
  void (*copy_on_device)(void* dst, const void* src, size_t bytes) = nullptr;
  // Strided copy on this device, ordered like copy_on_device: `rows` rows of width_bytes each,
  // row r from src + r * src_pitch to dst + r * dst_pitch (pitches >= width_bytes, in bytes).
  // Every backend has it (the KV cache appends and gathers rows with it).
  void (*copy_2d)(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width_bytes,
                  size_t rows) = nullptr;
  void (*synchronize)() = nullptr;

  bool supports(Kernel k) const;
};

// The backend for a device; throws kotoba::Error if none is registered (e.g. no CUDA build).
const Backend& backend_for(Device device);
void register_backend(Device device, const Backend* backend);
// The CPU kernel set in use: "avx512" or "avx2", chosen at start-up from the CPU's features.
std::string_view cpu_isa();

// Calls a kernel of the backend of `device`, or throws naming the kernel and the device.
#define KOTOBA_DISPATCH(device, kernel, args)                                                   \
  do {                                                                                          \
    const ::kotoba::Backend& kotoba_backend_ = ::kotoba::backend_for(device);                   \
    KOTOBA_CHECK(kotoba_backend_.kernel != nullptr, "kernel '" #kernel "' is not supported on the ", \
                 kotoba_backend_.name, " backend");                                             \
    kotoba_backend_.kernel(args);                                                               \
  } while (0)

}  // namespace kotoba
