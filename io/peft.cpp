// PEFT adapter files: adapter_config.json and adapter_model.safetensors in and out.
#include "io/peft.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "core/atomic_file.h"
#include "core/error.h"
#include "io/json_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "ops/ops.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace kotoba {

namespace {

// PEFT's key prefix for a causal LM: PeftModelForCausalLM.base_model (LoraModel).model.
constexpr const char* kPrefix = "base_model.model.";

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// lora_alpha as PEFT writes it: an integer when it is one (8, not 8.0).
json number_json(double value) {
  if (std::floor(value) == value && std::abs(value) < 1e15) return json(int64_t(value));
  return json(value);
}

// A key that must be absent, null or empty (an option kotoba does not implement).
void require_unset(const json& j, const std::string& key, const std::string& file, const std::string& why) {
  const json* v = json_util::find_key(j, key);
  if (!v || v->is_null() || (v->is_object() && v->empty()) || (v->is_array() && v->empty())) return;
  throw Error(detail::concat(file, ": key '", key, "' is ", v->dump(), "; kotoba supports only null or empty here (",
                             why, ")"));
}

void require_false(const json& j, const std::string& key, const std::string& file, const std::string& what) {
  KOTOBA_CHECK(!json_util::optional_bool(j, key, file, false), file, ": key '", key, "' is true; ", what,
               " is not supported by kotoba");
}

}  // namespace

json peft_config_to_json(const nn::LoraConfig& config, const std::vector<std::string>& adapted_layers,
                         bool fan_in_fan_out, const std::string& base_model_name_or_path) {
  json targets;
  if (config.target_regex && *config.target_regex == "all-linear")
    targets = adapted_layers;  // PEFT resolves "all-linear" to the layers it found
  else if (config.target_regex)
    targets = *config.target_regex;
  else
    targets = config.target_modules;
  return json{
      {"alpha_pattern", json::object()},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", base_model_name_or_path.empty() ? json(nullptr) : json(base_model_name_or_path)},
      {"bias", "none"},
      {"exclude_modules", nullptr},
      {"fan_in_fan_out", fan_in_fan_out},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"layer_replication", nullptr},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"loftq_config", json::object()},
      {"lora_alpha", number_json(config.alpha)},
      {"lora_bias", false},
      {"lora_dropout", config.dropout},
      {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"r", config.r},
      {"rank_pattern", json::object()},
      {"revision", nullptr},
      {"target_modules", targets},
      {"task_type", "CAUSAL_LM"},
      {"use_dora", false},
      {"use_rslora", config.use_rslora}};
}

