// PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors), the layout
// peft's save_pretrained writes and PeftModel.from_pretrained reads, in both directions.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "nn/causal_lm.h"
#include "nn/lora.h"

namespace kotoba {

// adapter_config.json <-> LoraConfig. Reading refuses (naming the file and key) what kotoba
// would not reproduce: a peft_type other than "LORA", bias other than "none", DoRA, per-layer
// rank or alpha patterns, modules_to_save, layer selections, target_parameters.
nlohmann::json peft_config_to_json(const nn::LoraConfig& config, const std::vector<std::string>& adapted_layers,
                                   bool fan_in_fan_out, const std::string& base_model_name_or_path);
nn::LoraConfig peft_config_from_json(const nlohmann::json& json, const std::string& file);
nn::LoraConfig read_peft_config(const std::string& adapter_config_json_path);

// Writes `dir` atomically: adapter_config.json and adapter_model.safetensors holding every
// adapter of `model` as base_model.model.<layer>.lora_A.weight (r, in) and .lora_B.weight
// (out, r), f32. The adapted layers must be exactly those `config` targets, each of rank r.
// "all-linear" is written as the list of adapted layers, as PEFT does.
void save_peft_adapter(const std::string& dir, const nn::CausalLM& model, const nn::LoraConfig& config,
                       const std::string& base_model_name_or_path = "");

// Reads the adapter in `dir`, attaches it to `model` (nn::apply_lora: base frozen, adapters
// trainable) and fills lora_A/lora_B from the file. Everything is checked before the model is
// touched: a missing file, a key that names no module of the model or one the config does not
// target, a targeted layer without its keys, a rank other than r, a shape that does not fit
// the layer — each an error naming the file, the key and the shapes. Returns the config read.
nn::LoraConfig load_peft_adapter(nn::CausalLM& model, const std::string& dir);

}  // namespace kotoba
