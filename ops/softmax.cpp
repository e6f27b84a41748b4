// Differentiable softmax over the last dim; the backward reads the saved output, not x.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

// y = softmax(x) over the last dim, so dx = y (dy - sum(dy y)) per row; saves y, not x.
Tensor softmax(const Tensor& x) {
  check_float(x, "softmax", "x");
  KOTOBA_CHECK(x.ndim() >= 1, "softmax: x must have at least one dim, got shape ", shape_str(x.shape()));
  const int64_t cols = x.size(-1), rows = cols > 0 ? x.numel() / cols : 0;
  Tensor xc = as_contiguous(x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) {
    SoftmaxForwardArgs args{xc.raw(), out.raw(), rows, cols, x.dtype()};
    KOTOBA_DISPATCH(x.device(), softmax_forward, args);
  }
  return record("softmax", out, {&x}, [y = out.detach(), meta = x.autograd_meta(), rows, cols](const Tensor& g_in) {
    GradTarget t = grad_target(meta, y.shape(), y.dtype(), y.device());
    if (!t || y.numel() == 0) return;
    Tensor g = as_contiguous(g_in);
    SoftmaxBackwardArgs args{y.raw(), g.raw(), t.tensor.raw(), rows, cols, t.accumulate, y.dtype()};
    KOTOBA_DISPATCH(y.device(), softmax_backward, args);
  });
}

}  // namespace kotoba