nn::LoraConfig peft_config_from_json(const json& j, const std::string& file) {
  KOTOBA_CHECK(j.is_object(), file, ": expected a JSON object");
  const std::string peft_type = json_util::require_string(j, "peft_type", file);
  KOTOBA_CHECK(peft_type == "LORA", file, ": peft_type is \"", peft_type, "\"; kotoba loads LoRA adapters (\"LORA\")");
  if (const json* task = json_util::find_key(j, "task_type"); task && !task->is_null())
    KOTOBA_CHECK(task->is_string() && task->get<std::string>() == "CAUSAL_LM", file, ": task_type is ", task->dump(),
                 "; kotoba's models are causal LMs (\"CAUSAL_LM\")");
  nn::LoraConfig config;
  config.r = json_util::require_int(j, "r", file);
  KOTOBA_CHECK(config.r >= 1, file, ": key 'r' is ", config.r, "; expected a rank of at least 1");
  config.alpha = json_util::optional_number(j, "lora_alpha", file, 8.0);
  config.dropout = json_util::optional_number(j, "lora_dropout", file, 0.0);
  KOTOBA_CHECK(config.dropout >= 0 && config.dropout < 1, file, ": key 'lora_dropout' is ", config.dropout,
               "; expected a probability in [0, 1)");
  config.use_rslora = json_util::optional_bool(j, "use_rslora", file, false);
  const std::string bias = json_util::optional_string(j, "bias", file, "none");
  KOTOBA_CHECK(bias == "none", file, ": key 'bias' is \"", bias, "\"; kotoba's adapters train no biases (\"none\")");
  require_false(j, "use_dora", file, "DoRA (use_dora)");
  require_false(j, "lora_bias", file, "a bias on lora_B (lora_bias)");
  require_unset(j, "rank_pattern", file, "per-layer ranks");
  require_unset(j, "alpha_pattern", file, "per-layer alphas");
  require_unset(j, "modules_to_save", file, "fully trained extra modules");
  require_unset(j, "layers_to_transform", file, "layer selections");
  require_unset(j, "layer_replication", file, "layer replication");
  require_unset(j, "exclude_modules", file, "excluded modules");
  require_unset(j, "target_parameters", file, "LoRA on bare parameters");
  const json* targets = json_util::find_key(j, "target_modules");
  KOTOBA_CHECK(targets && !targets->is_null(), file,
               ": key 'target_modules' is missing (a list of module names or a regular expression is required)");
  if (targets->is_string()) {
    config.target_regex = targets->get<std::string>();
  } else {
    KOTOBA_CHECK(targets->is_array() && !targets->empty(), file,
                 ": key 'target_modules' must be a string or a non-empty list of strings, got ", targets->dump());
    for (auto& t : *targets) {
      KOTOBA_CHECK(t.is_string(), file, ": key 'target_modules' must list strings, got ", t.dump());
      config.target_modules.push_back(t.get<std::string>());
    }
  }
  return config;
}

nn::LoraConfig read_peft_config(const std::string& path) {
  KOTOBA_CHECK(fs::is_regular_file(path), path, ": missing (a PEFT adapter directory holds adapter_config.json)");
  return peft_config_from_json(json_util::read_json_file(path), path);
}

