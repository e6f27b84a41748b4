// Model directories: HF GPT-2 config keys and weight layout in and out, written atomically.
// Conv1D weights are transposed here because HF stores them (in, out) and kotoba (out, in).
#include "io/model_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace kotoba {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string json_type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// Typed access to one key of a JSON object; errors name the file, the key and the expected type.
const json* find_key(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

int64_t require_int(const json& obj, const std::string& key, const std::string& file) {
  const json* v = find_key(obj, key);
  KOTOBA_CHECK(v, file, ": key '", key, "' is missing (an integer is required)");
  KOTOBA_CHECK(v->is_number_integer() || v->is_number_unsigned(), file, ": key '", key, "' must be an integer, got ",
               json_type_name(*v), " ", v->dump());
  return v->get<int64_t>();
}

int64_t optional_int(const json& obj, const std::string& key, const std::string& file, int64_t fallback) {
  return find_key(obj, key) ? require_int(obj, key, file) : fallback;
}

double optional_number(const json& obj, const std::string& key, const std::string& file, double fallback) {
  const json* v = find_key(obj, key);
  if (!v) return fallback;
  KOTOBA_CHECK(v->is_number(), file, ": key '", key, "' must be a number, got ", json_type_name(*v), " ", v->dump());
  return v->get<double>();
}

bool optional_bool(const json& obj, const std::string& key, const std::string& file, bool fallback) {
  const json* v = find_key(obj, key);
  if (!v) return fallback;
  KOTOBA_CHECK(v->is_boolean(), file, ": key '", key, "' must be a boolean, got ", json_type_name(*v), " ", v->dump());
  return v->get<bool>();
}

std::optional<int64_t> optional_id(const json& obj, const std::string& key, const std::string& file) {
  const json* v = find_key(obj, key);
  if (!v || v->is_null()) return std::nullopt;
  // HF allows a list of ids for eos_token_id; kotoba uses the first.
  if (v->is_array() && !v->empty()) {
    KOTOBA_CHECK((*v)[0].is_number_integer(), file, ": key '", key, "' must be an integer or a list of integers");
    return (*v)[0].get<int64_t>();
  }
  return require_int(obj, key, file);
}

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, path, ": cannot open (", std::strerror(errno), ")");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    json j = json::parse(buffer.str());
    KOTOBA_CHECK(j.is_object(), path, ": expected a JSON object at the top level");
    return j;
  } catch (const json::parse_error& e) {
    throw Error(detail::concat(path, ": invalid JSON: ", e.what()));
  }
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_text_file(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    KOTOBA_CHECK(out, path, ": cannot create (", std::strerror(errno), ")");
    out << text;
    out.flush();
    KOTOBA_CHECK(out, path, ": write failed (", std::strerror(errno), ")");
  }
  fsync_path(path, false);
}

bool is_conv1d_weight(const std::string& name) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends_with(".attn.c_attn.weight") || ends_with(".attn.c_proj.weight") || ends_with(".mlp.c_fc.weight") ||
         ends_with(".mlp.c_proj.weight");
}

// Buffers older transformers versions persisted (the causal mask): no parameters, skipped.
bool is_hf_buffer(const std::string& name) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends_with(".attn.bias") || ends_with(".attn.masked_bias");
}

// A float written to JSON as the short decimal it was given as (1e-5, not 9.999999747378752e-06).
double json_float(float value) {
  char text[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, double(value));
    if (std::strtof(text, nullptr) == value) break;
  }
  return std::strtod(text, nullptr);
}

std::string temp_sibling(const fs::path& dir) {
  fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  return (parent / ("." + dir.filename().string() + ".tmp-" + std::to_string(::getpid()))).string();
}

}  // namespace

