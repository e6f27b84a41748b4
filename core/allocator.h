// Host memory for tensors: a caching allocator so that a training step, once its shapes are
// known, reuses the blocks of the previous step instead of going back to malloc.
#pragma once
#include <cstddef>
#include <memory>

#include "core/dtype.h"

namespace kotoba {

// A block of memory owned by one or more tensors (views share it).
class Storage {
 public:
  Storage(size_t bytes, Device device);
  // Wraps memory owned elsewhere (e.g. a memory-mapped file); `keep_alive` holds the owner.
  Storage(void* data, size_t bytes, Device device, std::shared_ptr<void> keep_alive);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::cpu;
  bool owned_ = true;
  std::shared_ptr<void> keep_alive_;
};

// The caching allocator behind Storage, per device. Blocks are kept by exact rounded size.
struct AllocatorStats {
  size_t bytes_in_use = 0;
  size_t bytes_cached = 0;
  size_t peak_bytes_in_use = 0;
  size_t system_allocations = 0;  // calls that reached the system allocator
};

void* device_allocate(Device device, size_t bytes);
void device_free(Device device, void* ptr, size_t bytes);
AllocatorStats allocator_stats(Device device);

// A backend that owns device memory (CUDA) installs its raw allocate/free here.
struct DeviceMemoryHooks {
  void* (*allocate)(size_t bytes) = nullptr;
  void (*release)(void* ptr) = nullptr;
};
void set_device_memory_hooks(Device device, DeviceMemoryHooks hooks);
// Called on the first allocation on a device with no hooks yet, so that allocating a tensor
// there starts its backend (registered by ops/backend.cpp; core knows no backends).
void set_device_bring_up(Device device, void (*bring_up)());

}  // namespace kotoba
