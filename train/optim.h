// AdamW (decoupled weight decay, as torch.optim.AdamW) over a model's named parameters, one
// fused kernel per parameter; and global-norm gradient clipping.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kotoba::train {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
  bool decay_matrices_only = true;  // biases, norms (ndim < 2) get no weight decay (GPT-2 practice)
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, Tensor>> named_params, const AdamWConfig& config);

  // One update of every parameter that has a gradient; grads are multiplied by grad_scale
  // first (pass the clipping coefficient here to fuse clipping into the update).
  void step(float grad_scale = 1.0f);
  void zero_grad();

  void set_lr(float lr) { config_.lr = lr; }
  const AdamWConfig& config() const { return config_; }
  int64_t step_count() const { return step_; }

  // State for checkpoints: moments per parameter, in the order of the constructor's list.
  struct Slot {
    std::string name;
    Tensor param, m, v;
    bool decay;
  };
  std::vector<Slot>& slots() { return slots_; }
  void set_step_count(int64_t step) { step_ = step; }

 private:
  AdamWConfig config_;
  std::vector<Slot> slots_;
  int64_t step_ = 0;
};

// Checkpoints: the moments of every slot as tensors "exp_avg.<name>" and "exp_avg_sq.<name>" of
// one safetensors file, and back (the step count is the caller's to keep).
void save_adamw_moments(AdamW& optimizer, const std::string& path);
void load_adamw_moments(AdamW& optimizer, const std::string& path);
// Copies tensor `name` of the safetensors file `path` into `into`: it must be f32 of into's shape;
// an Error naming the file and the tensor otherwise.
void restore_checkpoint_tensor(const std::map<std::string, Tensor>& tensors, const std::string& path,
                               const std::string& name, const Tensor& into);

// The L2 norm of all gradients together (parameters without a gradient count as zero).
float global_grad_norm(const std::vector<Tensor>& params);

// Scales every gradient by min(1, max_norm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_,
// returns the norm before clipping. A non-finite norm throws (the step must be skipped).
float clip_grad_norm(const std::vector<Tensor>& params, float max_norm);

// The coefficient clip_grad_norm would apply, for fusing into AdamW::step.
inline float clip_coefficient(float norm, float max_norm) {
  float c = max_norm / (norm + 1e-6f);
  return c < 1.0f ? c : 1.0f;
}

}  // namespace kotoba::train
