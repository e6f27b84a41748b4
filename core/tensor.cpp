// Tensor construction, views and copies on the host. Device-side copies go through the
// backend of the tensor's device (ops/backend.h) once one exists for it.
#include "core/tensor.h"

#include <cmath>
#include <numeric>
#include <sstream>

namespace kotoba {

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

int wrap_dim(int dim, int ndim, const char* what) {
  int d = dim < 0 ? dim + ndim : dim;
  KOTOBA_CHECK(d >= 0 && d < ndim, what, ": dimension ", dim, " is out of range for a ", ndim, "-d tensor");
  return d;
}

float load_as_f32(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::bf16: return bf16_to_f32(static_cast<const bf16*>(base)[i]);
    case DType::f16: return f16_to_f32(static_cast<const f16*>(base)[i]);
    case DType::f64: return float(static_cast<const double*>(base)[i]);
    case DType::i32: return float(static_cast<const int32_t*>(base)[i]);
    case DType::i64: return float(static_cast<const int64_t*>(base)[i]);
    case DType::i8: return float(static_cast<const int8_t*>(base)[i]);
    default: throw Error(detail::concat("cannot read elements of dtype ", dtype_name(t)));
  }
}

void store_from_f64(void* base, DType t, int64_t i, double v) {
  switch (t) {
    case DType::f32: static_cast<float*>(base)[i] = float(v); break;
    case DType::bf16: static_cast<bf16*>(base)[i] = f32_to_bf16(float(v)); break;
    case DType::f16: static_cast<f16*>(base)[i] = f32_to_f16(float(v)); break;
    case DType::f64: static_cast<double*>(base)[i] = v; break;
    case DType::i32: static_cast<int32_t*>(base)[i] = int32_t(v); break;
    case DType::i64: static_cast<int64_t*>(base)[i] = int64_t(v); break;
    case DType::i8: static_cast<int8_t*>(base)[i] = int8_t(v); break;
    default: throw Error(detail::concat("cannot write elements of dtype ", dtype_name(t)));
  }
}

double load_as_f64(const void* base, DType t, int64_t i) {
  if (t == DType::f64) return static_cast<const double*>(base)[i];
  if (t == DType::i64) return double(static_cast<const int64_t*>(base)[i]);
  if (t == DType::i32) return double(static_cast<const int32_t*>(base)[i]);
  return double(load_as_f32(base, t, i));
}

// Calls f(source_offset, linear_index) for every element of a strided tensor, in row-major order.
template <typename F>
void for_each_offset(const Shape& shape, const Shape& strides, F&& f) {
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  int nd = int(shape.size());
  if (nd == 0) {
    f(int64_t(0), int64_t(0));
    return;
  }
  std::vector<int64_t> index(nd, 0);
  int64_t offset = 0;
  int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
  for (int64_t linear = 0; linear < n; linear += inner) {
    for (int64_t j = 0; j < inner; ++j) f(offset + j * inner_stride, linear + j);
    for (int d = nd - 2; d >= 0; --d) {
      offset += strides[d];
      if (++index[d] < shape[d]) break;
      offset -= strides[d] * shape[d];
      index[d] = 0;
    }
  }
}

DeviceCopyFn g_device_copy = nullptr;
DeviceFillFn g_device_fill = nullptr;

void copy_across(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes, const char* what) {
  KOTOBA_CHECK(g_device_copy != nullptr, what, ": no backend can copy between ", device_name(src_device), " and ",
               device_name(dst_device));
  g_device_copy(dst, dst_device, src, src_device, bytes);
}

void check_host(const Tensor& t, const char* what) {
  KOTOBA_CHECK(t.device() == Device::cpu, what, ": expected a cpu tensor, got one on ", device_name(t.device()));
}

Tensor contiguous_on_device_or_throw(const Tensor& t) {
  KOTOBA_CHECK(t.is_contiguous(), "to_vector: a strided view on ", device_name(t.device()),
               " must be made contiguous first (ops' contiguous())");
  return t;
}

}  // namespace

