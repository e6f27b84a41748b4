// CPU kernel: fused softmax + cross-entropy over rows of logits, with the gradient written in
// the same pass (optionally over the logits themselves), so no (N, V) probability matrix is kept.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 AVX-512 intrinsics (PR 105593)
#include <math.h>
#include <omp.h>

#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

constexpr float kInf = __builtin_inff();

// logits (N, V), targets (N) i32, losses (N) f32, dlogits (N, V) or null (may alias logits).
// loss_n = logsumexp(x_n) - x_n[target]; dlogits_n = grad_scale * (softmax(x_n) - onehot(target)).
// A target outside [0, V) (the op level rejects these) gives a NaN loss and no onehot term,
// without reading out of bounds.
template <typename T>
void cross_entropy_impl(const CrossEntropyArgs& a) {
  const int64_t V = a.vocab;
  const T* logits = static_cast<const T*>(a.logits);
  T* dlogits = static_cast<T*>(a.dlogits);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < a.rows; ++n) {
    const T* x = logits + n * V;
    T* dx = dlogits ? dlogits + n * V : nullptr;
    const int32_t target = a.targets[n];
    if (target == a.ignore_index) {
      a.losses[n] = 0.0f;
      if (dx) {
        int64_t j = 0;
        for (; j + kLanes <= V; j += kLanes) vstore(dx + j, vzero());
        for (; j < V; ++j) dx[j] = from_f32<T>(0.0f);
      }
      continue;
    }
    Vec vmx = vset(-kInf);
    int64_t j = 0;
    for (; j + kLanes <= V; j += kLanes) vmx = vmax(vmx, vload(x + j));
    float mx = vhmax(vmx);
    for (; j < V; ++j) mx = fmaxf(mx, to_f32(x[j]));
    const Vec vm = vset(mx);
    Vec vs = vzero();
    for (j = 0; j + kLanes <= V; j += kLanes) vs = vs + vexp(vload(x + j) - vm);
    float sum = vsum(vs);
    for (; j < V; ++j) sum += expf(to_f32(x[j]) - mx);
    const float lse = mx + logf(sum);
    const bool valid = target >= 0 && target < V;
    const float x_target = valid ? to_f32(x[target]) : __builtin_nanf("");  // read before dx overwrites it
    a.losses[n] = lse - x_target;
    if (!dx) continue;
    const float g = a.row_scale ? a.grad_scale * a.row_scale[n] : a.grad_scale;
    const Vec vl = vset(lse), vg = vset(g);
    for (j = 0; j + kLanes <= V; j += kLanes) vstore(dx + j, vexp(vload(x + j) - vl) * vg);
    for (; j < V; ++j) dx[j] = from_f32<T>(g * expf(to_f32(x[j]) - lse));
    if (valid) dx[target] = from_f32<T>(g * (expf(x_target - lse) - 1.0f));
  }
}

void cross_entropy(const CrossEntropyArgs& a) {
  if (a.dtype == DType::bf16) cross_entropy_impl<bf16>(a);
  else cross_entropy_impl<float>(a);
}

}  // namespace

void register_loss_kernels(Backend& b) { b.cross_entropy = cross_entropy; }
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
