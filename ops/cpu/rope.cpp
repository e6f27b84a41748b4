// CPU kernel: rotary position embedding, rotate-half convention (HF LLaMA), and its inverse,
// which is the backward. Accumulation: out is written (=) unless `accumulate`, then added.
#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

// x, out (N, H, D); positions (N) i32 in [0, max_pos) (checked by the op); cos/sin (max_pos, D/2).
// With h = D/2 and angle (p, i):
//   out[i]     = x[i] cos - x[i+h] sin
//   out[i + h] = x[i+h] cos + x[i] sin
// The inverse (a rotation by -angle) flips the sign of sin. It is also the backward: the
// rotation is orthogonal, so dx = R^T dout = R(-angle) dout. out may alias x.
template <typename T>
void rope_typed(const RopeArgs& args) {
  const T* x = static_cast<const T*>(args.x);
  T* out = static_cast<T*>(args.out);
  const int64_t N = args.n_tokens, H = args.heads, D = args.head_dim, half = D / 2;
  const bool acc = args.accumulate;
  const Vec sign = vset(args.inverse ? -1.0f : 1.0f);
  const int64_t rows = N * H;
#pragma omp parallel for schedule(static) if (rows * D > kGrain)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row / H;
    const float* c = args.cos + int64_t(args.positions[n]) * half;
    const float* s = args.sin + int64_t(args.positions[n]) * half;
    const T* x1 = x + row * D;
    const T* x2 = x1 + half;
    T* o1 = out + row * D;
    T* o2 = o1 + half;
    int64_t i = 0;
    for (; i + kLanes <= half; i += kLanes) {
      Vec a = vload(x1 + i), b = vload(x2 + i);
      Vec cv = vload(c + i), sv = sign * vload(s + i);
      Vec r1 = a * cv - b * sv;
      Vec r2 = vfma(a, sv, b * cv);
      if (acc) {
        r1 = r1 + vload(o1 + i);
        r2 = r2 + vload(o2 + i);
      }
      vstore(o1 + i, r1);
      vstore(o2 + i, r2);
    }
    if (i < half) {
      const int64_t m = half - i;
      Vec a = vload_n(x1 + i, m), b = vload_n(x2 + i, m);
      Vec cv = vload_n(c + i, m), sv = sign * vload_n(s + i, m);
      Vec r1 = a * cv - b * sv;
      Vec r2 = vfma(a, sv, b * cv);
      if (acc) {
        r1 = r1 + vload_n(o1 + i, m);
        r2 = r2 + vload_n(o2 + i, m);
      }
      vstore_n(o1 + i, r1, m);
      vstore_n(o2 + i, r2, m);
    }
  }
}

void rope(const RopeArgs& args) {
  if (args.dtype == DType::bf16)
    rope_typed<bf16>(args);
  else
    rope_typed<float>(args);
}

}  // namespace

void register_rope_kernels(Backend& b) { b.rope = rope; }

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
