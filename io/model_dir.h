// The model directory every command after `pretrain` reads: model.safetensors (HF GPT-2 names
// and layouts), config.json (HF GPT2Config keys), tokenizer.json and generation_config.json —
// the layout transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer open as they are.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "nn/gpt2.h"

namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba {

// generation_config.json: HF GenerationConfig keys; absent keys keep these defaults.
struct GenerationConfig {
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;
  bool do_sample = true;
  float temperature = 1.0f;
  int64_t top_k = 50;
  float top_p = 1.0f;
  float repetition_penalty = 1.0f;
  int64_t max_new_tokens = 256;
};

// A model directory read back: the model with its weights, its config and where its files are.
struct LoadedModel {
  std::unique_ptr<nn::GPT2> model;
  nn::GPT2Config config;
  GenerationConfig generation;
  std::string dir;
  std::string tokenizer_path;  // <dir>/tokenizer.json
};

// config.json <-> GPT2Config. Reading checks every key it uses: a missing or mistyped key, a
// model_type other than "gpt2" or a shape kotoba cannot build is an error naming `file` and key.
nlohmann::json gpt2_config_to_json(const nn::GPT2Config& config);
nn::GPT2Config gpt2_config_from_json(const nlohmann::json& json, const std::string& file);
nn::GPT2Config read_gpt2_config(const std::string& config_json_path);

nlohmann::json generation_config_to_json(const GenerationConfig& config);
GenerationConfig generation_config_from_json(const nlohmann::json& json, const std::string& file);

// GPT-2 weights in HF layout: the Conv1D weights (c_attn, c_proj, c_fc) transposed to (in, out),
// copies; lm_head.weight left out (HF ties it to transformer.wte.weight).
std::map<std::string, Tensor> gpt2_to_hf_tensors(const nn::GPT2& model);
// Copies HF-layout tensors into `model`: every parameter must be present with its HF shape (an
// extra lm_head.weight must equal wte, the tie); `file` names the source in errors.
void load_gpt2_hf_tensors(nn::GPT2& model, const std::map<std::string, Tensor>& tensors, const std::string& file);

// The number of tokens a tokenizer.json defines (highest id in model.vocab and added_tokens + 1).
int64_t tokenizer_json_vocab_size(const std::string& tokenizer_json_path);

// Writes the directory atomically: everything goes into a sibling temporary directory which is
// then renamed over `dir` (an existing `dir` is replaced only once the new one is complete).
// The tokenizer's vocabulary must match the model's vocab_size.
void save_model_dir(const std::string& dir, const nn::GPT2& model, const std::string& tokenizer_json_path,
                    const GenerationConfig& generation = {});
void save_model_dir(const std::string& dir, const nn::GPT2& model, const tokenizer::Tokenizer& tokenizer,
                    const GenerationConfig& generation = {});

// Reads a model directory; errors name the file and the key or tensor at fault.
LoadedModel load_model_dir(const std::string& dir);

// Replaces directory `to` by the complete directory `from` atomically where the filesystem can
// (renameat2 RENAME_EXCHANGE), else by renaming `to` aside first. Shared with checkpoints.
void replace_directory(const std::string& from, const std::string& to);

}  // namespace kotoba
