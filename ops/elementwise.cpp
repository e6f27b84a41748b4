// Differentiable element-wise arithmetic with numpy broadcasting, scaling and the full
// reductions sum and mean. The fast path is a b that repeats per row (bias-like); anything
// else is materialised to the broadcast shape first.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

namespace {

const char* kind_name(BinaryKind kind) {
  switch (kind) {
    case BinaryKind::add:
      return "add";
    case BinaryKind::sub:
      return "sub";
    case BinaryKind::mul:
      return "mul";
    case BinaryKind::div:
      return "div";
  }
  return "?";
}

// out (= x's shape) = x <kind> y, with y broadcastable to x's shape. out may be x.
void binary_into(BinaryKind kind, const Tensor& x, const Tensor& y, const Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  Tensor xc = as_contiguous(x);
  Tensor yc =
      (y.shape() == x.shape() || is_row_suffix(y.shape(), x.shape())) ? as_contiguous(y) : expand_to(y, x.shape());
  BinaryArgs args{kind, xc.raw(), yc.raw(), out.raw(), n, yc.numel(), out.dtype()};
  KOTOBA_DISPATCH(out.device(), binary, args);
}

// target (=|+=) alpha * reduce(g <kind> other), other broadcastable to g's shape. Writes
// straight into the gradient buffer when no reduction or accumulation is needed.
void product_grad(const GradTarget& target, BinaryKind kind, const Tensor& g, const Tensor& other, float alpha = 1.0f) {
  if (!target) return;
  if (alpha == 1.0f && !target.accumulate && target.tensor.shape() == g.shape()) {
    binary_into(kind, g, other, target.tensor);
    return;
  }
  Tensor tmp = Tensor::empty(g.shape(), g.dtype(), g.device());
  binary_into(kind, g, other, tmp);
  reduce_grad_into(target, tmp, alpha);
}

Tensor binary_op(BinaryKind kind, const Tensor& a_arg, const Tensor& b_arg) {
  const char* op = kind_name(kind);
  check_float(a_arg, op, "a");
  check_float(b_arg, op, "b");
  // An f32/bf16 pair computes in f32 (torch's promotion): the bf16 side is cast, differentiably.
  const bool promote = a_arg.dtype() != b_arg.dtype();
  const Tensor a = promote ? cast(a_arg, DType::f32) : a_arg, b = promote ? cast(b_arg, DType::f32) : b_arg;
  check_same_dtype_device(a, b, op, "a", "b");
  const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), op);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  const bool commutative = kind == BinaryKind::add || kind == BinaryKind::mul;
  if (a.shape() == out_shape) {
    binary_into(kind, a, b, out);
  } else if (commutative && b.shape() == out_shape) {
    binary_into(kind, b, a, out);
  } else {
    binary_into(kind, expand_to(a, out_shape), b, out);
  }
  // Save only what the backward reads: add and sub need no tensors at all.
  const bool need_a = grad_enabled() && a.requires_grad(), need_b = grad_enabled() && b.requires_grad();
  const bool product = kind == BinaryKind::mul || kind == BinaryKind::div;
  Tensor saved_a = product && need_b ? a.detach() : Tensor();
  Tensor saved_b = product && (need_a || (kind == BinaryKind::div && need_b)) ? b.detach() : Tensor();
  return record(op, out, {&a, &b},
                [kind, saved_a, saved_b, ma = a.autograd_meta(), mb = b.autograd_meta(), a_shape = a.shape(),
                 b_shape = b.shape(), dtype = a.dtype(), device = a.device()](const Tensor& g) {
                  GradTarget ta = grad_target(ma, a_shape, dtype, device);
                  GradTarget tb = grad_target(mb, b_shape, dtype, device);
                  switch (kind) {
                    // y = a + b: da = dy, db = dy, each summed over the dims it was broadcast along
                    case BinaryKind::add:
                      reduce_grad_into(ta, g);
                      reduce_grad_into(tb, g);
                      break;
                    // y = a - b: da = dy, db = -dy
                    case BinaryKind::sub:
                      reduce_grad_into(ta, g);
                      reduce_grad_into(tb, g, -1.0f);
                      break;
                    // y = a * b: da = dy * b, db = dy * a
                    case BinaryKind::mul:
                      product_grad(ta, BinaryKind::mul, g, saved_b);
                      product_grad(tb, BinaryKind::mul, g, saved_a);
                      break;
                    // y = a / b: da = dy / b, db = -dy * a / b^2
                    case BinaryKind::div:
                      product_grad(ta, BinaryKind::div, g, saved_b);
                      if (tb) {
                        Tensor tmp = Tensor::empty(g.shape(), g.dtype(), g.device());
                        binary_into(BinaryKind::mul, g, saved_a, tmp);
                        binary_into(BinaryKind::div, tmp, saved_b, tmp);
                        binary_into(BinaryKind::div, tmp, saved_b, tmp);
                        reduce_grad_into(tb, tmp, -1.0f);
                      }
                      break;
                  }
                });
}

