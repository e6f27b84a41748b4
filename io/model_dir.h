// The model directory every command after `pretrain` reads: config.json (HF keys of the
// architecture), model.safetensors (HF names and layouts), tokenizer.json and
// generation_config.json — the layout transformers' from_pretrained and AutoTokenizer open as
// they are. Architectures and their key/tensor maps live in io/hf_config.h.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "nn/causal_lm.h"

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
  std::unique_ptr<nn::CausalLM> model;
  nlohmann::json config;  // config.json as read
  GenerationConfig generation;
  std::string dir;
  std::string tokenizer_path;  // <dir>/tokenizer.json, or the SentencePiece <dir>/tokenizer.model
  // (tokenizer::Tokenizer::load_dir(dir) opens it with tokenizer_config.json's special tokens)
};

nlohmann::json generation_config_to_json(const GenerationConfig& config);
GenerationConfig generation_config_from_json(const nlohmann::json& json, const std::string& file);

// The number of tokens a tokenizer.json defines (highest id in model.vocab and added_tokens + 1).
int64_t tokenizer_json_vocab_size(const std::string& tokenizer_json_path);

// Writes the directory atomically: everything goes into a sibling temporary directory which is
// then renamed over `dir` (an existing `dir` is replaced only once the new one is complete).
// The tokenizer's vocabulary must fit the model's vocab_size (HF models may have more rows than
// tokens; kotoba's own are saved with exactly as many). Given a tokenizer.json path, the
// tokenizer_config.json and special_tokens_map.json beside it are copied too. A model with
// quantised layers also gets quantized.safetensors (io/quantized_model.h).
void save_model_dir(const std::string& dir, const nn::CausalLM& model, const std::string& tokenizer_json_path,
                    const GenerationConfig& generation = {});
void save_model_dir(const std::string& dir, const nn::CausalLM& model, const tokenizer::Tokenizer& tokenizer,
                    const GenerationConfig& generation = {});

// Reads a model directory of any supported architecture; errors name the file and the key or
// tensor at fault.
LoadedModel load_model_dir(const std::string& dir);

// Builds directory `dir` atomically: `fill` writes the contents into a fresh temporary directory
// beside it (its argument), which then replaces `dir` (replace_directory); if `fill` throws, the
// temporary directory is removed and `dir` is untouched. `dir` must be a directory or absent.
void write_directory_atomically(const std::string& dir, const std::function<void(const std::string& tmp)>& fill);

// Replaces directory `to` by the complete directory `from` atomically where the filesystem can
// (renameat2 RENAME_EXCHANGE), else by renaming `to` aside first. Shared with checkpoints.
void replace_directory(const std::string& from, const std::string& to);

}  // namespace kotoba
