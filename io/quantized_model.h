// Quantised model directories. `kotoba quantize` turns every Linear layer of a model into
// quantised weights (quant/packed.h): the blocks' layers and an untied LLaMA lm_head (llama.cpp
// quantises output.weight too: at batch 1 an f32 head was a third of the bytes a token reads);
// the embeddings, norms and a head tied to the embeddings stay as they are. Such a model is saved
// and loaded by save_model_dir/load_model_dir like any other, so every command that loads a model
// runs it quantised. On disk:
//   model.safetensors      every other tensor, under its HF name, as before
//   quantized.safetensors  per quantised layer "<module>.codes" (I8: rows x bytes per row, the
//                          kernel layout) and "<module>.scales" (F32: rows x blocks per row)
//   config.json            "quantization_config": {"quant_method": "kotoba", "format": "nf4",
//                          "modules": [...]}; LLM.int8() (`--to llm_int8`) adds to format "int8"
//                          "activations": "int8", "llm_int8_threshold": 6.0
#pragma once
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "nn/causal_lm.h"
#include "quant/packed.h"

namespace kotoba {

struct QuantizeReport {
  std::vector<std::string> quantized;  // module names
  std::vector<std::string> skipped;    // Linear layers whose shape the format cannot hold (kept f32)
  size_t bytes_before = 0, bytes_after = 0;  // of all parameters and quantised weights
};

// LLM.int8(): int8 weights whose layers also quantise their activations to int8, the input
// features with some |x| > threshold (outliers) kept in f32 (quant/packed.h, ops/quant_matmul.cpp).
struct Int8Activations {
  bool enabled = false;
  float threshold = 6.0f;  // bitsandbytes' Linear8bitLt default; 0: no outlier columns
};

// Quantises the model's Linear layers in place (int8_activations: format must be int8).
QuantizeReport quantize_model(nn::CausalLM& model, quant::WeightFormat format,
                              const Int8Activations& int8_activations = {});

// Parameter bytes plus quantised weight bytes: what the model holds in memory.
size_t model_weight_bytes(const nn::CausalLM& model);

// The tensors of quantized.safetensors and the config.json entry, or an empty map if no layer is quantised.
std::map<std::string, Tensor> quantized_layer_tensors(const nn::CausalLM& model, nlohmann::json& quantization_config);

// Before the model's other tensors are loaded: puts the quantised weights of `path` into the
// layers `quantization_config` names (their f32 weights are then no longer expected). Errors
// name the file, the module and the tensor.
void load_quantized_layers(nn::CausalLM& model, const nlohmann::json& quantization_config, const std::string& path,
                           const std::string& config_path);

}  // namespace kotoba
