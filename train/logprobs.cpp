// Per-token and per-sequence log-probabilities (train/logprobs.h).
#include "train/logprobs.h"

#include <cmath>

#include "nn/causal_lm.h"
#include "ops/backend.h"
#include "ops/ops.h"

namespace kotoba::train {

namespace {
constexpr int32_t kIgnore = -100;

// Off the host: the fused cross-entropy kernel gives -log p(target) per token without the (B, T, V)
// logits leaving the device, in their own dtype; its gradient pass, scaled per row by the upstream
// gradient (row_scale = -g), gives g (onehot - softmax). Ignored tokens: 0 and no gradient.
Tensor device_token_logprobs(const Tensor& logits_in, const Tensor& host_targets) {
  const int64_t B = logits_in.size(0), T = logits_in.size(1), V = logits_in.size(2), N = B * T;
  const Device device = logits_in.device();
  const DType dtype = logits_in.dtype();
  Tensor logits = logits_in.is_contiguous() ? logits_in.detach() : contiguous(logits_in.detach());
  Tensor targets = to_device(host_targets, device);
  Tensor losses = Tensor::empty({B, T}, DType::f32, device), out = Tensor::empty({B, T}, DType::f32, device);
  if (N > 0) {
    CrossEntropyArgs ce{logits.raw(), targets.data<int32_t>(), losses.data<float>(), nullptr, N, V, kIgnore, 1.0f,
                        dtype};
    KOTOBA_DISPATCH(device, cross_entropy, ce);
    AxpbyArgs negate{losses.raw(), out.raw(), N, -1.0f, 0.0f, DType::f32};
    KOTOBA_DISPATCH(device, axpby, negate);
  }
  auto meta = logits_in.autograd_meta();
  return record("token_logprobs", out, {&logits_in}, [meta, logits, targets, B, T, V, N, device, dtype](const Tensor& g_in) {
    GradTarget target = grad_target(meta, {B, T, V}, dtype, device);
    if (!target || N == 0) return;
    Tensor g = g_in.is_contiguous() ? g_in : g_in.contiguous();
    Tensor row_scale = Tensor::empty({N}, DType::f32, device), losses = Tensor::empty({N}, DType::f32, device);
    AxpbyArgs negate{g.raw(), row_scale.raw(), N, -1.0f, 0.0f, DType::f32};
    KOTOBA_DISPATCH(device, axpby, negate);
    Tensor dlogits = target.accumulate ? Tensor::empty({B, T, V}, dtype, device) : target.tensor;
    CrossEntropyArgs ce{logits.raw(), targets.data<int32_t>(), losses.data<float>(), dlogits.raw(), N, V, kIgnore,
                        1.0f, dtype, row_scale.data<float>()};
    KOTOBA_DISPATCH(device, cross_entropy, ce);
    if (target.accumulate) {
      BinaryArgs add{BinaryKind::add, target.tensor.raw(), dlogits.raw(), target.tensor.raw(), N * V, N * V, dtype};
      KOTOBA_DISPATCH(device, binary, add);
    }
  });
}

}  // namespace

Tensor token_logprobs(const Tensor& logits_in, const Tensor& targets_in) {
  const char* op = "token_logprobs";
  KOTOBA_CHECK(logits_in.defined() && targets_in.defined(), op, ": logits and targets must be defined");
  KOTOBA_CHECK(logits_in.ndim() == 3, op, ": logits must be (B, T, V), got ", shape_str(logits_in.shape()));
  KOTOBA_CHECK(targets_in.dtype() == DType::i32, op, ": targets must be i32, got ", dtype_name(targets_in.dtype()));
  KOTOBA_CHECK(targets_in.ndim() == 2 && targets_in.size(0) == logits_in.size(0) && targets_in.size(1) == logits_in.size(1),
               op, ": targets ", shape_str(targets_in.shape()), " do not match logits ", shape_str(logits_in.shape()));
  const int64_t B = logits_in.size(0), T = logits_in.size(1), V = logits_in.size(2), N = B * T;
  Tensor targets = targets_in.device() == Device::cpu ? targets_in.contiguous() : to_device(targets_in, Device::cpu);
  const int32_t* t = targets.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    KOTOBA_CHECK(t[n] == kIgnore || (t[n] >= 0 && t[n] < V), op, ": target ", t[n], " at (", n / T, ", ", n % T,
                 ") is outside [0, ", V, ") and is not -100");
  if (logits_in.device() != Device::cpu) return device_token_logprobs(logits_in, targets);
  // Other float types go through the differentiable cast, so the gradient reaches them as theirs.
  if (logits_in.dtype() != DType::f32) return token_logprobs(cast(logits_in, DType::f32), targets_in);
  Tensor logits = logits_in.contiguous();
  const float* x = logits.data<float>();

  Tensor out = Tensor::zeros({B, T});
  float* o = out.data<float>();
  auto lse = std::make_shared<std::vector<double>>(size_t(N), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    if (t[n] == kIgnore) continue;
    const float* row = x + n * V;
    double m = row[0];
    for (int64_t v = 1; v < V; ++v) m = std::max(m, double(row[v]));
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
    (*lse)[size_t(n)] = m + std::log(s);
    o[n] = float(double(row[t[n]]) - (*lse)[size_t(n)]);
  }

  auto meta = logits_in.autograd_meta();
  // d log p(t) / d x_v = [v == t] - softmax(x)_v, times the upstream gradient of the row.
  return record(op, out, {&logits_in}, [meta, logits, targets, lse, B, T, V](const Tensor& grad_out) {
    GradTarget target = grad_target(meta, {B, T, V}, DType::f32, Device::cpu);
    if (!target) return;
    Tensor g = grad_out.contiguous();
    const float* go = g.data<float>();
    const float* x = logits.data<float>();
    const int32_t* t = targets.data<int32_t>();
    const bool accumulate = target.accumulate;
    float* d = target.tensor.data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < B * T; ++n) {
      float* dr = d + n * V;
      if (t[n] == kIgnore || go[n] == 0.0f) {
        if (!accumulate)
          for (int64_t v = 0; v < V; ++v) dr[v] = 0.0f;
        continue;
      }
      const float* row = x + n * V;
      const double l = (*lse)[size_t(n)], up = go[n];
      for (int64_t v = 0; v < V; ++v) {
        const double value = up * ((v == t[n] ? 1.0 : 0.0) - std::exp(double(row[v]) - l));
        dr[v] = accumulate ? float(dr[v] + value) : float(value);
      }
    }
  });
}

