// config.json keys and checkpoint layouts of the HF architectures kotoba builds.
#include "io/hf_config.h"

#include <algorithm>
#include <cmath>

#include "io/json_util.h"

namespace kotoba {

using nlohmann::json;
using namespace json_util;

namespace {

bool ends_with(const std::string& name, const std::string& suffix) {
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// GPT-2's Conv1D weights, stored (in, out) by HF.
bool is_conv1d_weight(const std::string& name) {
  return ends_with(name, ".attn.c_attn.weight") || ends_with(name, ".attn.c_proj.weight") ||
         ends_with(name, ".mlp.c_fc.weight") || ends_with(name, ".mlp.c_proj.weight");
}

// Buffers older transformers versions persisted (GPT-2's causal mask, LLaMA's rotary
// frequencies): not parameters, skipped.
bool is_hf_buffer(const std::string& name) {
  return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") || ends_with(name, ".rotary_emb.inv_freq");
}

std::string model_type_of(const json& j, const std::string& file) {
  const json* type = find_key(j, "model_type");
  KOTOBA_CHECK(type, file, ": key 'model_type' is missing (expected one of \"gpt2\", \"llama\", \"mistral\", \"qwen2\")");
  KOTOBA_CHECK(type->is_string(), file, ": key 'model_type' must be a string, got ", type_name(*type));
  return type->get<std::string>();
}

}  // namespace

// ---- GPT-2 ----

json gpt2_config_to_json(const nn::GPT2Config& c) {
  return json{{"architectures", {"GPT2LMHeadModel"}},
              {"model_type", "gpt2"},
              {"vocab_size", c.vocab_size},
              {"n_positions", c.n_positions},
              {"n_ctx", c.n_positions},
              {"n_embd", c.n_embd},
              {"n_layer", c.n_layer},
              {"n_head", c.n_head},
              {"n_inner", nullptr},
              {"activation_function", "gelu_new"},
              {"resid_pdrop", short_float(c.dropout)},
              {"embd_pdrop", short_float(c.dropout)},
              {"attn_pdrop", 0.0},  // kotoba has no dropout on attention probabilities
              {"layer_norm_epsilon", short_float(c.layer_norm_epsilon)},
              {"initializer_range", short_float(c.initializer_range)},
              {"scale_attn_weights", true},
              {"scale_attn_by_inverse_layer_idx", false},
              {"reorder_and_upcast_attn", false},
              {"tie_word_embeddings", true},
              {"use_cache", true},
              {"torch_dtype", "float32"},
              {"kotoba_seed", c.seed}};
}

nn::GPT2Config gpt2_config_from_json(const json& j, const std::string& file) {
  KOTOBA_CHECK(j.is_object(), file, ": expected a JSON object");
  const std::string type = model_type_of(j, file);
  KOTOBA_CHECK(type == "gpt2", file, ": model_type is \"", type, "\", expected \"gpt2\"");
  nn::GPT2Config c;
  c.vocab_size = require_int(j, "vocab_size", file);
  c.n_positions = require_int(j, "n_positions", file);
  c.n_embd = require_int(j, "n_embd", file);
  c.n_layer = require_int(j, "n_layer", file);
  c.n_head = require_int(j, "n_head", file);
  for (auto [key, value] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                            {"n_positions", c.n_positions}, {"n_embd", c.n_embd}, {"n_layer", c.n_layer},
                            {"n_head", c.n_head}})
    KOTOBA_CHECK(value > 0, file, ": key '", key, "' must be positive, got ", value);
  KOTOBA_CHECK(c.n_embd % c.n_head == 0, file, ": n_embd (", c.n_embd, ") must be divisible by n_head (", c.n_head,
               ")");
  c.layer_norm_epsilon = float(optional_number(j, "layer_norm_epsilon", file, 1e-5));
  c.initializer_range = float(optional_number(j, "initializer_range", file, 0.02));
  c.dropout = float(optional_number(j, "resid_pdrop", file, 0.1));  // HF's default when absent
  KOTOBA_CHECK(c.dropout >= 0 && c.dropout < 1, file, ": key 'resid_pdrop' must be in [0, 1), got ", c.dropout);
  c.seed = optional_u64(j, "kotoba_seed", file, c.seed);
  // Variants of the HF GPT-2 architecture kotoba does not build: refuse rather than mis-load.
  if (const json* inner = find_key(j, "n_inner"); inner && !inner->is_null()) {
    int64_t n_inner = require_int(j, "n_inner", file);
    KOTOBA_CHECK(n_inner == 4 * c.n_embd, file, ": n_inner = ", n_inner,
                 " is not supported (kotoba's MLP is 4 * n_embd = ", 4 * c.n_embd, ")");
  }
  if (find_key(j, "activation_function")) {
    std::string a = require_string(j, "activation_function", file);
    KOTOBA_CHECK(a == "gelu_new" || a == "gelu_pytorch_tanh", file, ": activation_function \"", a,
                 "\" is not supported (kotoba's GPT-2 uses the tanh GELU, \"gelu_new\")");
  }
  KOTOBA_CHECK(optional_bool(j, "tie_word_embeddings", file, true), file,
               ": tie_word_embeddings = false is not supported (kotoba's GPT-2 ties the LM head to wte)");
  KOTOBA_CHECK(optional_bool(j, "scale_attn_weights", file, true), file,
               ": scale_attn_weights = false is not supported");
  KOTOBA_CHECK(!optional_bool(j, "scale_attn_by_inverse_layer_idx", file, false), file,
               ": scale_attn_by_inverse_layer_idx = true is not supported");
  return c;
}

nn::GPT2Config read_gpt2_config(const std::string& path) { return gpt2_config_from_json(read_json_file(path), path); }

// ---- the LLaMA family ----

namespace {
const char* architecture_name(const std::string& model_type) {
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  return "LlamaForCausalLM";
}
}  // namespace

json llama_config_to_json(const nn::LlamaConfig& c) {
  const std::string& type = c.model_type;
  KOTOBA_CHECK(type == "llama" || type == "mistral" || type == "qwen2", "LlamaConfig: model_type \"", type,
               "\" is not one of llama, mistral, qwen2");
  json j{{"architectures", {architecture_name(type)}},
         {"model_type", type},
         {"vocab_size", c.vocab_size},
         {"hidden_size", c.hidden_size},
         {"intermediate_size", c.intermediate_size},
         {"num_hidden_layers", c.num_hidden_layers},
         {"num_attention_heads", c.num_attention_heads},
         {"num_key_value_heads", c.num_key_value_heads},
         {"max_position_embeddings", c.max_position_embeddings},
         {"hidden_act", "silu"},
         {"rms_norm_eps", short_float(c.rms_norm_eps)},
         {"rope_theta", c.rope_theta},
         {"tie_word_embeddings", c.tie_word_embeddings},
         {"attention_dropout", 0.0},
         {"initializer_range", short_float(c.initializer_range)},
         {"use_cache", true},
         {"torch_dtype", "float32"},
         {"kotoba_seed", c.seed}};
  if (c.rope_scaling.type == nn::RopeScaling::Type::linear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
  } else if (c.rope_scaling.type == nn::RopeScaling::Type::llama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (type == "qwen2") {
    KOTOBA_CHECK(c.qkv_bias && !c.attention_bias && !c.mlp_bias, "LlamaConfig: a qwen2 model has biases on q/k/v only");
    KOTOBA_CHECK(c.hidden_size == c.num_attention_heads * c.resolved_head_dim(),
                 "LlamaConfig: a qwen2 model's head_dim is hidden_size / num_attention_heads");
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    j["max_window_layers"] = c.sliding_window > 0 ? c.sliding_window_from_layer : c.num_hidden_layers;
  } else {
    KOTOBA_CHECK(!c.qkv_bias, "LlamaConfig: biases on q/k/v without o (qkv_bias) exist only in model_type qwen2");
    j["head_dim"] = c.resolved_head_dim();
    if (type == "llama") {
      KOTOBA_CHECK(c.sliding_window == 0, "LlamaConfig: a sliding window needs model_type mistral or qwen2");
      j["attention_bias"] = c.attention_bias;
      j["mlp_bias"] = c.mlp_bias;
      j["pretraining_tp"] = 1;
    } else {
      KOTOBA_CHECK(!c.attention_bias && !c.mlp_bias, "LlamaConfig: a mistral model has no biases");
      j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    }
  }
  return j;
}

nn::LlamaConfig llama_config_from_json(const json& j, const std::string& file) {
  KOTOBA_CHECK(j.is_object(), file, ": expected a JSON object");
  nn::LlamaConfig c;
  c.model_type = model_type_of(j, file);
  KOTOBA_CHECK(c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2", file,
               ": model_type is \"", c.model_type, "\", expected \"llama\", \"mistral\" or \"qwen2\"");
  const bool qwen2 = c.model_type == "qwen2", mistral = c.model_type == "mistral";
  c.vocab_size = require_int(j, "vocab_size", file);
  c.hidden_size = require_int(j, "hidden_size", file);
  c.intermediate_size = require_int(j, "intermediate_size", file);
  c.num_hidden_layers = require_int(j, "num_hidden_layers", file);
  c.num_attention_heads = require_int(j, "num_attention_heads", file);
  c.num_key_value_heads = optional_int(j, "num_key_value_heads", file, c.num_attention_heads);
  c.head_dim = qwen2 ? 0 : optional_int(j, "head_dim", file, 0);
  // transformers' defaults per model type when a key is absent
  c.max_position_embeddings =
      optional_int(j, "max_position_embeddings", file, qwen2 ? 32768 : mistral ? 4096 * 32 : 2048);
  c.rms_norm_eps = float(optional_number(j, "rms_norm_eps", file, 1e-6));
  c.rope_theta = optional_number(j, "rope_theta", file, 10000.0);
  c.initializer_range = float(optional_number(j, "initializer_range", file, 0.02));
  c.tie_word_embeddings = optional_bool(j, "tie_word_embeddings", file, false);
  c.seed = optional_u64(j, "kotoba_seed", file, c.seed);
  const std::string act = optional_string(j, "hidden_act", file, "silu");
  KOTOBA_CHECK(act == "silu", file, ": hidden_act \"", act, "\" is not supported (the LLaMA family's MLP is SwiGLU, \"silu\")");

  if (qwen2) {
    c.qkv_bias = true;
    if (optional_bool(j, "use_sliding_window", file, false)) {
      c.sliding_window = optional_int(j, "sliding_window", file, 4096);
      c.sliding_window_from_layer = optional_int(j, "max_window_layers", file, 28);
      KOTOBA_CHECK(c.sliding_window > 0, file, ": sliding_window must be positive when use_sliding_window is true");
    }
  } else if (mistral) {
    c.sliding_window = optional_int(j, "sliding_window", file, 0);  // null: none
  } else {
    c.attention_bias = optional_bool(j, "attention_bias", file, false);
    c.mlp_bias = optional_bool(j, "mlp_bias", file, false);
  }

  if (const json* scaling = find_key(j, "rope_scaling"); scaling && !scaling->is_null()) {
    KOTOBA_CHECK(scaling->is_object(), file, ": key 'rope_scaling' must be an object or null, got ", type_name(*scaling));
    const std::string key = find_key(*scaling, "rope_type") ? "rope_type" : "type";  // "type" is HF's older name
    const std::string kind = require_string(*scaling, key, file + " rope_scaling");
    auto& s = c.rope_scaling;
    if (kind == "default") {
      s.type = nn::RopeScaling::Type::none;
    } else if (kind == "linear") {
      s.type = nn::RopeScaling::Type::linear;
      s.factor = require_number(*scaling, "factor", file + " rope_scaling");
    } else if (kind == "llama3") {
      s.type = nn::RopeScaling::Type::llama3;
      s.factor = require_number(*scaling, "factor", file + " rope_scaling");
      s.low_freq_factor = require_number(*scaling, "low_freq_factor", file + " rope_scaling");
      s.high_freq_factor = require_number(*scaling, "high_freq_factor", file + " rope_scaling");
      s.original_max_position_embeddings =
          require_int(*scaling, "original_max_position_embeddings", file + " rope_scaling");
    } else {
      throw Error(detail::concat(file, ": rope_scaling type \"", kind,
                                 "\" is not supported (kotoba implements \"linear\" and \"llama3\")"));
    }
  }
  c.check(file);
  return c;
}

// ---- any architecture ----

bool is_supported_model_type(const std::string& t) {
  return t == "gpt2" || t == "llama" || t == "mistral" || t == "qwen2";
}

std::unique_ptr<nn::CausalLM> build_model(const json& j, const std::string& file) {
  KOTOBA_CHECK(j.is_object(), file, ": expected a JSON object");
  const std::string type = model_type_of(j, file);
  if (type == "gpt2") return std::make_unique<nn::GPT2>(gpt2_config_from_json(j, file));
  if (type == "llama" || type == "mistral" || type == "qwen2")
    return std::make_unique<nn::Llama>(llama_config_from_json(j, file));
  throw Error(detail::concat(file, ": model_type \"", type,
                             "\" is not supported (kotoba builds \"gpt2\", \"llama\", \"mistral\" and \"qwen2\")"));
}

json model_config_to_json(const nn::CausalLM& model) {
  if (auto* gpt2 = dynamic_cast<const nn::GPT2*>(&model)) return gpt2_config_to_json(gpt2->config());
  if (auto* llama = dynamic_cast<const nn::Llama*>(&model)) return llama_config_to_json(llama->config());
  throw Error(detail::concat("config.json: no HF config for model type ", model.model_type()));
}

namespace {
// The embedding matrix a tied LM head shares (HF name), or "" when the head is untied.
std::string tied_embedding_name(const nn::CausalLM& model) {
  if (model.model_type() == "gpt2") return "transformer.wte.weight";
  if (auto* llama = dynamic_cast<const nn::Llama*>(&model); llama && llama->config().tie_word_embeddings)
    return "model.embed_tokens.weight";
  return "";
}
}  // namespace

std::map<std::string, Tensor> model_to_hf_tensors(const nn::CausalLM& model) {
  const bool gpt2 = model.model_type() == "gpt2";
  std::map<std::string, Tensor> out;
  for (auto& [name, p] : model.named_parameters()) {
    Tensor t = p.detach();
    if (t.device() != Device::cpu) t = to_device(t, Device::cpu);
    out[name] = gpt2 && is_conv1d_weight(name) ? t.transpose_view(0, 1).contiguous() : t;
  }
  return out;
}

void load_hf_tensors(nn::CausalLM& model, const std::map<std::string, Tensor>& tensors, const std::string& file) {
  const bool gpt2 = model.model_type() == "gpt2";
  const std::string tied = tied_embedding_name(model);
  auto named = model.named_parameters();
  std::map<std::string, Tensor> params(named.begin(), named.end());
  for (auto& [name, t] : tensors) {
    if (params.count(name) || is_hf_buffer(name) || (!tied.empty() && name == "lm_head.weight")) continue;
    throw Error(detail::concat(file, ": unexpected tensor '", name, "' (not a parameter of the ", model.model_type(),
                               " model config.json describes)"));
  }
  NoGradGuard no_grad;
  for (auto& [name, p] : named) {
    auto it = tensors.find(name);
    KOTOBA_CHECK(it != tensors.end(), file, ": tensor '", name, "' is missing");
    const Tensor& src = it->second;
    const bool conv = gpt2 && is_conv1d_weight(name);
    Shape want = p.shape();
    if (conv) std::swap(want[0], want[1]);
    KOTOBA_CHECK(src.shape() == want, file, ": tensor '", name, "' has shape ", shape_str(src.shape()), ", expected ",
                 shape_str(want), conv ? " (HF Conv1D layout: in, out)" : "", " for the config.json dimensions");
    KOTOBA_CHECK(src.dtype() == DType::f32 || src.dtype() == DType::bf16 || src.dtype() == DType::f16 ||
                     src.dtype() == DType::f64,
                 file, ": tensor '", name, "' has dtype ", dtype_name(src.dtype()), "; expected a float type");
    Tensor dst = p.detach();
    dst.copy_from(conv ? src.transpose_view(0, 1) : src);
  }
  if (auto it = tensors.find("lm_head.weight"); it != tensors.end() && !tied.empty()) {
    const Tensor& head = it->second;
    const Tensor& embedding = params.at(tied);
    KOTOBA_CHECK(head.shape() == embedding.shape(), file, ": tensor 'lm_head.weight' has shape ",
                 shape_str(head.shape()), ", expected ", shape_str(embedding.shape()));
    Tensor head_f32 = Tensor::empty(head.shape());
    head_f32.copy_from(head);
    std::vector<float> a = head_f32.to_vector(), b = embedding.to_vector();
    for (size_t i = 0; i < a.size(); ++i)
      KOTOBA_CHECK(a[i] == b[i], file, ": 'lm_head.weight' differs from '", tied, "' (element ", i,
                   ") but config.json ties them (tie_word_embeddings)");
  }
}

}  // namespace kotoba