void save_peft_adapter(const std::string& dir, const nn::CausalLM& model, const nn::LoraConfig& config,
                       const std::string& base_model_name_or_path) {
  auto layers = nn::lora_layers(model);
  const std::vector<std::string> targets = nn::lora_target_names(model, config);
  std::vector<std::string> adapted;
  for (auto& [name, linear] : layers) adapted.push_back(name);
  KOTOBA_CHECK(adapted == targets, "save_peft_adapter: the model's adapters (", adapted.size(),
               " layers) are not the layers target_modules ", config.describe_targets(), " selects (", targets.size(),
               "); the saved config would attach them elsewhere");
  std::map<std::string, Tensor> tensors;
  for (auto& [name, linear] : layers) {
    const nn::LoraAdapter& lora = *linear->lora();
    KOTOBA_CHECK(lora.A.size(0) == config.r, "save_peft_adapter: layer '", name, "' has rank ", lora.A.size(0),
                 " but the config says r = ", config.r);
    KOTOBA_CHECK(!lora.merged, "save_peft_adapter: layer '", name,
                 "' has its adapter merged into the weight; unmerge before saving the adapter");
    auto host = [](const Tensor& t) {
      Tensor d = t.detach();
      return d.device() == Device::cpu ? d.contiguous() : to_device(d, Device::cpu).contiguous();
    };
    tensors[kPrefix + name + ".lora_A.weight"] = host(lora.A);
    tensors[kPrefix + name + ".lora_B.weight"] = host(lora.B);
  }
  // PEFT sets fan_in_fan_out for GPT-2's Conv1D layers; lora_A/lora_B keep the shapes above.
  const json config_json = peft_config_to_json(config, adapted, model.model_type() == "gpt2", base_model_name_or_path);
  write_directory_atomically(dir, [&](const std::string& tmp) {
    write_file_atomically((fs::path(tmp) / "adapter_config.json").string(), config_json.dump(2) + "\n");
    save_safetensors((fs::path(tmp) / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
  });
}

nn::LoraConfig load_peft_adapter(nn::CausalLM& model, const std::string& dir) {
  const std::string config_path = (fs::path(dir) / "adapter_config.json").string();
  const std::string weights_path = (fs::path(dir) / "adapter_model.safetensors").string();
  nn::LoraConfig config = read_peft_config(config_path);
  KOTOBA_CHECK(fs::is_regular_file(weights_path), weights_path,
               ": missing (kotoba reads PEFT adapters saved as safetensors, PEFT's default)");
  SafeTensors file = load_safetensors(weights_path);

  std::vector<std::string> targets;
  try {
    targets = nn::lora_target_names(model, config);
  } catch (const Error& e) {
    throw Error(detail::concat(config_path, ": ", e.what()));
  }
  std::map<std::string, nn::Linear*> linears;
  for (auto& [name, module] : model.named_modules())
    if (auto* linear = dynamic_cast<nn::Linear*>(module)) linears[name] = linear;
  const std::set<std::string> targeted(targets.begin(), targets.end());

  // Every key names lora_A or lora_B of a targeted Linear, with a shape that fits it.
  std::map<std::string, std::pair<Tensor, Tensor>> weights;  // layer -> (A, B)
  for (auto& [key, tensor] : file.tensors) {
    const bool is_a = ends_with(key, ".lora_A.weight"), is_b = ends_with(key, ".lora_B.weight");
    KOTOBA_CHECK(starts_with(key, kPrefix) && (is_a || is_b), weights_path, ": unexpected tensor '", key,
                 "' (expected ", kPrefix, "<module>.lora_A.weight or .lora_B.weight)");
    const std::string layer = key.substr(std::string(kPrefix).size(), key.size() - std::string(kPrefix).size() - 14);
    auto it = linears.find(layer);
    KOTOBA_CHECK(it != linears.end(), weights_path, ": tensor '", key, "' names module '", layer,
                 "', which is not a Linear layer of this ", model.model_type(), " model");
    KOTOBA_CHECK(targeted.count(layer), weights_path, ": tensor '", key, "' adapts '", layer,
                 "', which target_modules ", config.describe_targets(), " in ", config_path, " does not select");
    const nn::Linear& linear = *it->second;
    KOTOBA_CHECK(tensor.ndim() == 2, weights_path, ": tensor '", key, "' has shape ", shape_str(tensor.shape()),
                 "; expected a matrix");
    const int64_t rank = is_a ? tensor.size(0) : tensor.size(1);
    KOTOBA_CHECK(rank == config.r, weights_path, ": tensor '", key, "' has rank ", rank, " (shape ",
                 shape_str(tensor.shape()), ") but ", config_path, " says r = ", config.r);
    const Shape want = is_a ? Shape{config.r, linear.in_features()} : Shape{linear.out_features(), config.r};
    KOTOBA_CHECK(tensor.shape() == want, weights_path, ": tensor '", key, "' has shape ", shape_str(tensor.shape()),
                 ", expected ", shape_str(want), " for layer '", layer, "' (in ", linear.in_features(), ", out ",
                 linear.out_features(), ")");
    (is_a ? weights[layer].first : weights[layer].second) = to_f32(tensor, weights_path + ": " + key);
  }
  for (auto& layer : targets) {
    auto it = weights.find(layer);
    const bool has_a = it != weights.end() && it->second.first.defined();
    const bool has_b = it != weights.end() && it->second.second.defined();
    KOTOBA_CHECK(has_a && has_b, weights_path, ": tensor '", kPrefix, layer, has_a ? ".lora_B" : ".lora_A",
                 ".weight' is missing (target_modules ", config.describe_targets(), " selects layer '", layer, "')");
  }

  nn::apply_lora(model, config, 0);
  NoGradGuard no_grad;
  for (auto& [name, linear] : nn::lora_layers(model)) {
    const auto& [A, B] = weights.at(name);
    Tensor a = linear->lora()->A.detach(), b = linear->lora()->B.detach();
    a.copy_from(A);
    b.copy_from(B);
  }
  return config;
}

}  // namespace kotoba