// dx (=|+=) value everywhere (the backward of a full reduction).
void broadcast_scalar_grad(const GradTarget& t, float value) {
  if (!t) return;
  const int64_t n = t.tensor.numel();
  if (n == 0) return;
  if (!t.accumulate) {
    FillArgs args{t.tensor.raw(), n, value, t.tensor.dtype()};
    KOTOBA_DISPATCH(t.tensor.device(), fill, args);
  } else {
    Tensor v = Tensor::full({}, value, t.tensor.dtype(), Device::cpu);
    if (t.tensor.device() != Device::cpu) v = to_device(v, t.tensor.device());
    BinaryArgs args{BinaryKind::add, t.tensor.raw(), v.raw(), t.tensor.raw(), n, 1, t.tensor.dtype()};
    KOTOBA_DISPATCH(t.tensor.device(), binary, args);
  }
}

Tensor full_sum(const Tensor& x, bool average, const char* op) {
  check_float(x, op, "x");
  Tensor xc = as_contiguous(x);
  double total = 0.0;
  const int64_t n = xc.numel();
  if (n > 0) {
    ReduceSumArgs args{xc.raw(), &total, n, false, xc.dtype()};
    KOTOBA_DISPATCH(xc.device(), reduce_sum, args);
  }
  if (average) total = n > 0 ? total / double(n) : std::numeric_limits<double>::quiet_NaN();
  Tensor out = Tensor::full({}, float(total), x.dtype(), Device::cpu);
  if (x.device() != Device::cpu) out = to_device(out, x.device());
  const float per_element = average ? (n > 0 ? 1.0f / float(n) : 0.0f) : 1.0f;
  return record(op, out, {&x},
                [meta = x.autograd_meta(), shape = x.shape(), dtype = x.dtype(), device = x.device(),
                 per_element](const Tensor& g) {
                  // y = sum(x) (times 1/n for the mean), so dx_i = dy (times 1/n)
                  GradTarget t = grad_target(meta, shape, dtype, device);
                  broadcast_scalar_grad(t, to_device(g, Device::cpu).to_vector()[0] * per_element);
                });
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::div, a, b); }

// y = alpha x, so dx = alpha dy.
Tensor scale(const Tensor& x, float alpha) {
  check_float(x, "scale", "x");
  Tensor xc = as_contiguous(x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) {
    AxpbyArgs args{xc.raw(), out.raw(), out.numel(), alpha, 0.0f, out.dtype()};
    KOTOBA_DISPATCH(out.device(), axpby, args);
  }
  return record(
      "scale", out, {&x},
      [meta = x.autograd_meta(), shape = x.shape(), dtype = x.dtype(), device = x.device(), alpha](const Tensor& g) {
        GradTarget t = grad_target(meta, shape, dtype, device);
        reduce_grad_into(t, g, alpha);
      });
}

Tensor sum(const Tensor& x) { return full_sum(x, false, "sum"); }
Tensor mean(const Tensor& x) { return full_sum(x, true, "mean"); }

}  // namespace kotoba
