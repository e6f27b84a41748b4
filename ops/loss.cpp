// Losses: fused softmax + cross-entropy, whose forward also writes the gradient (optionally
// over the logits themselves), so the backward is a single scale by the upstream gradient.
#include <cstring>

#include "ops/backend.h"
#include "ops/ops.h"

namespace kotoba {

// logits (..., V), targets (...) i32 -> scalar mean over targets != ignore_index. With no
// target left (all ignored) the loss is 0 and its gradient 0, rather than 0/0 = NaN.
Tensor cross_entropy(const Tensor& logits_in, const Tensor& targets_in, int32_t ignore_index, bool overwrite_logits) {
  const char* op = "cross_entropy";
  KOTOBA_CHECK(logits_in.defined() && targets_in.defined(), op, ": logits and targets must be defined");
  KOTOBA_CHECK(logits_in.dtype() == DType::f32 || logits_in.dtype() == DType::bf16, op,
               ": logits must be f32 or bf16, got ", dtype_name(logits_in.dtype()));
  KOTOBA_CHECK(targets_in.dtype() == DType::i32, op, ": targets must be i32, got ", dtype_name(targets_in.dtype()));
  KOTOBA_CHECK(logits_in.ndim() >= 2, op, ": logits must be (N, V) or (B, T, V), got ", shape_str(logits_in.shape()));
  const Shape row_shape(logits_in.shape().begin(), logits_in.shape().end() - 1);
  KOTOBA_CHECK(targets_in.shape() == row_shape, op, ": targets ", shape_str(targets_in.shape()),
               " do not match logits ", shape_str(logits_in.shape()), " (expected targets ", shape_str(row_shape), ")");
  KOTOBA_CHECK(logits_in.device() == targets_in.device(), op, ": logits and targets must be on one device");
  const int64_t V = logits_in.size(-1), N = shape_numel(row_shape);
  KOTOBA_CHECK(V > 0, op, ": logits have an empty class dimension, shape ", shape_str(logits_in.shape()));

  Tensor targets = targets_in.contiguous();
  const bool on_host = targets.device() == Device::cpu;
  std::vector<float> host_targets;
  if (!on_host) host_targets = targets.to_vector();
  int64_t n_valid = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = on_host ? int64_t(static_cast<const int32_t*>(targets.raw())[n]) : int64_t(host_targets[n]);
    if (t == ignore_index) continue;
    KOTOBA_CHECK(t >= 0 && t < V, op, ": target ", t, " at row ", n, " is outside [0, ", V,
                 ") and is not ignore_index (", ignore_index, "); logits ", shape_str(logits_in.shape()));
    ++n_valid;
  }

  const bool needs_grad = any_requires_grad({&logits_in});
  Tensor logits = logits_in.contiguous();
  // The gradient buffer: the logits themselves when allowed (they are dead after the loss).
  Tensor dlogits;
  if (needs_grad && n_valid > 0)
    dlogits = overwrite_logits ? logits.detach() : Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  Tensor losses = Tensor::empty({N}, DType::f32, logits.device());
  const float inv_count = n_valid > 0 ? 1.0f / float(n_valid) : 0.0f;
  if (N > 0) {
    CrossEntropyArgs ca{logits.raw(), static_cast<const int32_t*>(targets.raw()), static_cast<float*>(losses.raw()),
                        dlogits.defined() ? dlogits.raw() : nullptr, N, V, ignore_index, inv_count, logits.dtype()};
    KOTOBA_DISPATCH(logits.device(), cross_entropy, ca);
  }
  double total = 0.0;
  for (float x : losses.to_vector()) total += x;
  Tensor loss = Tensor::full({}, float(total * inv_count), DType::f32, logits.device());

  auto meta = logits_in.autograd_meta();
  // loss = mean_n (lse(x_n) - x_n[t_n]), so dL/dx_n = (softmax(x_n) - onehot(t_n)) / n_valid, which
  // the forward already wrote into dlogits; the backward scales it by the upstream gradient.
  return record(op, loss, {&logits_in}, [dlogits, meta, shape = logits_in.shape(), logits_dtype = logits.dtype(),
                                        device = logits.device()](const Tensor& grad_in) {
    if (!meta || !meta->requires_grad) return;
    const float upstream = grad_in.to_vector()[0];
    const DType dt = logits_dtype;
    if (!dlogits.defined()) {  // every target ignored: a zero gradient
      GradTarget target = grad_target(meta, shape, dt, device);
      if (!target.accumulate) {
        FillArgs f{target.tensor.raw(), target.tensor.numel(), 0.0f, target.tensor.dtype()};
        KOTOBA_DISPATCH(target.tensor.device(), fill, f);
      }
      return;
    }
    // No valid gradient yet: hand the dlogits buffer over as the gradient itself (no copy).
    if (!meta->grad_valid) meta->grad = dlogits.impl_ptr();
    GradTarget target = grad_target(meta, shape, dt, device);
    if (!target.accumulate && target.tensor.same_storage(dlogits) && target.tensor.raw() == dlogits.raw()) {
      if (upstream != 1.0f) {
        AxpbyArgs s{dlogits.raw(), dlogits.raw(), dlogits.numel(), upstream, 0.0f, dt};
        KOTOBA_DISPATCH(dlogits.device(), axpby, s);
      }
      return;
    }
    AxpbyArgs s{dlogits.raw(), target.tensor.raw(), dlogits.numel(), upstream, target.accumulate ? 1.0f : 0.0f, dt};
    KOTOBA_DISPATCH(dlogits.device(), axpby, s);
  });
}

}  // namespace kotoba
