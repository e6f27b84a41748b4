// Reward-model directories: the layout transformers' AutoModelForSequenceClassification reads and
// writes — config.json of the backbone's architecture with architectures
// [GPT2ForSequenceClassification | LlamaForSequenceClassification | Mistral.. | Qwen2..],
// id2label/label2id of one label and pad_token_id; model.safetensors with the backbone under its
// HF names and score.weight (1, hidden); tokenizer.json and tokenizer_config.json.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "io/model_dir.h"
#include "nn/lora.h"
#include "nn/reward_model.h"

namespace kotoba {

// "GPT2ForSequenceClassification", "LlamaForSequenceClassification", ... for a model_type.
std::string sequence_classification_architecture(const std::string& model_type);

// config.json of a reward model (the backbone's keys, the classifier's architecture, one label,
// pad_token_id when the model has one).
nlohmann::json reward_model_config_to_json(const nn::RewardModel& model);

// Writes `dir` atomically: config.json, model.safetensors, tokenizer.json (from `tokenizer`) and,
// when `tokenizer_config` is an object, tokenizer_config.json.
void save_reward_model_dir(const std::string& dir, const nn::RewardModel& model, const tokenizer::Tokenizer& tokenizer,
                           const nlohmann::json& tokenizer_config = nullptr);

struct LoadedRewardModel {
  std::unique_ptr<nn::RewardModel> model;
  nlohmann::json config;
  std::string dir;
};

// Reads a sequence-classification directory (kotoba's or transformers'). Errors name the file and
// the key or tensor: an architecture that is not a sequence classifier, num_labels other than 1,
// a missing score.weight, tensors that do not fit.
LoadedRewardModel load_reward_model_dir(const std::string& dir);

// A fresh reward model on a causal-LM directory (e.g. an SFT result): the backbone's weights from
// it, the LM head dropped, score ~ N(0, initializer_range^2) drawn from `seed`; the pad id is the
// tokenizer's pad token, else its EOS.
std::unique_ptr<nn::RewardModel> reward_model_from_causal_lm(LoadedModel loaded, std::optional<int64_t> pad_token_id,
                                                             uint64_t seed);

// Writes `dir` atomically as PEFT's save_pretrained does for task_type SEQ_CLS: the backbone's
// LoRA adapters (as save_peft_adapter writes them) and the score head in full
// (base_model.model.score.weight; modules_to_save ["classifier", "score"]), so that
// PeftModel.from_pretrained on AutoModelForSequenceClassification of the base gives the rewards.
void save_reward_peft_adapter(const std::string& dir, const nn::RewardModel& model, const nn::LoraConfig& config,
                              const std::string& base_model_name_or_path = "");

// True when config.json at `dir` names a ...ForSequenceClassification architecture.
bool is_reward_model_dir(const std::string& dir);

}  // namespace kotoba
