// The basic layers: Linear (with an optional LoRA adapter), Embedding, LayerNorm, RMSNorm.
// Weights use PyTorch's layouts (Linear weight is (out, in)); the importers in io/ map other
// layouts onto these.
#pragma once
#include <memory>

#include "nn/module.h"
#include "ops/ops.h"
#include "quant/packed.h"

namespace kotoba::nn {

// A low-rank update of a Linear (LoRA): y += scaling * (dropout(x) A^T) B^T. A and B sit in
// child modules named "lora_A" and "lora_B" so that their parameters are named as PEFT's
// (<layer>.lora_A.weight). nn/lora.h attaches these to the layers a config targets.
struct LoraAdapter {
  Module a_module, b_module;
  Tensor A;  // (r, in)
  Tensor B;  // (out, r)
  float scaling = 1.0f;
  float dropout = 0.0f;           // on the adapter's input, training mode only
  mutable Generator dropout_gen;  // forward is const; dropout draws advance it
  bool merged = false;            // scaling * B A has been added into the layer's weight
  bool disabled = false;          // bypassed: the layer computes its base weight alone (PEFT's disable_adapter)
};

class Linear : public Module {
 public:
  // Weight N(0, init_std^2), bias zero.
  Linear(int64_t in_features, int64_t out_features, bool bias, float init_std, Generator& gen);
  Tensor forward(const Tensor& x) const;
  int64_t in_features() const { return quantized_ ? quantized_->cols : weight.size(1); }
  int64_t out_features() const { return quantized_ ? quantized_->rows : weight.size(0); }

  // Holds the weight quantised (quant/packed.h) instead of as f32: the "weight" parameter is
  // dropped (frozen and gone from named_parameters, so checkpoints and the trainers never see
  // it) and forward runs quantized_linear. LoRA adapters still attach on top (QLoRA); merging
  // into a quantised weight is an error.
  void quantize(quant::WeightFormat format);
  void set_quantized(std::shared_ptr<const quant::PackedWeight> weight);
  const quant::PackedWeight* quantized() const { return quantized_.get(); }
  // A quantised weight moves as a device copy of its codes and scales; LLM.int8() weights
  // (int8 activations) run on the CPU only.
  std::string device_limitation(Device device) const override;
  void moved_to(Device device) override;

  // Attaches a rank-r adapter: A (r, in) and B (out, r) as given (trainable), on the weight's
  // device. Replaces an unmerged adapter; an error if a merged one is attached.
  void attach_lora(const Tensor& A, const Tensor& B, float scaling, float dropout, uint64_t dropout_seed);
  // Removes the adapter (a merged one stays in the weight: merge-and-unload).
  void detach_lora();
  const LoraAdapter* lora() const { return lora_.get(); }
  // weight += scaling * B A (the adapter then stops adding its own term), and back.
  void merge_lora();
  void unmerge_lora();
  // Bypasses the adapter (false) or uses it again (true); its parameters are kept. A merged adapter
  // cannot be bypassed (its update is in the weight): an error.
  void set_lora_enabled(bool enabled);

  Tensor weight;  // (out, in)
  Tensor bias;    // (out) or undefined

 private:
  // Where the layer computes: the weight's device, or for a quantised weight its copy's.
  Device compute_device() const;

  std::unique_ptr<LoraAdapter> lora_;
  std::shared_ptr<const quant::PackedWeight> quantized_;
  PackedWeightOnDevice quantized_device_;  // codes and scales off the host; undefined on the CPU
};

class Embedding : public Module {
 public:
  Embedding(int64_t count, int64_t dim, float init_std, Generator& gen);
  Tensor forward(const Tensor& ids) const { return embedding(ids, weight); }
  Tensor weight;  // (count, dim)
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, float eps, bool bias = true);
  Tensor forward(const Tensor& x) const { return layer_norm(x, weight, bias, eps); }
  Tensor weight, bias;  // (dim), ones and zeros
  float eps;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, float eps);
  Tensor forward(const Tensor& x) const { return rms_norm(x, weight, eps); }
  Tensor weight;  // (dim), ones
  float eps;
};

}  // namespace kotoba::nn
