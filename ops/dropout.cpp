// Differentiable inverted dropout. The mask is a pure function of (seed, offset + i), so the
// backward recomputes it: only the seed and offset are saved.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

// y = x * keep / (1 - p), so dx = dy * keep / (1 - p) with the same mask.
Tensor dropout(const Tensor& x, float p, Generator& gen, bool training) {
  check_float(x, "dropout", "x");
  KOTOBA_CHECK(p >= 0.0f && p <= 1.0f, "dropout: p must be in [0, 1], got ", p, " for x ", shape_str(x.shape()));
  if (!training || p == 0.0f) return x;
  const int64_t n = x.numel();
  const uint64_t seed = gen.seed(), offset = gen.advance(uint64_t(n));
  Tensor xc = as_contiguous(x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (n > 0) {
    DropoutArgs args{xc.raw(), out.raw(), n, p, seed, offset, false, x.dtype()};
    KOTOBA_DISPATCH(x.device(), dropout_forward, args);
  }
  return record("dropout", out, {&x},
                [meta = x.autograd_meta(), shape = x.shape(), dtype = x.dtype(), device = x.device(), n, p, seed,
                 offset](const Tensor& g_in) {
                  GradTarget t = grad_target(meta, shape, dtype, device);
                  if (!t || n == 0) return;
                  Tensor g = as_contiguous(g_in);
                  DropoutArgs args{g.raw(), t.tensor.raw(), n, p, seed, offset, t.accumulate, dtype};
                  KOTOBA_DISPATCH(device, dropout_backward, args);
                });
}

}  // namespace kotoba
