// CPU kernel: one fused AdamW step over a parameter tensor: a single pass reads the gradient
// and updates moments and parameter in place, matching torch.optim.AdamW step for step.
#include <cmath>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

// param, m, v (n) f32; grad (n) f32 or bf16. With g = grad_scale * grad and step t >= 1:
//   p = p (1 - lr wd)                       (decoupled weight decay, applied first as torch does)
//   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
template <typename G>
void adamw_typed(const AdamWArgs& args) {
  float* param = args.param;
  const G* grad = static_cast<const G*>(args.grad);
  float* m = args.m;
  float* v = args.v;
  const double t = double(args.step < 1 ? 1 : args.step);
  const double bc1 = 1.0 - std::pow(double(args.beta1), t);
  const double bc2 = 1.0 - std::pow(double(args.beta2), t);
  const Vec decay = vset(float(1.0 - double(args.lr) * double(args.weight_decay)));
  const Vec step_size = vset(float(double(args.lr) / bc1));
  const Vec inv_bc2_sqrt = vset(float(1.0 / std::sqrt(bc2)));
  const Vec b1 = vset(args.beta1), one_minus_b1 = vset(1.0f - args.beta1);
  const Vec b2 = vset(args.beta2), one_minus_b2 = vset(1.0f - args.beta2);
  const Vec eps = vset(args.eps), gscale = vset(args.grad_scale);
  auto update = [&](int64_t i, int64_t lanes) {
    const bool full = lanes == kLanes;
    Vec g = (full ? vload(grad + i) : vload_n(grad + i, lanes)) * gscale;
    Vec p = (full ? vload(param + i) : vload_n(param + i, lanes)) * decay;
    Vec mi = vfma(b1, full ? vload(m + i) : vload_n(m + i, lanes), one_minus_b1 * g);
    Vec vi = vfma(b2, full ? vload(v + i) : vload_n(v + i, lanes), one_minus_b2 * g * g);
    Vec denom = vfma(vsqrt(vi), inv_bc2_sqrt, eps);
    p = p - step_size * (mi / denom);
    if (full) {
      vstore(param + i, p);
      vstore(m + i, mi);
      vstore(v + i, vi);
    } else {
      vstore_n(param + i, p, lanes);
      vstore_n(m + i, mi, lanes);
      vstore_n(v + i, vi, lanes);
    }
  };
  parallel_chunks(args.n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) update(i, kLanes);
    if (i < end) update(i, end - i);
  });
}

void adamw_step(const AdamWArgs& args) {
  if (args.grad_dtype == DType::bf16)
    adamw_typed<bf16>(args);
  else
    adamw_typed<float>(args);
}

}  // namespace

void register_adamw_kernels(Backend& b) { b.adamw_step = adamw_step; }

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
