// LoRA adapters: PEFT's target-module matching, attaching with PEFT's initialisation, merging
// and the trainable-parameter report.
#include "nn/lora.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <regex>
#include <set>

#include "core/error.h"

namespace kotoba::nn {

double LoraConfig::scaling() const { return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }

std::string LoraConfig::describe_targets() const {
  if (target_regex) return "\"" + *target_regex + "\"";
  std::string out = "[";
  for (size_t i = 0; i < target_modules.size(); ++i) out += (i ? ", \"" : "\"") + target_modules[i] + "\"";
  return out + "]";
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The modules of `model` an adapter could target: everything except adapters' own children.
std::vector<std::pair<std::string, Module*>> candidate_modules(const Module& model) {
  std::set<const Module*> adapter_parts;
  auto all = model.named_modules();
  for (auto& [name, module] : all)
    if (auto* linear = dynamic_cast<Linear*>(module); linear && linear->lora()) {
      adapter_parts.insert(&linear->lora()->a_module);
      adapter_parts.insert(&linear->lora()->b_module);
    }
  std::vector<std::pair<std::string, Module*>> out;
  for (auto& entry : all)
    if (!adapter_parts.count(entry.second)) out.push_back(entry);
  return out;
}

}  // namespace

std::vector<std::string> lora_target_names(const Module& model, const LoraConfig& config) {
  KOTOBA_CHECK(config.r >= 1, "LoRA config: r (rank) is ", config.r, "; expected at least 1");
  KOTOBA_CHECK(config.target_regex || !config.target_modules.empty(),
               "LoRA config: target_modules is empty; name the layers to adapt (e.g. [\"q_proj\", \"v_proj\"] or "
               "\"all-linear\")");
  const bool all_linear = config.target_regex && *config.target_regex == "all-linear";
  std::optional<std::regex> pattern;
  if (config.target_regex && !all_linear) {
    try {
      pattern.emplace(*config.target_regex, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw Error(detail::concat("LoRA config: target_modules \"", *config.target_regex,
                                 "\" is not a valid regular expression (", e.what(), ")"));
    }
  }
  std::vector<std::string> out;
  for (auto& [name, module] : candidate_modules(model)) {
    const bool is_linear = dynamic_cast<Linear*>(module) != nullptr;
    bool hit;
    if (all_linear) {
      // PEFT's all-linear leaves the output head out: an untied LLaMA's lm_head is a Linear
      // (GPT-2's head is tied to wte and is none).
      hit = is_linear && name != "lm_head";
    } else if (pattern) {
      hit = std::regex_match(name, *pattern);
    } else {
      hit = false;
      for (auto& entry : config.target_modules)
        if (name == entry || ends_with(name, "." + entry)) hit = true;
    }
    if (!hit) continue;
    KOTOBA_CHECK(is_linear, "LoRA config: target_modules ", config.describe_targets(), " matches module '", name,
                 "', which is not a Linear layer (LoRA attaches to Linear layers only)");
    out.push_back(name);
  }
  KOTOBA_CHECK(!out.empty(), "LoRA config: target_modules ", config.describe_targets(),
               " matches no module of the model (list entries match a dotted module name or its last parts, "
               "e.g. \"q_proj\"; a string is a regular expression for the whole name)");
  return out;
}

std::vector<std::string> apply_lora(Module& model, const LoraConfig& config, uint64_t seed) {
  KOTOBA_CHECK(config.dropout >= 0 && config.dropout < 1, "LoRA config: lora_dropout ", config.dropout,
               " is not in [0, 1)");
  KOTOBA_CHECK(lora_layers(model).empty(), "apply_lora: the model already holds LoRA adapters");
  std::vector<std::string> names = lora_target_names(model, config);
  std::map<std::string, Module*> modules;
  for (auto& [name, module] : model.named_modules()) modules[name] = module;
  model.set_requires_grad(false);
  Generator gen(seed);
  const float scaling = float(config.scaling());
  for (size_t i = 0; i < names.size(); ++i) {
    auto& linear = dynamic_cast<Linear&>(*modules.at(names[i]));
    const int64_t in = linear.in_features(), out = linear.out_features();
    // kaiming_uniform_(a = sqrt(5)) on (r, in): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / in)
    // = 1 / sqrt(in).
    const float bound = 1.0f / std::sqrt(float(in));
    Tensor A = Tensor::empty({config.r, in});
    float* a = A.data<float>();
    for (int64_t k = 0; k < A.numel(); ++k) a[k] = (2.0f * gen.uniform() - 1.0f) * bound;
    linear.attach_lora(A, Tensor::zeros({out, config.r}), scaling, float(config.dropout), mix64(seed ^ (i + 1)));
  }
  return names;
}

std::vector<std::pair<std::string, Linear*>> lora_layers(const Module& model) {
  std::vector<std::pair<std::string, Linear*>> out;
  for (auto& [name, module] : model.named_modules())
    if (auto* linear = dynamic_cast<Linear*>(module); linear && linear->lora()) out.emplace_back(name, linear);
  return out;
}

void merge_lora(Module& model) {
  for (auto& [name, linear] : lora_layers(model)) linear->merge_lora();
}

void unmerge_lora(Module& model) {
  for (auto& [name, linear] : lora_layers(model)) linear->unmerge_lora();
}

void merge_and_unload(Module& model) {
  for (auto& [name, linear] : lora_layers(model)) {
    linear->merge_lora();
    linear->detach_lora();
  }
}

LoraDisabled::LoraDisabled(const Module& model) {
  for (auto& [name, linear] : lora_layers(model)) {
    if (linear->lora()->disabled) continue;  // already off (a nested guard): left to its owner
    linear->set_lora_enabled(false);
    layers_.push_back(linear);
  }
}

LoraDisabled::~LoraDisabled() {
  for (Linear* linear : layers_) linear->set_lora_enabled(true);
}

namespace {
std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}
}  // namespace

std::string trainable_parameters_report(const Module& model) {
  std::set<const TensorImpl*> seen;
  int64_t all = 0, trainable = 0;
  for (auto& [name, p] : model.named_parameters()) {
    if (!seen.insert(&p.impl()).second) continue;
    all += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  char percent[32];
  std::snprintf(percent, sizeof percent, "%.4f", all > 0 ? 100.0 * double(trainable) / double(all) : 0.0);
  return "trainable params: " + with_commas(trainable) + " || all params: " + with_commas(all) +
         " || trainable%: " + percent;
}

}  // namespace kotoba::nn
