// AdamW and gradient clipping over the backend kernels.
#include "train/optim.h"

#include <cmath>
#include <vector>

#include "io/safetensors.h"
#include "ops/backend.h"

namespace kotoba::train {

AdamW::AdamW(std::vector<std::pair<std::string, Tensor>> named_params, const AdamWConfig& config) : config_(config) {
  for (auto& [name, p] : named_params) {
    if (!p.requires_grad()) continue;  // frozen: no state at all
    KOTOBA_CHECK(p.dtype() == DType::f32 && p.is_contiguous(), "AdamW: parameter '", name,
                 "' must be a contiguous f32 master tensor, got ", dtype_name(p.dtype()));
    Slot s{name, p, Tensor::zeros(p.shape(), DType::f32, p.device()), Tensor::zeros(p.shape(), DType::f32, p.device()),
           !config.decay_matrices_only || p.ndim() >= 2};
    slots_.push_back(std::move(s));
  }
}

void AdamW::step(float grad_scale) {
  ++step_;
  for (auto& s : slots_) {
    Tensor g = s.param.grad();
    if (!g.defined()) continue;
    KOTOBA_CHECK(g.shape() == s.param.shape(), "AdamW: gradient of '", s.name, "' has shape ", shape_str(g.shape()),
                 ", parameter ", shape_str(s.param.shape()));
    AdamWArgs args{s.param.data<float>(), g.raw(), s.m.data<float>(), s.v.data<float>(), s.param.numel(),
                   config_.lr, config_.beta1, config_.beta2, config_.eps, s.decay ? config_.weight_decay : 0.0f,
                   grad_scale, step_, g.dtype()};
    KOTOBA_DISPATCH(s.param.device(), adamw_step, args);
  }
}

void AdamW::zero_grad() {
  for (auto& s : slots_) s.param.zero_grad();
}

// The squared norms of all gradients of one device and dtype come back in one read, so a GPU
// run waits once per step rather than once per parameter. Each group adds in parameter order.
float global_grad_norm(const std::vector<Tensor>& params) {
  struct Group {
    std::vector<const void*> xs;
    std::vector<int64_t> ns;
  };
  Group groups[2][2];  // [device][bf16]
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    KOTOBA_CHECK(g.is_contiguous() && (g.dtype() == DType::f32 || g.dtype() == DType::bf16),
                 "global_grad_norm: a gradient of shape ", shape_str(g.shape()), " is ", dtype_name(g.dtype()),
                 g.is_contiguous() ? "" : " and not contiguous", "; expected a contiguous f32 or bf16 one");
    Group& group = groups[int(g.device())][g.dtype() == DType::bf16];
    group.xs.push_back(g.raw());
    group.ns.push_back(g.numel());
  }
  double total = 0.0;
  for (Device device : {Device::cpu, Device::cuda})
    for (bool bf16 : {false, true}) {
      const Group& group = groups[int(device)][bf16];
      if (group.xs.empty()) continue;
      std::vector<double> parts(group.xs.size());
      ReduceSumManyArgs args{group.xs.data(), group.ns.data(), int64_t(group.xs.size()), parts.data(),
                             /*squares=*/true, bf16 ? DType::bf16 : DType::f32};
      KOTOBA_DISPATCH(device, reduce_sum_many, args);
      for (double part : parts) total += part;
    }
  return float(std::sqrt(total));
}

float clip_grad_norm(const std::vector<Tensor>& params, float max_norm) {
  float norm = global_grad_norm(params);
  KOTOBA_CHECK(std::isfinite(norm), "clip_grad_norm: the gradient norm is not finite (", norm,
               "); the loss or a gradient overflowed");
  float c = clip_coefficient(norm, max_norm);
  if (c < 1.0f) {
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      AxpbyArgs args{g.raw(), g.raw(), g.numel(), c, 0.0f, g.dtype()};
      KOTOBA_DISPATCH(g.device(), axpby, args);
    }
  }
  return norm;
}

void save_adamw_moments(AdamW& optimizer, const std::string& path) {
  std::map<std::string, Tensor> moments;
  for (auto& slot : optimizer.slots()) {
    moments["exp_avg." + slot.name] = slot.m;
    moments["exp_avg_sq." + slot.name] = slot.v;
  }
  save_safetensors(path, moments);
}

void restore_checkpoint_tensor(const std::map<std::string, Tensor>& tensors, const std::string& path,
                               const std::string& name, const Tensor& into) {
  auto it = tensors.find(name);
  KOTOBA_CHECK(it != tensors.end(), path, ": tensor '", name, "' is missing");
  KOTOBA_CHECK(it->second.shape() == into.shape() && it->second.dtype() == DType::f32, path, ": tensor '", name,
               "' is ", dtype_name(it->second.dtype()), " ", shape_str(it->second.shape()), ", expected f32 ",
               shape_str(into.shape()));
  into.detach().copy_from(it->second);
}

void load_adamw_moments(AdamW& optimizer, const std::string& path) {
  SafeTensors moments = load_safetensors(path);
  for (auto& slot : optimizer.slots()) {
    restore_checkpoint_tensor(moments.tensors, path, "exp_avg." + slot.name, slot.m);
    restore_checkpoint_tensor(moments.tensors, path, "exp_avg_sq." + slot.name, slot.v);
  }
}

}  // namespace kotoba::train