void set_device_copy(DeviceCopyFn fn) { g_device_copy = fn; }
void set_device_fill(DeviceFillFn fn) { g_device_fill = fn; }

Device parse_device(std::string_view name, std::string_view what) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  throw Error(detail::concat(what, ": expected \"cpu\" or \"cuda\", got \"", name, "\""));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) KOTOBA_CHECK(d >= 0, "Tensor::empty: negative dimension in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(dtype_bytes(dtype, size_t(shape_numel(shape))), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(0.0f);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  KOTOBA_CHECK(int64_t(values.size()) == shape_numel(shape), "Tensor::from_vector: ", values.size(),
               " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

Tensor Tensor::from_vector_i32(const std::vector<int32_t>& values, const Shape& shape) {
  KOTOBA_CHECK(int64_t(values.size()) == shape_numel(shape), "Tensor::from_vector_i32: ", values.size(),
               " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, DType::i32);
  std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}

TensorImpl& Tensor::impl() const {
  KOTOBA_CHECK(impl_ != nullptr, "use of an undefined tensor");
  return *impl_;
}

int64_t Tensor::size(int dim) const { return shape()[wrap_dim(dim, ndim(), "Tensor::size")]; }

bool Tensor::is_contiguous() const { return impl().strides == contiguous_strides(impl().shape) || numel() <= 1; }

void* Tensor::raw() const {
  auto& i = impl();
  return static_cast<char*>(i.storage->data()) + dtype_bytes(i.dtype, size_t(i.offset));
}

Tensor Tensor::view_as_shape(const Shape& new_shape) const {
  Shape shape = new_shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      KOTOBA_CHECK(infer < 0, "reshape: more than one -1 in ", shape_str(new_shape));
      infer = int(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    KOTOBA_CHECK(known > 0 && numel() % known == 0, "reshape: cannot reshape ", shape_str(this->shape()), " to ",
                 shape_str(new_shape));
    shape[infer] = numel() / known;
  }
  KOTOBA_CHECK(shape_numel(shape) == numel(), "reshape: cannot reshape ", shape_str(this->shape()), " (", numel(),
               " elements) to ", shape_str(new_shape));
  KOTOBA_CHECK(is_contiguous(), "reshape: tensor of shape ", shape_str(this->shape()),
               " is not contiguous; call contiguous() first");
  auto impl = std::make_shared<TensorImpl>(*impl_);
  impl->autograd = nullptr;
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  return Tensor(std::move(impl));
}

Tensor Tensor::transpose_view(int dim0, int dim1) const {
  int a = wrap_dim(dim0, ndim(), "transpose"), b = wrap_dim(dim1, ndim(), "transpose");
  auto impl = std::make_shared<TensorImpl>(*impl_);
  impl->autograd = nullptr;
  std::swap(impl->shape[a], impl->shape[b]);
  std::swap(impl->strides[a], impl->strides[b]);
  return Tensor(std::move(impl));
}

Tensor Tensor::slice_view(int dim, int64_t start, int64_t end) const {
  int d = wrap_dim(dim, ndim(), "slice");
  int64_t n = shape()[d];
  KOTOBA_CHECK(0 <= start && start <= end && end <= n, "slice: range [", start, ", ", end, ") is out of bounds for dim ",
               dim, " of size ", n, " in shape ", shape_str(shape()));
  auto impl = std::make_shared<TensorImpl>(*impl_);
  impl->autograd = nullptr;
  impl->offset += start * impl->strides[d];
  impl->shape[d] = end - start;
  return Tensor(std::move(impl));
}

void Tensor::copy_from(const Tensor& src) {
  KOTOBA_CHECK(shape() == src.shape(), "copy: shape ", shape_str(src.shape()), " does not match destination ",
               shape_str(shape()));
  if (device() != Device::cpu || src.device() != Device::cpu) {
    KOTOBA_CHECK(is_contiguous() && src.is_contiguous(), "copy: tensors on ", device_name(src.device()), " and ",
                 device_name(device()), " must be contiguous");
    Tensor staged = src;
    if (src.dtype() != dtype()) {  // convert on the host
      Tensor host = src.device() == Device::cpu ? src : Tensor::empty(src.shape(), src.dtype());
      if (src.device() != Device::cpu) copy_across(host.raw(), Device::cpu, src.raw(), src.device(), src.nbytes(), "copy");
      staged = host.to(dtype());
    }
    copy_across(raw(), device(), staged.raw(), staged.device(), nbytes(), "copy");
    return;
  }
  check_host(*this, "copy");
  check_host(src, "copy");
  if (dtype() == src.dtype() && is_contiguous() && src.is_contiguous()) {
    std::memcpy(raw(), src.raw(), nbytes());
    return;
  }
  KOTOBA_CHECK(dtype() != DType::q4 && src.dtype() != DType::q4, "copy: packed 4-bit tensors cannot be copied element-wise");
  // Destination may itself be strided: gather destination offsets in the same order.
  std::vector<int64_t> dst_offsets(static_cast<size_t>(numel()));
  for_each_offset(shape(), strides(), [&](int64_t off, int64_t i) { dst_offsets[size_t(i)] = off; });
  const void* s = src.raw();
  void* d = raw();
  DType st = src.dtype(), dt = dtype();
  for_each_offset(src.shape(), src.strides(),
                  [&](int64_t off, int64_t i) { store_from_f64(d, dt, dst_offsets[size_t(i)], load_as_f64(s, st, off)); });
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::to(DType target) const {
  Tensor out = empty(shape(), target, device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(*impl_);
  impl->autograd = nullptr;
  return Tensor(std::move(impl));
}

void Tensor::fill(float value) {
  KOTOBA_CHECK(is_contiguous(), "fill: tensor must be contiguous");
  if (device() != Device::cpu) {
    if (g_device_fill && g_device_fill(raw(), device(), dtype(), numel(), value)) return;
    Tensor host = Tensor::full(shape(), value, dtype());
    copy_across(raw(), device(), host.raw(), Device::cpu, nbytes(), "fill");
    return;
  }
  int64_t n = numel();
  void* d = raw();
  if (dtype() == DType::f32) {
    std::fill_n(static_cast<float*>(d), n, value);
  } else if (dtype() == DType::bf16) {
    std::fill_n(static_cast<bf16*>(d), n, f32_to_bf16(value));
  } else {
    for (int64_t i = 0; i < n; ++i) store_from_f64(d, dtype(), i, value);
  }
}

std::vector<float> Tensor::to_vector() const {
  if (device() != Device::cpu) {
    Tensor src = contiguous_on_device_or_throw(*this);
    Tensor host = Tensor::empty(shape(), dtype());
    copy_across(host.raw(), Device::cpu, src.raw(), device(), nbytes(), "to_vector");
    return host.to_vector();
  }
  std::vector<float> out(static_cast<size_t>(numel()));
  const void* s = raw();
  DType t = dtype();
  for_each_offset(shape(), strides(), [&](int64_t off, int64_t i) { out[size_t(i)] = load_as_f32(s, t, off); });
  return out;
}

Tensor& Tensor::set_requires_grad(bool value) {
  auto& meta = autograd_meta();
  if (!meta) meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = value;
  return *this;
}

const std::shared_ptr<AutogradMeta>& Tensor::autograd_meta() const { return impl().autograd; }
std::shared_ptr<AutogradMeta>& Tensor::autograd_meta() { return impl().autograd; }

Tensor Tensor::grad() const {
  auto& meta = impl().autograd;
  if (!meta || !meta->grad_valid || !meta->grad) return Tensor();
  return Tensor(meta->grad);
}

void Tensor::zero_grad() {
  if (impl().autograd) impl().autograd->grad_valid = false;
}

namespace {
thread_local bool g_grad_enabled = true;
}
bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

}  // namespace kotoba
