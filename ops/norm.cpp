// Differentiable LayerNorm and RMSNorm over the last dim.
// The norms save the per-row mean and 1/std (f32) so the backward needs one pass per row.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

namespace {

void check_norm_param(const Tensor& p, const Tensor& x, const char* op, const char* name) {
  check_float(p, op, name);
  KOTOBA_CHECK(p.ndim() == 1 && p.size(0) == x.size(-1), op, ": ", name, " shape ", shape_str(p.shape()),
               " does not match last dim of x ", shape_str(x.shape()));
  check_same_dtype_device(x, p, op, "x", name);
}

// A parameter gradient the kernel adds into: zero it first when the buffer is stale.
GradTarget param_target(const std::shared_ptr<AutogradMeta>& meta, const Tensor& p) {
  GradTarget t = grad_target(meta, p.shape(), p.dtype(), p.device());
  if (t && !t.accumulate) zero(t.tensor);
  return t;
}

Tensor norm_op(const Tensor& x_arg, const Tensor& weight, const Tensor& bias, float eps, bool rms) {
  const char* op = rms ? "rms_norm" : "layer_norm";
  check_float(x_arg, op, "x");
  check_float(weight, op, "weight");
  // A bf16 x under f32 parameters (mixed precision) is normalised in f32, as torch.autocast does:
  // the cast is differentiable, so its gradient returns in bf16.
  const Tensor x = x_arg.dtype() != weight.dtype() ? cast(x_arg, weight.dtype()) : x_arg;
  KOTOBA_CHECK(x.ndim() >= 1, op, ": x must have at least one dim, got shape ", shape_str(x.shape()));
  check_norm_param(weight, x, op, "weight");
  if (bias.defined()) check_norm_param(bias, x, op, "bias");
  KOTOBA_CHECK(eps >= 0.0f, op, ": eps must be >= 0, got ", eps);
  const int64_t cols = x.size(-1), rows = cols > 0 ? x.numel() / cols : 0;
  Tensor xc = as_contiguous(x), wc = as_contiguous(weight), bc = bias.defined() ? as_contiguous(bias) : Tensor();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const bool needs_grad = any_requires_grad({&x, &weight, &bias});
  // mean and rstd only matter to the backward
  Tensor mean = needs_grad && !rms ? Tensor::empty({rows}, DType::f32, x.device()) : Tensor();
  Tensor rstd = needs_grad ? Tensor::empty({rows}, DType::f32, x.device()) : Tensor();
  if (out.numel() > 0) {
    NormForwardArgs args{xc.raw(),
                         wc.raw(),
                         bc.defined() ? bc.raw() : nullptr,
                         out.raw(),
                         mean.defined() ? mean.data<float>() : nullptr,
                         rstd.defined() ? rstd.data<float>() : nullptr,
                         rows,
                         cols,
                         eps,
                         x.dtype()};
    if (rms)
      KOTOBA_DISPATCH(x.device(), rmsnorm_forward, args);
    else
      KOTOBA_DISPATCH(x.device(), layernorm_forward, args);
  }
  if (!needs_grad) return out;
  return record(
      op, out, {&x, &weight, &bias},
      [rms, xc = xc.detach(), wc = wc.detach(), mean, rstd, mx = x.autograd_meta(), mw = weight.autograd_meta(),
       mb = bias.defined() ? bias.autograd_meta() : nullptr, rows, cols](const Tensor& g_in) {
        if (rows == 0 || cols == 0) return;
        GradTarget tx = grad_target(mx, xc.shape(), xc.dtype(), xc.device());
        GradTarget tw = param_target(mw, wc);
        GradTarget tb = mb ? param_target(mb, wc) : GradTarget();
        if (!tx && !tw && !tb) return;
        Tensor g = as_contiguous(g_in);
        NormBackwardArgs args{xc.raw(),
                              wc.raw(),
                              mean.defined() ? mean.data<float>() : nullptr,
                              rstd.data<float>(),
                              g.raw(),
                              tx ? tx.tensor.raw() : nullptr,
                              tw ? tw.tensor.raw() : nullptr,
                              tb ? tb.tensor.raw() : nullptr,
                              rows,
                              cols,
                              tx.accumulate,
                              xc.dtype()};
        if (rms)
          KOTOBA_DISPATCH(xc.device(), rmsnorm_backward, args);
        else
          KOTOBA_DISPATCH(xc.device(), layernorm_backward, args);
      });
}

}  // namespace

// Backward (in the kernel): y = xhat w + b, xhat = (x - mean) rstd, so dw += sum dy xhat,
// db += sum dy, dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with dxhat = dy w.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  return norm_op(x, weight, bias, eps, false);
}

// Backward (in the kernel): y = xhat w, xhat = x rstd, so dw += sum dy xhat and
// dx = rstd (dxhat - xhat mean(dxhat xhat)) with dxhat = dy w.
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) { return norm_op(x, weight, Tensor(), eps, true); }

}  // namespace kotoba
