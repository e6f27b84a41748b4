// Differentiable activations (GELU tanh form, SiLU, ReLU) and SwiGLU. Each saves its input
// and recomputes what the backward needs from it.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

namespace {

// y = f(x) element-wise, so dx = dy * f'(x); the kernel evaluates f' from the saved x.
Tensor unary_op(UnaryKind kind, const Tensor& x, const char* op) {
  check_float(x, op, "x");
  Tensor xc = as_contiguous(x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) {
    UnaryForwardArgs args{kind, xc.raw(), out.raw(), out.numel(), out.dtype()};
    KOTOBA_DISPATCH(out.device(), unary_forward, args);
  }
  return record(op, out, {&x}, [kind, xc = xc.detach(), meta = x.autograd_meta()](const Tensor& g_in) {
    GradTarget t = grad_target(meta, xc.shape(), xc.dtype(), xc.device());
    if (!t || xc.numel() == 0) return;
    Tensor g = as_contiguous(g_in);
    UnaryBackwardArgs args{kind, xc.raw(), g.raw(), t.tensor.raw(), xc.numel(), t.accumulate, xc.dtype()};
    KOTOBA_DISPATCH(xc.device(), unary_backward, args);
  });
}

}  // namespace

Tensor gelu(const Tensor& x) { return unary_op(UnaryKind::gelu_tanh, x, "gelu"); }
Tensor gelu_erf(const Tensor& x) { return unary_op(UnaryKind::gelu_erf, x, "gelu_erf"); }
Tensor silu(const Tensor& x) { return unary_op(UnaryKind::silu, x, "silu"); }
Tensor relu(const Tensor& x) { return unary_op(UnaryKind::relu, x, "relu"); }

// y = silu(gate) * up, so dgate = dy * up * silu'(gate) and dup = dy * silu(gate).
Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_float(gate, "swiglu", "gate");
  check_float(up, "swiglu", "up");
  check_same_dtype_device(gate, up, "swiglu", "gate", "up");
  KOTOBA_CHECK(gate.shape() == up.shape(), "swiglu: gate shape ", shape_str(gate.shape()), " does not match up shape ",
               shape_str(up.shape()));
  Tensor gc = as_contiguous(gate), uc = as_contiguous(up);
  Tensor out = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  if (out.numel() > 0) {
    SwigluForwardArgs args{gc.raw(), uc.raw(), out.raw(), out.numel(), out.dtype()};
    KOTOBA_DISPATCH(out.device(), swiglu_forward, args);
  }
  return record(
      "swiglu", out, {&gate, &up},
      [gc = gc.detach(), uc = uc.detach(), mg = gate.autograd_meta(), mu = up.autograd_meta()](const Tensor& g_in) {
        GradTarget tg = grad_target(mg, gc.shape(), gc.dtype(), gc.device());
        GradTarget tu = grad_target(mu, uc.shape(), uc.dtype(), uc.device());
        if ((!tg && !tu) || gc.numel() == 0) return;
        Tensor g = as_contiguous(g_in);
        // The kernel has one accumulate flag: when the two targets disagree, write the
        // accumulating one through a temporary.
        Tensor dgate = tg ? tg.tensor : Tensor(), dup = tu ? tu.tensor : Tensor();
        bool acc = tg ? tg.accumulate : tu.accumulate;
        Tensor staged;
        GradTarget* staged_for = nullptr;
        if (tg && tu && tg.accumulate != tu.accumulate) {
          acc = false;
          staged = Tensor::empty(gc.shape(), gc.dtype(), gc.device());
          if (tg.accumulate) {
            dgate = staged;
            staged_for = &tg;
          } else {
            dup = staged;
            staged_for = &tu;
          }
        }
        SwigluBackwardArgs args{gc.raw(),
                                uc.raw(),
                                g.raw(),
                                dgate.defined() ? dgate.raw() : nullptr,
                                dup.defined() ? dup.raw() : nullptr,
                                gc.numel(),
                                acc,
                                gc.dtype()};
        KOTOBA_DISPATCH(gc.device(), swiglu_backward, args);
        if (staged_for) reduce_grad_into(*staged_for, staged);
      });
}

}  // namespace kotoba
