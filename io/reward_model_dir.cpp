// Reward-model directories in and out (io/reward_model_dir.h); the backbone's keys and tensor
// maps are io/hf_config's.
#include "io/reward_model_dir.h"

#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "io/hf_config.h"
#include "io/json_util.h"
#include "io/peft.h"
#include "io/safetensors.h"
#include "nn/llama.h"
#include "tokenizer/tokenizer.h"

namespace kotoba {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace json_util;

std::string sequence_classification_architecture(const std::string& model_type) {
  if (model_type == "gpt2") return "GPT2ForSequenceClassification";
  if (model_type == "mistral") return "MistralForSequenceClassification";
  if (model_type == "qwen2") return "Qwen2ForSequenceClassification";
  if (model_type == "llama") return "LlamaForSequenceClassification";
  throw Error(detail::concat("reward model: no sequence-classification architecture for model type ", model_type));
}

json reward_model_config_to_json(const nn::RewardModel& model) {
  json config = model_config_to_json(model.backbone());
  config["architectures"] = json::array({sequence_classification_architecture(model.model_type())});
  config["id2label"] = json{{"0", "LABEL_0"}};
  config["label2id"] = json{{"LABEL_0", 0}};
  if (model.pad_token_id()) config["pad_token_id"] = *model.pad_token_id();
  return config;
}

void save_reward_model_dir(const std::string& dir, const nn::RewardModel& model, const tokenizer::Tokenizer& tokenizer,
                           const json& tokenizer_config) {
  KOTOBA_CHECK(!dir.empty(), "save_reward_model_dir: the directory path is empty");
  write_directory_atomically(dir, [&](const std::string& tmp) {
    const std::string tok_path = (fs::path(tmp) / "tokenizer.json").string();
    tokenizer.save(tok_path);
    const int64_t tokens = tokenizer_json_vocab_size(tok_path);
    KOTOBA_CHECK(tokens <= model.backbone().vocab_size(), "tokenizer.json has ", tokens,
                 " tokens but the model's vocab_size is only ", model.backbone().vocab_size());
    std::map<std::string, Tensor> tensors = model_to_hf_tensors(model.backbone());
    Tensor score = model.score.weight.detach();
    if (score.device() != Device::cpu) score = to_device(score, Device::cpu);
    tensors["score.weight"] = score;
    save_safetensors((fs::path(tmp) / "model.safetensors").string(), tensors, {{"format", "pt"}});
    write_file_atomically((fs::path(tmp) / "config.json").string(), reward_model_config_to_json(model).dump(2) + "\n");
    if (tokenizer_config.is_object())
      write_file_atomically((fs::path(tmp) / "tokenizer_config.json").string(), tokenizer_config.dump(2) + "\n");
  });
}

void save_reward_peft_adapter(const std::string& dir, const nn::RewardModel& model, const nn::LoraConfig& config,
                              const std::string& base_model_name_or_path) {
  write_directory_atomically(dir, [&](const std::string& tmp) {
    // The backbone's adapters as for a causal LM, then the classifier's additions.
    const fs::path lora = fs::path(tmp) / "lora";
    save_peft_adapter(lora.string(), model.backbone(), config, base_model_name_or_path);
    SafeTensors adapters = load_safetensors((lora / "adapter_model.safetensors").string());
    std::map<std::string, Tensor> tensors = adapters.tensors;
    Tensor score = model.score.weight.detach();
    if (score.device() != Device::cpu) score = to_device(score, Device::cpu);
    tensors["base_model.model.score.weight"] = score.contiguous();
    json adapter_config = read_json_file((lora / "adapter_config.json").string());
    adapter_config["task_type"] = "SEQ_CLS";
    adapter_config["modules_to_save"] = json::array({"classifier", "score"});
    save_safetensors((fs::path(tmp) / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
    write_file_atomically((fs::path(tmp) / "adapter_config.json").string(), adapter_config.dump(2) + "\n");
    fs::remove_all(lora);
  });
}

namespace {

// The architecture config.json names, or "" when it names none.
std::string architecture_of(const json& config, const std::string& file) {
  const json* a = find_key(config, "architectures");
  if (!a || a->is_null()) return "";
  KOTOBA_CHECK(a->is_array() && !a->empty() && (*a)[0].is_string(), file,
               ": key 'architectures' must be a list of class names");
  return (*a)[0].get<std::string>();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_reward_model_dir(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  if (!fs::is_regular_file(path)) return false;
  try {
    return ends_with(architecture_of(read_json_file(path), path), "ForSequenceClassification");
  } catch (const Error&) {
    return false;
  }
}

LoadedRewardModel load_reward_model_dir(const std::string& dir) {
  KOTOBA_CHECK(fs::is_directory(dir), dir, ": not a reward model directory (expected config.json, model.safetensors, "
               "tokenizer.json)");
  const fs::path d(dir);
  const std::string config_path = (d / "config.json").string();
  KOTOBA_CHECK(fs::is_regular_file(config_path), config_path, ": missing from the reward model directory");
  json config = read_json_file(config_path);
  KOTOBA_CHECK(config.is_object(), config_path, ": expected a JSON object");
  const std::string arch = architecture_of(config, config_path);
  KOTOBA_CHECK(ends_with(arch, "ForSequenceClassification"), config_path, ": architectures names \"", arch,
               "\", not a sequence classifier (a reward model is a ...ForSequenceClassification; to start one from a "
               "language model, train it with `kotoba reward --model ", dir, "`)");
  int64_t labels = 2;  // transformers' default when neither key is given
  if (const json* id2label = find_key(config, "id2label"); id2label && id2label->is_object())
    labels = int64_t(id2label->size());
  if (find_key(config, "num_labels")) labels = require_int(config, "num_labels", config_path);
  KOTOBA_CHECK(labels == 1, config_path, ": the classifier has ", labels,
               " labels (key 'id2label'); a reward model has exactly 1 (num_labels = 1)");
  const std::optional<int64_t> pad = optional_id(config, "pad_token_id", config_path);

  // The backbone's weights come from the file (no random draw), score included.
  std::unique_ptr<nn::RewardModel> model;
  {
    nn::SkipInitialisation skip;
    std::unique_ptr<nn::CausalLM> backbone = build_model(config, config_path);
    model = std::make_unique<nn::RewardModel>(std::move(backbone), pad, 0.02f, 0);
  }
  const bool sharded = !fs::is_regular_file(d / "model.safetensors");
  const std::string weights_name = (d / (sharded ? "model.safetensors.index.json" : "model.safetensors")).string();
  std::map<std::string, Tensor> tensors = load_model_weights(dir);
  auto it = tensors.find("score.weight");
  KOTOBA_CHECK(it != tensors.end(), weights_name, ": tensor 'score.weight' (the reward head) is missing");
  const Tensor score = it->second;
  KOTOBA_CHECK(score.shape() == model->score.weight.shape(), weights_name, ": tensor 'score.weight' has shape ",
               shape_str(score.shape()), ", expected ", shape_str(model->score.weight.shape()));
  tensors.erase(it);
  KOTOBA_CHECK(!tensors.count("score.bias"), weights_name,
               ": tensor 'score.bias' is not supported (transformers' sequence classifiers have no score bias)");
  load_hf_tensors(model->backbone(), tensors, weights_name);
  {
    NoGradGuard no_grad;
    Tensor dst = model->score.weight.detach();
    dst.copy_from(score);
  }
  const std::string tok_path = (d / "tokenizer.json").string();
  if (fs::is_regular_file(tok_path)) {
    const int64_t tokens = tokenizer_json_vocab_size(tok_path);
    KOTOBA_CHECK(tokens <= model->backbone().vocab_size(), tok_path, " has ", tokens, " tokens but ", config_path,
                 " vocab_size is ", model->backbone().vocab_size());
  }
  return LoadedRewardModel{std::move(model), std::move(config), dir};
}

std::unique_ptr<nn::RewardModel> reward_model_from_causal_lm(LoadedModel loaded, std::optional<int64_t> pad_token_id,
                                                             uint64_t seed) {
  const float init = nn::initializer_range_of(*loaded.model);
  return std::make_unique<nn::RewardModel>(std::move(loaded.model), pad_token_id, init, seed);
}

}  // namespace kotoba
