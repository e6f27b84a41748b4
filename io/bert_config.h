// BERT (HF model_type "bert", BertForMaskedLM) in the ecosystem's files: config.json <->
// BertConfig, the checkpoint's tensors <-> BertForMaskedLM, and whole model directories
// (config.json, model.safetensors, tokenizer.json) that transformers' from_pretrained reads.
// Reading refuses settings kotoba would not reproduce, naming the file and key.
#pragma once
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/bert.h"

namespace kotoba {

nlohmann::json bert_config_to_json(const nn::BertConfig& config);
nn::BertConfig bert_config_from_json(const nlohmann::json& json, const std::string& file);

// The parameters under HF names; the decoder weight (tied to the word embeddings) and the
// decoder bias (the same tensor as cls.predictions.bias) are left out, as save_pretrained does.
std::map<std::string, Tensor> bert_to_hf_tensors(const nn::BertForMaskedLM& model);
// Copies HF tensors (any float dtype) into the model: every parameter must be present with its
// shape; cls.predictions.decoder.{weight,bias}, when present, must equal what they are tied to;
// position_ids buffers are skipped; anything else (e.g. a pooler, NSP head) is an error naming
// `file` and the tensor.
void load_bert_hf_tensors(nn::BertForMaskedLM& model, const std::map<std::string, Tensor>& tensors,
                          const std::string& file);

// Writes `dir` atomically (config.json, model.safetensors, a copy of tokenizer_json_path and a
// tokenizer_config.json naming BERT's special tokens). The tokenizer must fit vocab_size.
void save_bert_dir(const std::string& dir, const nn::BertForMaskedLM& model, const std::string& tokenizer_json_path);

struct LoadedBert {
  std::unique_ptr<nn::BertForMaskedLM> model;
  nlohmann::json config;
  std::string tokenizer_path;  // <dir>/tokenizer.json, empty when the directory has none
};
LoadedBert load_bert_dir(const std::string& dir);

}  // namespace kotoba
