// Tensor: a typed, shaped view onto shared Storage, with the autograd fields the tape needs.
// Views (reshape of contiguous data, transpose, slice) share storage and cost no copy.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/error.h"

namespace kotoba {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);

class Tensor;

// Gradient bookkeeping shared by a tensor and the tape nodes that produce or consume it.
// Nodes hold this, not the tensor, so saved-for-backward is only what an op asks for.
struct AutogradMeta {
  std::shared_ptr<struct TensorImpl> grad;  // buffer kept across steps for parameters
  bool grad_valid = false;                  // false after zero_grad: the buffer is stale
  bool requires_grad = false;
  bool is_leaf = true;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DType::f32;
  std::shared_ptr<AutogradMeta> autograd;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Factories. `empty` leaves memory uninitialised.
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor full(const Shape& shape, float value, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_vector_i32(const std::vector<int32_t>& values, const Shape& shape);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int ndim() const { return int(impl().shape.size()); }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  size_t nbytes() const { return dtype_bytes(dtype(), size_t(numel())); }
  bool is_contiguous() const;
  bool same_storage(const Tensor& other) const { return impl().storage == other.impl().storage; }

  // Raw element pointer (offset applied); typed access checks the dtype.
  void* raw() const;
  template <typename T> T* data() const;

  // Views: no copy. reshape of a non-contiguous tensor throws; call contiguous() first.
  // These are plain views without autograd; ops/shape.h has the differentiable versions.
  Tensor view_as_shape(const Shape& shape) const;
  Tensor transpose_view(int dim0, int dim1) const;
  Tensor slice_view(int dim, int64_t start, int64_t end) const;

  // Copies.
  Tensor clone() const;            // contiguous copy, same dtype, no autograd history
  Tensor contiguous() const;       // this if already contiguous, else a copy
  Tensor to(DType dtype) const;    // converted copy (f32 <-> bf16/f16 <-> f64, i32)
  Tensor detach() const;           // same storage, no autograd
  void copy_from(const Tensor& src);  // same shape; converts dtype
  void fill(float value);

  std::vector<float> to_vector() const;  // any float dtype, any layout, as f32 values

  // Autograd.
  bool requires_grad() const { return impl_ && impl().autograd && impl().autograd->requires_grad; }
  Tensor& set_requires_grad(bool value);
  Tensor grad() const;  // undefined when no gradient has reached this tensor since zero_grad
  void zero_grad();     // marks the gradient stale; its buffer is reused by the next backward
  void backward();      // from a scalar; defined in ops/autograd.cpp
  const std::shared_ptr<AutogradMeta>& autograd_meta() const;
  std::shared_ptr<AutogradMeta>& autograd_meta();

  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

template <> inline float* Tensor::data<float>() const {
  KOTOBA_CHECK(dtype() == DType::f32, "expected an f32 tensor, got ", dtype_name(dtype()));
  return static_cast<float*>(raw());
}
template <> inline bf16* Tensor::data<bf16>() const {
  KOTOBA_CHECK(dtype() == DType::bf16, "expected a bf16 tensor, got ", dtype_name(dtype()));
  return static_cast<bf16*>(raw());
}
template <> inline double* Tensor::data<double>() const {
  KOTOBA_CHECK(dtype() == DType::f64, "expected an f64 tensor, got ", dtype_name(dtype()));
  return static_cast<double*>(raw());
}
template <> inline int32_t* Tensor::data<int32_t>() const {
  KOTOBA_CHECK(dtype() == DType::i32, "expected an i32 tensor, got ", dtype_name(dtype()));
  return static_cast<int32_t*>(raw());
}
template <> inline int8_t* Tensor::data<int8_t>() const {
  KOTOBA_CHECK(dtype() == DType::i8, "expected an i8 tensor, got ", dtype_name(dtype()));
  return static_cast<int8_t*>(raw());
}
template <> inline uint8_t* Tensor::data<uint8_t>() const {
  KOTOBA_CHECK(dtype() == DType::q4, "expected a q4 tensor, got ", dtype_name(dtype()));
  return static_cast<uint8_t*>(raw());
}

// Byte copies between devices, installed by ops/backend.cpp (core knows no backends), so that
// fill, copy_from and to_vector also work on device tensors (contiguous ones).
using DeviceCopyFn = void (*)(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void set_device_copy(DeviceCopyFn fn);
// A fill on the device itself (queued like a kernel, no host buffer and no wait), installed the
// same way; false when it cannot fill that dtype, and fill then copies a host buffer over.
using DeviceFillFn = bool (*)(void* dst, Device device, DType dtype, int64_t count, float value);
void set_device_fill(DeviceFillFn fn);

// "cpu" or "cuda"; anything else is an Error naming `what` (a flag or config field) and both.
Device parse_device(std::string_view name, std::string_view what);

// Gradient mode: while a NoGradGuard lives, ops record nothing on the tape (inference).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace kotoba
