// Differentiable shape ops: reshape, transpose and slice are views of their input; contiguous
// and cast copy. Their backwards move the gradient back into the input's shape and dtype.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

namespace {
// g viewed with `shape` (copied first if g is a strided view).
Tensor reshaped(const Tensor& g, const Shape& shape) { return as_contiguous(g).view_as_shape(shape); }
}  // namespace

// The forward only re-labels the elements, so dx is dy read back in x's shape.
Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined(x, "reshape", "x");
  Tensor out = as_contiguous(x).view_as_shape(shape);
  return record(
      "reshape", out, {&x},
      [meta = x.autograd_meta(), x_shape = x.shape(), dtype = x.dtype(), device = x.device()](const Tensor& g) {
        GradTarget t = grad_target(meta, x_shape, dtype, device);
        if (t) copy_into(t.tensor, reshaped(g, x_shape), t.accumulate);
      });
}

// y = x with dims swapped, so dx = dy with the same dims swapped back.
Tensor transpose(const Tensor& x, int dim0, int dim1) {
  check_defined(x, "transpose", "x");
  Tensor out = x.transpose_view(dim0, dim1);
  return record("transpose", out, {&x},
                [meta = x.autograd_meta(), x_shape = x.shape(), dtype = x.dtype(), device = x.device(), dim0,
                 dim1](const Tensor& g) {
                  GradTarget t = grad_target(meta, x_shape, dtype, device);
                  if (t) copy_into(t.tensor, g.transpose_view(dim0, dim1), t.accumulate);
                });
}

// y = x[start:end] along dim, so dx is dy in that range and 0 elsewhere.
Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end) {
  check_defined(x, "slice", "x");
  Tensor out = x.slice_view(dim, start, end);
  return record("slice", out, {&x},
                [meta = x.autograd_meta(), x_shape = x.shape(), dtype = x.dtype(), device = x.device(), dim, start,
                 end](const Tensor& g) {
                  GradTarget t = grad_target(meta, x_shape, dtype, device);
                  if (!t) return;
                  if (!t.accumulate) zero(t.tensor);
                  copy_into(t.tensor.slice_view(dim, start, end), g, true);
                });
}

// A copy, so dx = dy.
Tensor contiguous(const Tensor& x) {
  check_defined(x, "contiguous", "x");
  if (x.is_contiguous()) return x;
  Tensor out = as_contiguous(x);
  return record(
      "contiguous", out, {&x},
      [meta = x.autograd_meta(), x_shape = x.shape(), dtype = x.dtype(), device = x.device()](const Tensor& g) {
        GradTarget t = grad_target(meta, x_shape, dtype, device);
        if (t) copy_into(t.tensor, g, t.accumulate);
      });
}

// y = x converted to `dtype`, so dx = dy converted back to x's dtype.
Tensor cast(const Tensor& x, DType dtype) {
  check_float(x, "cast", "x");
  KOTOBA_CHECK(dtype == DType::f32 || dtype == DType::bf16, "cast: target dtype must be f32 or bf16, got ",
               dtype_name(dtype));
  if (x.dtype() == dtype) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  copy_into(out, x, false);
  return record(
      "cast", out, {&x},
      [meta = x.autograd_meta(), x_shape = x.shape(), x_dtype = x.dtype(), device = x.device()](const Tensor& g) {
        GradTarget t = grad_target(meta, x_shape, x_dtype, device);
        if (t) copy_into(t.tensor, g, t.accumulate);
      });
}

}  // namespace kotoba