// ---- config.json ----

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
              {"resid_pdrop", json_float(c.dropout)},
              {"embd_pdrop", json_float(c.dropout)},
              {"attn_pdrop", 0.0},  // kotoba has no dropout on attention probabilities
              {"layer_norm_epsilon", json_float(c.layer_norm_epsilon)},
              {"initializer_range", json_float(c.initializer_range)},
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
  const json* type = find_key(j, "model_type");
  KOTOBA_CHECK(type, file, ": key 'model_type' is missing (expected \"gpt2\")");
  KOTOBA_CHECK(type->is_string(), file, ": key 'model_type' must be a string, got ", json_type_name(*type));
  KOTOBA_CHECK(type->get<std::string>() == "gpt2", file, ": model_type is \"", type->get<std::string>(),
               "\"; only \"gpt2\" models are supported here");
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
  if (const json* seed = find_key(j, "kotoba_seed"))
    KOTOBA_CHECK(seed->is_number_unsigned() || seed->is_number_integer(), file,
                 ": key 'kotoba_seed' must be an integer, got ", json_type_name(*seed));
  c.seed = uint64_t(optional_int(j, "kotoba_seed", file, int64_t(c.seed)));
  // Variants of the HF GPT-2 architecture kotoba does not build: refuse rather than mis-load.
  if (const json* inner = find_key(j, "n_inner"); inner && !inner->is_null()) {
    int64_t n_inner = require_int(j, "n_inner", file);
    KOTOBA_CHECK(n_inner == 4 * c.n_embd, file, ": n_inner = ", n_inner, " is not supported (kotoba's MLP is 4 * n_embd = ",
                 4 * c.n_embd, ")");
  }
  if (const json* act = find_key(j, "activation_function")) {
    KOTOBA_CHECK(act->is_string(), file, ": key 'activation_function' must be a string, got ", json_type_name(*act));
    std::string a = act->get<std::string>();
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

json generation_config_to_json(const GenerationConfig& g) {
  json j{{"do_sample", g.do_sample},       {"temperature", json_float(g.temperature)},
         {"top_k", g.top_k},               {"top_p", json_float(g.top_p)},
         {"repetition_penalty", json_float(g.repetition_penalty)}, {"max_new_tokens", g.max_new_tokens},
         {"_from_model_config", false}};
  if (g.bos_token_id) j["bos_token_id"] = *g.bos_token_id;
  if (g.eos_token_id) j["eos_token_id"] = *g.eos_token_id;
  if (g.pad_token_id) j["pad_token_id"] = *g.pad_token_id;
  return j;
}

GenerationConfig generation_config_from_json(const json& j, const std::string& file) {
  GenerationConfig g;
  g.bos_token_id = optional_id(j, "bos_token_id", file);
  g.eos_token_id = optional_id(j, "eos_token_id", file);
  g.pad_token_id = optional_id(j, "pad_token_id", file);
  g.do_sample = optional_bool(j, "do_sample", file, g.do_sample);
  g.temperature = float(optional_number(j, "temperature", file, g.temperature));
  g.top_k = optional_int(j, "top_k", file, g.top_k);
  g.top_p = float(optional_number(j, "top_p", file, g.top_p));
  g.repetition_penalty = float(optional_number(j, "repetition_penalty", file, g.repetition_penalty));
  g.max_new_tokens = optional_int(j, "max_new_tokens", file, g.max_new_tokens);
  return g;
}

// ---- weights ----

std::map<std::string, Tensor> gpt2_to_hf_tensors(const nn::GPT2& model) {
  std::map<std::string, Tensor> out;
  for (auto& [name, p] : model.named_parameters()) {
    Tensor t = p.detach();
    out[name] = is_conv1d_weight(name) ? t.transpose_view(0, 1).contiguous() : t;
  }
  return out;
}

void load_gpt2_hf_tensors(nn::GPT2& model, const std::map<std::string, Tensor>& tensors, const std::string& file) {
  auto named = model.named_parameters();
  std::map<std::string, bool> expected;
  for (auto& [name, p] : named) expected[name] = true;
  for (auto& [name, t] : tensors) {
    if (expected.count(name) || is_hf_buffer(name) || name == "lm_head.weight") continue;
    throw Error(detail::concat(file, ": unexpected tensor '", name, "' (not a parameter of GPT-2 with ",
                               model.config().n_layer, " layers as config.json describes)"));
  }
  NoGradGuard no_grad;
  for (auto& [name, p] : named) {
    auto it = tensors.find(name);
    KOTOBA_CHECK(it != tensors.end(), file, ": tensor '", name, "' is missing");
    const Tensor& src = it->second;
    bool conv = is_conv1d_weight(name);
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
  if (auto it = tensors.find("lm_head.weight"); it != tensors.end()) {
    const Tensor& head = it->second;
    KOTOBA_CHECK(head.shape() == model.wte.weight.shape(), file, ": tensor 'lm_head.weight' has shape ",
                 shape_str(head.shape()), ", expected ", shape_str(model.wte.weight.shape()));
    std::vector<float> a = head.to_vector(), b = model.wte.weight.to_vector();
    for (size_t i = 0; i < a.size(); ++i)
      KOTOBA_CHECK(a[i] == b[i], file, ": 'lm_head.weight' differs from 'transformer.wte.weight' (element ", i,
                   "); kotoba's GPT-2 needs the LM head tied to the embeddings");
  }
}

// ---- tokenizer.json ----

int64_t tokenizer_json_vocab_size(const std::string& path) {
  json j = read_json_file(path);
  int64_t max_id = -1;
  auto model = j.find("model");
  KOTOBA_CHECK(model != j.end() && model->is_object(), path, ": key 'model' is missing or not an object");
  auto vocab = model->find("vocab");
  KOTOBA_CHECK(vocab != model->end() && vocab->is_object(), path, ": key 'model.vocab' is missing or not an object");
  for (auto& [token, id] : vocab->items()) {
    KOTOBA_CHECK(id.is_number_integer(), path, ": model.vocab['", token, "'] must be an integer id");
    max_id = std::max(max_id, id.get<int64_t>());
  }
  if (auto added = j.find("added_tokens"); added != j.end() && added->is_array()) {
    for (auto& t : *added) {
      KOTOBA_CHECK(t.is_object() && t.contains("id") && t["id"].is_number_integer(), path,
                   ": every entry of 'added_tokens' needs an integer 'id'");
      max_id = std::max(max_id, t["id"].get<int64_t>());
    }
  }
  return max_id + 1;
}

// ---- the directory ----

void replace_directory(const std::string& from, const std::string& to) {
  fs::path parent = fs::path(to).parent_path().empty() ? fs::path(".") : fs::path(to).parent_path();
  std::error_code ec;
  if (!fs::exists(to)) {
    fs::rename(from, to, ec);
    KOTOBA_CHECK(!ec, to, ": cannot move the new directory into place (", ec.message(), ")");
  } else if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(from, ec);  // now holds the old contents
  } else {
    // No atomic exchange on this filesystem: move the old one aside, the new one in, then drop the old.
    std::string aside = to + ".old";
    fs::remove_all(aside, ec);
    fs::rename(to, aside, ec);
    KOTOBA_CHECK(!ec, to, ": cannot move the old directory aside (", ec.message(), ")");
    fs::rename(from, to, ec);
    KOTOBA_CHECK(!ec, to, ": cannot move the new directory into place (", ec.message(), "); the previous one is in ",
                 aside);
    fs::remove_all(aside, ec);
  }
  fsync_path(parent.string(), true);
}

namespace {

void write_model_files(const std::string& tmp, const nn::GPT2& model, const GenerationConfig& generation) {
  save_safetensors((fs::path(tmp) / "model.safetensors").string(), gpt2_to_hf_tensors(model), {{"format", "pt"}});
  json config = gpt2_config_to_json(model.config());
  if (generation.bos_token_id) config["bos_token_id"] = *generation.bos_token_id;
  if (generation.eos_token_id) config["eos_token_id"] = *generation.eos_token_id;
  write_text_file((fs::path(tmp) / "config.json").string(), config.dump(2) + "\n");
  write_text_file((fs::path(tmp) / "generation_config.json").string(),
                  generation_config_to_json(generation).dump(2) + "\n");
}

template <typename WriteTokenizer>
void save_dir_with(const std::string& dir, const nn::GPT2& model, const GenerationConfig& generation,
                   WriteTokenizer write_tokenizer) {
  KOTOBA_CHECK(!dir.empty(), "save_model_dir: the directory path is empty");
  fs::path target = fs::absolute(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  KOTOBA_CHECK(!fs::exists(target) || fs::is_directory(target), target.string(), ": exists and is not a directory");
  fs::create_directories(target.parent_path());
  std::string tmp = temp_sibling(target);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    std::string tok_path = (fs::path(tmp) / "tokenizer.json").string();
    write_tokenizer(tok_path);
    int64_t tokens = tokenizer_json_vocab_size(tok_path);
    KOTOBA_CHECK(tokens == model.config().vocab_size, "tokenizer.json has ", tokens,
                 " tokens but the model's vocab_size (config.json) is ", model.config().vocab_size);
    write_model_files(tmp, model, generation);
    fsync_path(tmp, true);
    replace_directory(tmp, target.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace

void save_model_dir(const std::string& dir, const nn::GPT2& model, const std::string& tokenizer_json_path,
                    const GenerationConfig& generation) {
  KOTOBA_CHECK(fs::is_regular_file(tokenizer_json_path), "save_model_dir: tokenizer file '", tokenizer_json_path,
               "' does not exist");
  save_dir_with(dir, model, generation, [&](const std::string& dest) {
    fs::copy_file(tokenizer_json_path, dest, fs::copy_options::overwrite_existing);
    fsync_path(dest, false);
  });
}

void save_model_dir(const std::string& dir, const nn::GPT2& model, const tokenizer::Tokenizer& tokenizer,
                    const GenerationConfig& generation) {
  save_dir_with(dir, model, generation, [&](const std::string& dest) { tokenizer.save(dest); });
}

LoadedModel load_model_dir(const std::string& dir) {
  KOTOBA_CHECK(fs::is_directory(dir), dir, ": not a model directory (expected config.json, model.safetensors, "
               "tokenizer.json)");
  fs::path d(dir);
  std::string config_path = (d / "config.json").string(), weights_path = (d / "model.safetensors").string(),
              tok_path = (d / "tokenizer.json").string(), gen_path = (d / "generation_config.json").string();
  for (const std::string& f : {config_path, weights_path, tok_path})
    KOTOBA_CHECK(fs::is_regular_file(f), f, ": missing from the model directory");
  LoadedModel out;
  out.dir = dir;
  out.tokenizer_path = tok_path;
  out.config = read_gpt2_config(config_path);
  int64_t tokens = tokenizer_json_vocab_size(tok_path);
  KOTOBA_CHECK(tokens == out.config.vocab_size, tok_path, " has ", tokens, " tokens but ", config_path,
               " vocab_size is ", out.config.vocab_size);
  if (fs::is_regular_file(gen_path)) out.generation = generation_config_from_json(read_json_file(gen_path), gen_path);
  SafeTensors weights = load_safetensors(weights_path);
  out.model = std::make_unique<nn::GPT2>(out.config);
  load_gpt2_hf_tensors(*out.model, weights.tensors, weights_path);
  return out;
}

}  // namespace kotoba
