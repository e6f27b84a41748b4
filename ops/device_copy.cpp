// Moving tensors between devices through the backends' copy functions (ops/backend.h), so
// this file needs no CUDA headers and builds the same with or without the CUDA backend.
#include <memory>

#include "ops/backend.h"
#include "ops/ops.h"

namespace kotoba {
namespace {

// The elements a strided view can touch, from its offset (strides are non-negative).
int64_t view_extent(const Tensor& x) {
  int64_t extent = 1;
  for (int d = 0; d < x.ndim(); ++d) extent += (x.shape()[size_t(d)] - 1) * x.strides()[size_t(d)];
  return extent;
}

// A host copy of a device tensor: contiguous views copy their bytes; other views copy the
// span they cover and are then made contiguous on the host.
Tensor device_to_host(const Tensor& x, const Backend& from) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), Device::cpu);
  if (x.numel() == 0) return out;
  if (x.is_contiguous()) {
    from.copy_to_host(out.raw(), x.raw(), x.nbytes());
    return out;
  }
  KOTOBA_CHECK(x.dtype() != DType::q4, "to_device: a strided view of a packed 4-bit tensor cannot be copied");
  const size_t span_bytes = dtype_bytes(x.dtype(), size_t(view_extent(x)));
  auto span = std::make_shared<TensorImpl>();
  span->storage = std::make_shared<Storage>(span_bytes, Device::cpu);
  span->shape = x.shape();
  span->strides = x.strides();
  span->dtype = x.dtype();
  from.copy_to_host(span->storage->data(), x.raw(), span_bytes);
  return Tensor(std::move(span)).contiguous();
}

}  // namespace

Tensor to_device(const Tensor& x, Device device) {
  KOTOBA_CHECK(x.defined(), "to_device: the tensor is undefined");
  const Backend& to = backend_for(device);  // also brings up the CUDA backend on first use
  const Backend& from = backend_for(x.device());
  if (x.device() == Device::cpu && device == Device::cpu) return x.clone();
  if (device == Device::cpu) return device_to_host(x, from);

  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  if (x.numel() == 0) return out;
  if (x.device() == device && x.is_contiguous() && to.copy_on_device) {
    to.copy_on_device(out.raw(), x.raw(), x.nbytes());
    return out;
  }
  const Tensor host = x.device() == Device::cpu ? x.contiguous() : device_to_host(x, from);
  KOTOBA_CHECK(to.copy_from_host != nullptr, "to_device: the ", to.name, " backend cannot copy from the host");
  to.copy_from_host(out.raw(), host.raw(), host.nbytes());
  return out;
}

Tensor on_device(const Tensor& x, Device device) {
  return !x.defined() || x.device() == device ? x : to_device(x, device);
}

}  // namespace kotoba
