// LoRA (low-rank adapters) on a model's Linear layers: which layers a config targets (PEFT's
// rules, so one config means the same layers in both), attaching, merging and unloading, and
// PEFT's trainable-parameter line. PEFT's adapter files are read and written by io/peft.h.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nn/layers.h"
#include "nn/module.h"

namespace kotoba::nn {

struct LoraConfig {
  int64_t r = 8;       // rank
  double alpha = 8;    // PEFT's lora_alpha (its default 8)
  double dropout = 0;  // on each adapter's input, training mode only (lora_dropout)
  // PEFT's target_modules in its two forms. As a list: a layer is targeted when its dotted name
  // equals an entry or ends with "." + entry ("c_attn", "self_attn.q_proj"). As one string
  // (target_regex set, the list then unused): a regular expression the whole dotted name must
  // match, except "all-linear", which targets every Linear but the output head.
  std::vector<std::string> target_modules = {};
  std::optional<std::string> target_regex = std::nullopt;
  bool use_rslora = false;  // scaling alpha / sqrt(r) (rank-stabilised) instead of alpha / r

  double scaling() const;
  // The targets as PEFT's adapter_config.json writes them ("c_attn" list or the regex).
  std::string describe_targets() const;
};

// The dotted names of the Linear layers `config` targets in `model`, in model order. Errors
// (naming the pattern) when nothing matches, when the pattern hits a module that is not a
// Linear (PEFT refuses those too), for an unparsable regex or a rank below 1.
std::vector<std::string> lora_target_names(const Module& model, const LoraConfig& config);

// Freezes every parameter of `model` and attaches a fresh adapter to each targeted Linear:
// lora_A (r, in) ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default, kaiming-uniform with a = sqrt(5))
// drawn from `seed`, lora_B (out, r) zero, so the model computes what it did until trained.
// The adapters' parameters, <layer>.lora_A.weight and <layer>.lora_B.weight, are the only ones
// left trainable. A model that already holds adapters is refused. Returns the adapted names.
std::vector<std::string> apply_lora(Module& model, const LoraConfig& config, uint64_t seed);

// The Linear layers below `model` that hold an adapter, with their dotted names.
std::vector<std::pair<std::string, Linear*>> lora_layers(const Module& model);

// weight += scaling * B A on every adapted layer (adapters then add nothing on their own), and
// the reverse. Idempotent per layer.
void merge_lora(Module& model);
void unmerge_lora(Module& model);
// Merges every adapter into its weight and removes the adapters: a plain model again (base
// parameters stay frozen; set_requires_grad(true) to train them).
void merge_and_unload(Module& model);

// While alive, every adapter below `model` is bypassed, so the model computes its base alone (as
// PEFT's disable_adapter() context): the reference model of a LoRA policy in DPO and GRPO.
// Adapters are enabled again on destruction. Merged adapters are refused.
class LoraDisabled {
 public:
  explicit LoraDisabled(const Module& model);
  ~LoraDisabled();
  LoraDisabled(const LoraDisabled&) = delete;
  LoraDisabled& operator=(const LoraDisabled&) = delete;

 private:
  std::vector<Linear*> layers_;
};

// PEFT's print_trainable_parameters line for `model`, e.g.
// "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364". Tensors shared
// by several names (tied embeddings) count once, as in PEFT.
std::string trainable_parameters_report(const Module& model);

}  // namespace kotoba::nn