Tensor row_sums(const Tensor& x) {
  KOTOBA_CHECK(x.defined() && x.ndim() == 2, "row_sums: expected (B, T), got ",
               x.defined() ? shape_str(x.shape()) : std::string("an undefined tensor"));
  const int64_t B = x.size(0), T = x.size(1);
  Tensor ones = Tensor::full({T, 1}, 1.0f, x.dtype(), x.device());
  AutocastScope exact(DType::f32);  // a sum of log-probabilities, not a product to run in bf16
  return reshape(matmul(x, ones), {B});
}

SequenceLogprobs sequence_logprobs(nn::CausalLM& model, const Tensor& ids, const Tensor& targets) {
  SequenceLogprobs out;
  // Batches are built on the host; the model may live on a GPU (token_logprobs reads targets anywhere).
  out.tokens = token_logprobs(model.logits(on_device(ids, model.device())), targets);
  out.sums = row_sums(out.tokens);
  Tensor t = targets.device() == Device::cpu ? targets.contiguous() : to_device(targets, Device::cpu);
  const int64_t B = t.size(0), T = t.size(1);
  const int32_t* p = t.data<int32_t>();
  out.counts.assign(size_t(B), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) out.counts[size_t(b)] += p[b * T + i] != kIgnore;
  return out;
}

}  // namespace kotoba::train
