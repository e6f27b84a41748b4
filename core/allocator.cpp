// Caching allocator: freed blocks go to a per-size free list and serve the next request of the
// same rounded size, so steady-state training allocates nothing from the system.
#include "core/allocator.h"

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.h"

namespace kotoba {
namespace {

constexpr size_t kAlignment = 64;

size_t round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  // Small blocks round to 64 bytes, large ones to 4 KiB: fewer distinct classes, little waste.
  size_t unit = bytes < (1u << 20) ? kAlignment : 4096;
  return (bytes + unit - 1) / unit * unit;
}

void* host_allocate(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, kAlignment, bytes) != 0 || !p)
    throw Error(detail::concat("out of host memory: could not allocate ", bytes, " bytes"));
  return p;
}
void host_release(void* p) { std::free(p); }

struct CachingAllocator {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  AllocatorStats stats;
  DeviceMemoryHooks hooks;

  void (*bring_up)() = nullptr;  // starts the device's backend, which installs the hooks

  void* allocate(size_t bytes) {
    size_t size = round_size(bytes);
    if (bring_up) {
      void (*start)() = nullptr;
      {
        std::lock_guard lock(mutex);
        if (!hooks.allocate) start = bring_up;
      }
      if (start) start();  // outside the lock: the backend installs its hooks through it
    }
    std::lock_guard lock(mutex);
    auto it = free_blocks.find(size);
    void* p = nullptr;
    if (it != free_blocks.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      stats.bytes_cached -= size;
    } else {
      if (!hooks.allocate) throw Error("no memory hooks installed for this device (is its backend built in?)");
      p = hooks.allocate(size);
      if (!p) {
        release_cached_locked();
        p = hooks.allocate(size);
      }
      if (!p) throw Error(detail::concat("out of device memory: could not allocate ", size, " bytes"));
      stats.system_allocations++;
    }
    stats.bytes_in_use += size;
    if (stats.bytes_in_use > stats.peak_bytes_in_use) stats.peak_bytes_in_use = stats.bytes_in_use;
    return p;
  }

  void release(void* p, size_t bytes) {
    size_t size = round_size(bytes);
    std::lock_guard lock(mutex);
    free_blocks[size].push_back(p);
    stats.bytes_in_use -= size;
    stats.bytes_cached += size;
  }

  void release_cached_locked() {
    for (auto& [size, blocks] : free_blocks)
      for (void* p : blocks) hooks.release(p);
    free_blocks.clear();
    stats.bytes_cached = 0;
  }
};

CachingAllocator& allocator_for(Device device) {
  static CachingAllocator* host = [] {
    auto* a = new CachingAllocator;  // never destroyed: tensors may outlive static destruction
    a->hooks = {host_allocate, host_release};
    return a;
  }();
  static CachingAllocator* cuda = new CachingAllocator;
  return device == Device::cpu ? *host : *cuda;
}

}  // namespace

void* device_allocate(Device device, size_t bytes) { return allocator_for(device).allocate(bytes); }
void device_free(Device device, void* ptr, size_t bytes) { allocator_for(device).release(ptr, bytes); }

AllocatorStats allocator_stats(Device device) {
  auto& a = allocator_for(device);
  std::lock_guard lock(a.mutex);
  return a.stats;
}

void set_device_bring_up(Device device, void (*bring_up)()) { allocator_for(device).bring_up = bring_up; }

void set_device_memory_hooks(Device device, DeviceMemoryHooks hooks) {
  auto& a = allocator_for(device);
  std::lock_guard lock(a.mutex);
  a.hooks = hooks;
}

Storage::Storage(size_t bytes, Device device)
    : data_(device_allocate(device, bytes)), bytes_(bytes), device_(device) {}

Storage::Storage(void* data, size_t bytes, Device device, std::shared_ptr<void> keep_alive)
    : data_(data), bytes_(bytes), device_(device), owned_(false), keep_alive_(std::move(keep_alive)) {}

Storage::~Storage() {
  if (owned_ && data_) device_free(device_, data_, bytes_);
}

}  // namespace kotoba
