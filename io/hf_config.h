// HF architectures kotoba builds, and how each maps onto config.json and a checkpoint's tensors:
// gpt2 (GPT2LMHeadModel) and the LLaMA family — llama (LlamaForCausalLM), mistral
// (MistralForCausalLM) and qwen2 (Qwen2ForCausalLM). Reading refuses any setting kotoba would
// not reproduce exactly, naming the file and key, rather than load a model that computes
// something else.
#pragma once
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/causal_lm.h"
#include "nn/gpt2.h"
#include "nn/llama.h"

namespace kotoba {

// config.json <-> GPT2Config. A missing or mistyped key, a model_type other than "gpt2" or a
// shape kotoba cannot build is an error naming `file` and the key.
nlohmann::json gpt2_config_to_json(const nn::GPT2Config& config);
nn::GPT2Config gpt2_config_from_json(const nlohmann::json& json, const std::string& file);
nn::GPT2Config read_gpt2_config(const std::string& config_json_path);

// config.json <-> LlamaConfig for model_type llama, mistral and qwen2 (each with its own keys
// and defaults: Mistral's sliding_window, Qwen2's q/k/v biases and max_window_layers).
nlohmann::json llama_config_to_json(const nn::LlamaConfig& config);
nn::LlamaConfig llama_config_from_json(const nlohmann::json& json, const std::string& file);

// The model_types build_model accepts.
bool is_supported_model_type(const std::string& model_type);
// A freshly initialised model of the architecture config.json describes.
std::unique_ptr<nn::CausalLM> build_model(const nlohmann::json& config_json, const std::string& file);
// The config.json of a model (its architecture's keys).
nlohmann::json model_config_to_json(const nn::CausalLM& model);

// The model's parameters under HF names and in HF layouts (GPT-2's Conv1D weights transposed
// to (in, out)); tied LM heads are left out, as save_pretrained does.
std::map<std::string, Tensor> model_to_hf_tensors(const nn::CausalLM& model);
// Copies HF-layout tensors (any float dtype) into the model: every parameter must be present
// with its HF shape; a tied lm_head.weight, if present, must equal the embeddings; buffers older
// transformers versions saved are skipped; anything else is an error naming `file` and tensor.
void load_hf_tensors(nn::CausalLM& model, const std::map<std::string, Tensor>& tensors, const std::string& file);

}  // namespace kotoba
