// HF model directory <-> GGUF: the name/layout maps per architecture, the hyperparameter keys and
// the tokenizer metadata llama.cpp reads, and their inverses for import.
#include "io/gguf_convert.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "io/hf_config.h"
#include "io/json_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer_config.h"

namespace kotoba {

namespace fs = std::filesystem;
using nlohmann::json;
using Metadata = std::vector<std::pair<std::string, GGUFValue>>;

namespace {

// llama.cpp's llama_token_type values (tokenizer.ggml.token_type).
constexpr int32_t kTokenNormal = 1, kTokenControl = 3, kTokenUserDefined = 4, kTokenUnused = 5;

// The Split regexes llama.cpp knows by a tokenizer.ggml.pre name are tokenizer/pretokenize.h's
// (plain GPT-2 is ByteLevel's built-in regex, named "gpt-2").

// LLaMA's q/k rows: HF orders each head's rotary pairs as (i, i + D/2) ("rotate_half"), llama.cpp's
// llama rope as adjacent (2i, 2i + 1). Export moves HF row h*D + half*D/2 + j to h*D + 2j + half;
// import moves it back. Works for biases (one column).
Tensor permute_rope_rows(const Tensor& w, int64_t n_heads, bool to_gguf) {
  Tensor src = to_f32(w).contiguous();
  const int64_t rows = src.size(0), cols = src.numel() / rows, D = rows / n_heads;
  KOTOBA_CHECK(rows % n_heads == 0 && D % 2 == 0, "rotary rows ", rows, " do not split into ", n_heads,
               " heads of even size");
  Tensor out = Tensor::empty(src.shape());
  const float* s = src.data<float>();
  float* o = out.data<float>();
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t half = 0; half < 2; ++half)
      for (int64_t j = 0; j < D / 2; ++j) {
        int64_t hf_row = h * D + half * (D / 2) + j, gguf_row = h * D + 2 * j + half;
        int64_t from = to_gguf ? hf_row : gguf_row, to = to_gguf ? gguf_row : hf_row;
        std::memcpy(o + to * cols, s + from * cols, size_t(cols) * 4);
      }
  return out;
}

Tensor transposed(const Tensor& w) { return to_f32(w).transpose_view(0, 1).contiguous(); }

// One tensor's place in both worlds: HF name <-> GGUF name and the layout change between them.
enum class Layout { same, transpose, rope_q, rope_k };
struct TensorMapping {
  std::string hf, gguf;
  Layout layout = Layout::same;
};

// The map for a model's tensors, given the HF names present.
std::vector<TensorMapping> tensor_map(const std::string& arch, int64_t n_layer, const std::set<std::string>& hf_names) {
  std::vector<TensorMapping> map;
  auto add = [&](const std::string& hf, const std::string& gguf, Layout layout = Layout::same) {
    if (hf_names.count(hf)) map.push_back({hf, gguf, layout});
  };
  if (arch == "gpt2") {
    add("transformer.wte.weight", "token_embd.weight");
    add("transformer.wpe.weight", "position_embd.weight");
    for (int64_t i = 0; i < n_layer; ++i) {
      std::string h = "transformer.h." + std::to_string(i) + ".", b = "blk." + std::to_string(i) + ".";
      for (const char* p : {"weight", "bias"}) {
        std::string s = p;
        add(h + "ln_1." + s, b + "attn_norm." + s);
        add(h + "attn.c_attn." + s, b + "attn_qkv." + s, s == "weight" ? Layout::transpose : Layout::same);
        add(h + "attn.c_proj." + s, b + "attn_output." + s, s == "weight" ? Layout::transpose : Layout::same);
        add(h + "ln_2." + s, b + "ffn_norm." + s);
        add(h + "mlp.c_fc." + s, b + "ffn_up." + s, s == "weight" ? Layout::transpose : Layout::same);
        add(h + "mlp.c_proj." + s, b + "ffn_down." + s, s == "weight" ? Layout::transpose : Layout::same);
      }
    }
    add("transformer.ln_f.weight", "output_norm.weight");
    add("transformer.ln_f.bias", "output_norm.bias");
    return map;
  }
  // llama.cpp runs qwen2 with NeoX-style rope, which pairs rows as HF does: no permutation.
  const bool permute = arch == "llama";
  add("model.embed_tokens.weight", "token_embd.weight");
  for (int64_t i = 0; i < n_layer; ++i) {
    std::string h = "model.layers." + std::to_string(i) + ".", b = "blk." + std::to_string(i) + ".";
    add(h + "input_layernorm.weight", b + "attn_norm.weight");
    for (const char* p : {"weight", "bias"}) {
      std::string s = p;
      add(h + "self_attn.q_proj." + s, b + "attn_q." + s, permute ? Layout::rope_q : Layout::same);
      add(h + "self_attn.k_proj." + s, b + "attn_k." + s, permute ? Layout::rope_k : Layout::same);
      add(h + "self_attn.v_proj." + s, b + "attn_v." + s);
      add(h + "self_attn.o_proj." + s, b + "attn_output." + s);
      add(h + "mlp.gate_proj." + s, b + "ffn_gate." + s);
      add(h + "mlp.up_proj." + s, b + "ffn_up." + s);
      add(h + "mlp.down_proj." + s, b + "ffn_down." + s);
    }
    add(h + "post_attention_layernorm.weight", b + "ffn_norm.weight");
  }
  add("model.norm.weight", "output_norm.weight");
  add("lm_head.weight", "output.weight");
  return map;
}

Tensor apply_layout(const Tensor& t, Layout layout, int64_t n_head, int64_t n_kv_head, bool to_gguf) {
  switch (layout) {
    case Layout::same: return to_f32(t);
    case Layout::transpose: return transposed(t);
    case Layout::rope_q: return permute_rope_rows(t, n_head, to_gguf);
    case Layout::rope_k: return permute_rope_rows(t, n_kv_head, to_gguf);
  }
  return t;
}

// ---- tokenizer.json -> tokenizer.ggml.* ----

std::string merge_string(const json& merge, const std::string& file) {
  if (merge.is_string()) return merge.get<std::string>();
  KOTOBA_CHECK(merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(), file,
               ": model.merges entries must be \"a b\" strings or [\"a\", \"b\"] pairs");
  return merge[0].get<std::string>() + " " + merge[1].get<std::string>();
}

// The tokenizer.ggml.pre name of a byte-level BPE tokenizer.json's pre-tokenizer and normalizer.
std::string pre_tokenizer_name(const json& tok, const std::string& file) {
  const json& pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : json();
  const json& norm = tok.contains("normalizer") ? tok["normalizer"] : json();
  auto type_of = [](const json& j) { return j.is_object() && j.contains("type") ? j["type"].get<std::string>() : ""; };
  if (type_of(pre) == "ByteLevel" && pre.value("use_regex", true)) {
    KOTOBA_CHECK(norm.is_null(), file, ": a byte-level tokenizer with a normalizer (", norm.dump(),
                 ") has no llama.cpp equivalent");
    return "gpt-2";
  }
  if (type_of(pre) == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].size() == 2) {
    const json& split = pre["pretokenizers"][0];
    const json& byte_level = pre["pretokenizers"][1];
    if (type_of(split) == "Split" && type_of(byte_level) == "ByteLevel" && !byte_level.value("use_regex", true) &&
        split.contains("pattern") && split["pattern"].contains("Regex")) {
      std::string pattern = split["pattern"]["Regex"].get<std::string>();
      if (pattern == tokenizer::kLlama3Pattern && norm.is_null()) return "llama-bpe";
      if (pattern == tokenizer::kQwen2Pattern && (norm.is_null() || type_of(norm) == "NFC")) return "qwen2";
    }
  }
  throw Error(file + ": pre_tokenizer " + pre.dump().substr(0, 200) +
              " is not one llama.cpp reproduces (supported: ByteLevel with its GPT-2 regex, and the Split regexes "
              "of Llama 3 and Qwen2 followed by ByteLevel)");
}

std::optional<int64_t> token_id(const std::map<std::string, int64_t>& ids, const std::optional<std::string>& token) {
  if (!token) return std::nullopt;
  auto it = ids.find(*token);
  return it == ids.end() ? std::nullopt : std::optional<int64_t>(it->second);
}

void add_tokenizer_metadata(Metadata& md, const std::string& dir, const json& config, int64_t vocab_size) {
  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  KOTOBA_CHECK(fs::is_regular_file(tok_path), tok_path, ": missing from the model directory");
  const json tok = json_util::read_json_file(tok_path);
  KOTOBA_CHECK(tok.contains("model") && tok["model"].is_object(), tok_path, ": no \"model\" object");
  const json& model = tok["model"];
  KOTOBA_CHECK(model.value("type", "") == "BPE", tok_path, ": model.type \"", model.value("type", ""),
               "\": GGUF export handles BPE tokenizers only");
  KOTOBA_CHECK(!model.value("byte_fallback", false), tok_path,
               ": a byte_fallback (SentencePiece-style) BPE vocabulary is not supported by GGUF export yet; "
               "byte-level BPE (GPT-2, Llama 3, Qwen2 style) is");
  const std::string pre = pre_tokenizer_name(tok, tok_path);

  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  std::vector<int32_t> types(static_cast<size_t>(vocab_size), kTokenUnused);
  std::map<std::string, int64_t> ids;
  auto place = [&](const std::string& text, int64_t id, int32_t type) {
    KOTOBA_CHECK(id >= 0 && id < vocab_size, tok_path, ": token '", text, "' has id ", id,
                 " outside the model's vocab_size ", vocab_size);
    tokens[size_t(id)] = text;
    types[size_t(id)] = type;
    ids[text] = id;
  };
  KOTOBA_CHECK(model.contains("vocab") && model["vocab"].is_object(), tok_path, ": model.vocab must be an object");
  for (const auto& [text, id] : model["vocab"].items()) place(text, id.get<int64_t>(), kTokenNormal);
  if (tok.contains("added_tokens"))
    for (const json& added : tok["added_tokens"])
      place(added.at("content").get<std::string>(), added.at("id").get<int64_t>(),
            added.value("special", false) ? kTokenControl : kTokenUserDefined);
  for (int64_t i = 0; i < vocab_size; ++i)
    if (types[size_t(i)] == kTokenUnused) tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]";  // as llama.cpp's converter pads

  std::vector<std::string> merges;
  if (model.contains("merges"))
    for (const json& m : model["merges"]) merges.push_back(merge_string(m, tok_path));

  tokenizer::TokenizerConfig tc;
  std::string tc_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (fs::is_regular_file(tc_path)) tc = tokenizer::TokenizerConfig::read(tc_path);
  const std::string config_path = (fs::path(dir) / "config.json").string();
  std::optional<int64_t> bos = json_util::optional_id(config, "bos_token_id", config_path);
  std::optional<int64_t> eos = json_util::optional_id(config, "eos_token_id", config_path);
  if (auto id = token_id(ids, tc.bos_token)) bos = id;
  if (auto id = token_id(ids, tc.eos_token)) eos = id;

  md.emplace_back("tokenizer.ggml.model", GGUFValue::string("gpt2"));
  md.emplace_back("tokenizer.ggml.pre", GGUFValue::string(pre));
  md.emplace_back("tokenizer.ggml.tokens", GGUFValue::string_array(std::move(tokens)));
  md.emplace_back("tokenizer.ggml.token_type", GGUFValue::i32_array(types));
  md.emplace_back("tokenizer.ggml.merges", GGUFValue::string_array(std::move(merges)));
  if (bos) md.emplace_back("tokenizer.ggml.bos_token_id", GGUFValue::u32(uint32_t(*bos)));
  if (eos) md.emplace_back("tokenizer.ggml.eos_token_id", GGUFValue::u32(uint32_t(*eos)));
  if (auto id = token_id(ids, tc.unk_token)) md.emplace_back("tokenizer.ggml.unknown_token_id", GGUFValue::u32(uint32_t(*id)));
  if (auto id = token_id(ids, tc.pad_token)) md.emplace_back("tokenizer.ggml.padding_token_id", GGUFValue::u32(uint32_t(*id)));
  md.emplace_back("tokenizer.ggml.add_bos_token", GGUFValue::boolean(tc.add_bos_token.value_or(false)));
  md.emplace_back("tokenizer.ggml.add_eos_token", GGUFValue::boolean(tc.add_eos_token.value_or(false)));
  if (!tc.chat_template.empty()) md.emplace_back("tokenizer.chat_template", GGUFValue::string(tc.chat_template));
}

std::string gguf_arch_of(const std::string& model_type) {
  if (model_type == "gpt2") return "gpt2";
  if (model_type == "llama" || model_type == "mistral") return "llama";
  if (model_type == "qwen2") return "qwen2";
  throw Error("model_type \"" + model_type + "\" has no GGUF export (supported: gpt2, llama, mistral, qwen2)");
}

}  // namespace

uint32_t gguf_file_type(GGMLType weight_type) {
  switch (weight_type) {
    case GGMLType::f32: return 0;   // LLAMA_FTYPE_ALL_F32
    case GGMLType::f16: return 1;   // LLAMA_FTYPE_MOSTLY_F16
    case GGMLType::q8_0: return 7;  // LLAMA_FTYPE_MOSTLY_Q8_0
    case GGMLType::q4_0: return 2;  // LLAMA_FTYPE_MOSTLY_Q4_0
    case GGMLType::bf16: return 32; // LLAMA_FTYPE_MOSTLY_BF16
  }
  return 0;
}

void export_gguf(const std::string& model_dir, const std::string& gguf_path, GGMLType weight_type) {
  const std::string config_path = (fs::path(model_dir) / "config.json").string();
  KOTOBA_CHECK(fs::is_directory(model_dir), model_dir, ": not a model directory");
  const json config = json_util::read_json_file(config_path);
  std::unique_ptr<nn::CausalLM> model = build_model(config, config_path);
  load_hf_tensors(*model, load_model_weights(model_dir), model_dir);
  const std::map<std::string, Tensor> hf = model_to_hf_tensors(*model);
  const std::string arch = gguf_arch_of(model->model_type());

  Metadata md;
  md.emplace_back("general.architecture", GGUFValue::string(arch));
  md.emplace_back("general.name", GGUFValue::string(fs::absolute(model_dir).lexically_normal().filename().string()));
  md.emplace_back("general.file_type", GGUFValue::u32(gguf_file_type(weight_type)));
  md.emplace_back("general.quantization_version", GGUFValue::u32(2));  // GGML_QNT_VERSION
  auto key = [&](const std::string& k, GGUFValue v) { md.emplace_back(arch + "." + k, std::move(v)); };
  int64_t n_layer = 0, n_head = 1, n_kv_head = 1, vocab_size = model->vocab_size();
  if (auto* gpt2 = dynamic_cast<const nn::GPT2*>(model.get())) {
    const nn::GPT2Config& c = gpt2->config();
    n_layer = c.n_layer;
    key("context_length", GGUFValue::u32(uint32_t(c.n_positions)));
    key("embedding_length", GGUFValue::u32(uint32_t(c.n_embd)));
    key("feed_forward_length", GGUFValue::u32(uint32_t(4 * c.n_embd)));
    key("block_count", GGUFValue::u32(uint32_t(c.n_layer)));
    key("attention.head_count", GGUFValue::u32(uint32_t(c.n_head)));
    key("attention.layer_norm_epsilon", GGUFValue::f32(c.layer_norm_epsilon));
  } else if (auto* llama = dynamic_cast<const nn::Llama*>(model.get())) {
    const nn::LlamaConfig& c = llama->config();
    n_layer = c.num_hidden_layers;
    n_head = c.num_attention_heads;
    n_kv_head = c.num_key_value_heads;
    KOTOBA_CHECK(c.sliding_window <= 0 || c.sliding_window >= c.max_position_embeddings, config_path,
                 ": sliding_window ", c.sliding_window, " is shorter than max_position_embeddings ",
                 c.max_position_embeddings, "; llama.cpp's ", arch, " attends over the whole context, so the export "
                 "would compute something else");
    KOTOBA_CHECK(c.rope_scaling.type != nn::RopeScaling::Type::llama3, config_path,
                 ": rope_scaling of type llama3 is not supported by GGUF export yet");
    KOTOBA_CHECK(!(arch == "qwen2" && c.attention_bias), config_path,
                 ": attention_bias (a bias on o_proj) has no place in llama.cpp's qwen2");
    key("vocab_size", GGUFValue::u32(uint32_t(c.vocab_size)));
    key("context_length", GGUFValue::u32(uint32_t(c.max_position_embeddings)));
    key("embedding_length", GGUFValue::u32(uint32_t(c.hidden_size)));
    key("feed_forward_length", GGUFValue::u32(uint32_t(c.intermediate_size)));
    key("block_count", GGUFValue::u32(uint32_t(c.num_hidden_layers)));
    key("attention.head_count", GGUFValue::u32(uint32_t(c.num_attention_heads)));
    key("attention.head_count_kv", GGUFValue::u32(uint32_t(c.num_key_value_heads)));
    key("attention.layer_norm_rms_epsilon", GGUFValue::f32(c.rms_norm_eps));
    key("rope.freq_base", GGUFValue::f32(float(c.rope_theta)));
    key("rope.dimension_count", GGUFValue::u32(uint32_t(c.resolved_head_dim())));
    if (c.resolved_head_dim() * c.num_attention_heads != c.hidden_size) {
      key("attention.key_length", GGUFValue::u32(uint32_t(c.resolved_head_dim())));
      key("attention.value_length", GGUFValue::u32(uint32_t(c.resolved_head_dim())));
    }
    if (c.rope_scaling.type == nn::RopeScaling::Type::linear) {
      key("rope.scaling.type", GGUFValue::string("linear"));
      key("rope.scaling.factor", GGUFValue::f32(float(c.rope_scaling.factor)));
    }
  } else {
    throw Error(config_path + ": model_type \"" + model->model_type() + "\" has no GGUF export");
  }
  add_tokenizer_metadata(md, model_dir, config, vocab_size);

  std::set<std::string> names;
  for (const auto& [name, t] : hf) names.insert(name);
  std::vector<GGUFTensorToWrite> out;
  std::set<std::string> mapped;
  for (const TensorMapping& m : tensor_map(arch, n_layer, names)) {
    Tensor values = apply_layout(hf.at(m.hf), m.layout, n_head, n_kv_head, true);
    GGMLType type = weight_type;
    // llama.cpp's converter keeps vectors (norms, biases) and the position table in f32.
    if (values.ndim() < 2 || m.gguf == "position_embd.weight") type = GGMLType::f32;
    if ((type == GGMLType::q8_0 || type == GGMLType::q4_0) && values.size(-1) % 32 != 0) type = GGMLType::f16;
    out.push_back({m.gguf, values, type});
    mapped.insert(m.hf);
  }
  for (const std::string& name : names)
    KOTOBA_CHECK(mapped.count(name), model_dir, ": tensor '", name, "' has no GGUF name for architecture ", arch);
  if (arch == "gpt2") {
    // llama.cpp's converter stores GPT-2's tied head as its own copy of the embeddings.
    const GGUFTensorToWrite& embd = out.front();
    out.push_back({"output.weight", embd.values, embd.type});
  }
  gguf_write(gguf_path, md, out);
}

// ---- import ----

namespace {

json byte_level(bool use_regex) {
  return json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

// tokenizer.json for a "gpt2"-model (byte-level BPE) vocabulary.
json rebuild_tokenizer_json(const GGUFFile& f, const std::vector<std::string>& tokens, const std::vector<double>& types) {
  const std::string pre = f.get("tokenizer.ggml.pre").as_string(f.name + ": tokenizer.ggml.pre");
  json pre_tokenizer, normalizer = nullptr;
  if (pre == "gpt-2") {
    pre_tokenizer = byte_level(true);
  } else if (pre == "llama-bpe" || pre == "qwen2") {
    pre_tokenizer = json{{"type", "Sequence"},
                         {"pretokenizers",
                          {json{{"type", "Split"},
                                {"pattern", {{"Regex", pre == "qwen2" ? tokenizer::kQwen2Pattern
                                                                          : tokenizer::kLlama3Pattern}}},
                                {"behavior", "Isolated"},
                                {"invert", false}},
                           byte_level(false)}}};
    if (pre == "qwen2") normalizer = json{{"type", "NFC"}};
  } else {
    throw Error(f.name + ": tokenizer.ggml.pre \"" + pre +
                "\" is not supported by GGUF import (supported: gpt-2, llama-bpe, qwen2)");
  }
  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    int32_t type = int32_t(types[id]);
    if (type == kTokenUnused) continue;
    KOTOBA_CHECK(type == kTokenNormal || type == kTokenControl || type == kTokenUserDefined, f.name,
                 ": tokenizer.ggml.token_type[", id, "] is ", type, "; a byte-level vocabulary has types 1, 3, 4 and 5");
    KOTOBA_CHECK(!vocab.contains(tokens[id]), f.name, ": token '", tokens[id], "' appears twice in tokenizer.ggml.tokens");
    vocab[tokens[id]] = id;
    if (type != kTokenNormal)
      added.push_back(json{{"id", id}, {"content", tokens[id]}, {"single_word", false}, {"lstrip", false},
                           {"rstrip", false}, {"normalized", type == kTokenUserDefined},
                           {"special", type == kTokenControl}});
  }
  json merges = json::array();
  if (const GGUFValue* m = f.find("tokenizer.ggml.merges"))
    for (const std::string& s : m->as_strings(f.name + ": tokenizer.ggml.merges")) {
      size_t space = s.find(' ');
      KOTOBA_CHECK(space != std::string::npos && space > 0 && space + 1 < s.size() &&
                       s.find(' ', space + 1) == std::string::npos,
                   f.name, ": tokenizer.ggml.merges entry \"", s, "\" is not two tokens separated by one space");
      merges.push_back(json::array({s.substr(0, space), s.substr(space + 1)}));
    }
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", normalizer},
              {"pre_tokenizer", pre_tokenizer},
              {"post_processor", json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false},
                                      {"use_regex", true}}},
              {"decoder", json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                               {"use_regex", true}}},
              {"model", json{{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                             {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                             {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                             {"vocab", vocab}, {"merges", merges}}}};
}

int64_t u(const GGUFFile& f, const std::string& key) {
  int64_t v = f.get(key).as_int(f.name + ": " + key);
  KOTOBA_CHECK(v > 0, f.name, ": ", key, " must be positive, got ", v);
  return v;
}

}  // namespace

void import_gguf(const std::string& gguf_path, const std::string& model_dir) {
  const GGUFFile f = gguf_load(gguf_path);
  const std::string arch = f.get("general.architecture").as_string(f.name + ": general.architecture");
  KOTOBA_CHECK(arch == "gpt2" || arch == "llama" || arch == "qwen2", f.name, ": general.architecture \"", arch,
               "\" is not supported by GGUF import (supported: gpt2, llama, qwen2)");
  auto key = [&](const std::string& k) { return arch + "." + k; };

  // Weights under HF names, dequantised.
  std::map<std::string, Tensor> gguf_tensors;
  for (const GGUFTensorInfo& t : f.tensors) gguf_tensors[t.name] = gguf_tensor_to_f32(t, f.name);
  KOTOBA_CHECK(gguf_tensors.count("token_embd.weight"), f.name, ": missing tensor 'token_embd.weight'");
  const Tensor& embd = gguf_tensors.at("token_embd.weight");
  KOTOBA_CHECK(embd.ndim() == 2, f.name, ": token_embd.weight must be 2-D, got ", shape_str(embd.shape()));
  const int64_t vocab_size = embd.size(0), n_embd = u(f, key("embedding_length")), n_layer = u(f, key("block_count"));
  const int64_t n_head = u(f, key("attention.head_count"));
  int64_t n_kv_head = n_head;

  json config;
  if (arch == "gpt2") {
    KOTOBA_CHECK(u(f, key("feed_forward_length")) == 4 * n_embd, f.name, ": ", key("feed_forward_length"),
                 " must be 4 * embedding_length for GPT-2");
    nn::GPT2Config c;
    c.vocab_size = vocab_size;
    c.n_positions = u(f, key("context_length"));
    c.n_embd = n_embd;
    c.n_layer = n_layer;
    c.n_head = n_head;
    c.layer_norm_epsilon = float(f.get(key("attention.layer_norm_epsilon")).as_float(f.name));
    config = gpt2_config_to_json(c);
    if (auto it = gguf_tensors.find("output.weight"); it != gguf_tensors.end()) {
      // kotoba's GPT-2 ties its head to the embeddings, as HF's does.
      std::vector<float> a = it->second.to_vector(), b = embd.to_vector();
      KOTOBA_CHECK(it->second.shape() == embd.shape() && a == b, f.name,
                   ": output.weight differs from token_embd.weight; GPT-2's LM head is tied to its embeddings");
      gguf_tensors.erase(it);
    }
  } else {
    nn::LlamaConfig c;
    c.model_type = arch;
    c.vocab_size = vocab_size;
    c.hidden_size = n_embd;
    c.intermediate_size = u(f, key("feed_forward_length"));
    c.num_hidden_layers = n_layer;
    c.num_attention_heads = n_head;
    if (f.find(key("attention.head_count_kv"))) n_kv_head = u(f, key("attention.head_count_kv"));
    c.num_key_value_heads = n_kv_head;
    c.max_position_embeddings = u(f, key("context_length"));
    c.rms_norm_eps = float(f.get(key("attention.layer_norm_rms_epsilon")).as_float(f.name));
    if (const GGUFValue* base = f.find(key("rope.freq_base"))) c.rope_theta = base->as_float(f.name);
    int64_t head_dim = f.find(key("attention.key_length")) ? u(f, key("attention.key_length")) : n_embd / n_head;
    if (f.find(key("rope.dimension_count")))
      KOTOBA_CHECK(u(f, key("rope.dimension_count")) == head_dim, f.name, ": ", key("rope.dimension_count"),
                   " differs from the head size ", head_dim, "; partial rotary embeddings are not supported");
    if (head_dim * n_head != n_embd) c.head_dim = head_dim;
    if (const GGUFValue* type = f.find(key("rope.scaling.type"))) {
      std::string t = type->as_string(f.name + ": " + key("rope.scaling.type"));
      KOTOBA_CHECK(t == "none" || t == "linear", f.name, ": ", key("rope.scaling.type"), " \"", t,
                   "\" is not supported (none, linear)");
      if (t == "linear") {
        c.rope_scaling.type = nn::RopeScaling::Type::linear;
        c.rope_scaling.factor = f.get(key("rope.scaling.factor")).as_float(f.name);
      }
    }
    KOTOBA_CHECK(!gguf_tensors.count("rope_freqs.weight"), f.name,
                 ": rope_freqs.weight (Llama 3 style RoPE scaling) is not supported by GGUF import yet");
    c.tie_word_embeddings = !gguf_tensors.count("output.weight");
    const bool o_bias = gguf_tensors.count("blk.0.attn_output.bias") > 0;
    const bool q_bias = gguf_tensors.count("blk.0.attn_q.bias") > 0;
    if (arch == "qwen2") {
      c.qkv_bias = q_bias;
    } else {
      c.attention_bias = q_bias || o_bias;
    }
    c.mlp_bias = gguf_tensors.count("blk.0.ffn_up.bias") > 0;
    config = llama_config_to_json(c);
  }

  // The model this config builds names every HF tensor it needs.
  std::unique_ptr<nn::CausalLM> model = build_model(config, f.name);
  std::set<std::string> hf_names;
  for (const auto& [name, t] : model_to_hf_tensors(*model)) hf_names.insert(name);
  std::map<std::string, Tensor> hf;
  std::set<std::string> used;
  for (const TensorMapping& m : tensor_map(arch, n_layer, hf_names)) {
    auto it = gguf_tensors.find(m.gguf);
    KOTOBA_CHECK(it != gguf_tensors.end(), f.name, ": missing tensor '", m.gguf, "'");
    hf[m.hf] = apply_layout(it->second, m.layout, n_head, n_kv_head, false);
    used.insert(m.gguf);
  }
  for (const auto& [name, t] : gguf_tensors)
    KOTOBA_CHECK(used.count(name), f.name, ": tensor '", name, "' has no counterpart in a HF ", arch, " model");
  load_hf_tensors(*model, hf, f.name);

  // Tokenizer.
  const std::string tok_model = f.get("tokenizer.ggml.model").as_string(f.name + ": tokenizer.ggml.model");
  KOTOBA_CHECK(tok_model == "gpt2", f.name, ": tokenizer.ggml.model \"", tok_model,
               "\" is not supported by GGUF import (supported: gpt2, byte-level BPE; SentencePiece \"llama\" "
               "vocabularies are not rebuilt yet)");
  const std::vector<std::string>& tokens = f.get("tokenizer.ggml.tokens").as_strings(f.name + ": tokenizer.ggml.tokens");
  std::vector<double> types = f.find("tokenizer.ggml.token_type")
                                  ? f.get("tokenizer.ggml.token_type").as_numbers(f.name + ": tokenizer.ggml.token_type")
                                  : std::vector<double>(tokens.size(), kTokenNormal);
  KOTOBA_CHECK(types.size() == tokens.size(), f.name, ": tokenizer.ggml.token_type has ", types.size(),
               " entries for ", tokens.size(), " tokens");
  KOTOBA_CHECK(int64_t(tokens.size()) <= vocab_size, f.name, ": ", tokens.size(),
               " tokens but token_embd.weight has only ", vocab_size, " rows");
  json tokenizer_json = rebuild_tokenizer_json(f, tokens, types);

  GenerationConfig generation;
  json tokenizer_config = json{{"tokenizer_class", "PreTrainedTokenizerFast"}};
  auto special = [&](const char* gguf_key, const char* name, std::optional<int64_t>* id_out) {
    const GGUFValue* v = f.find(gguf_key);
    if (!v) return;
    int64_t id = v->as_int(f.name + ": " + gguf_key);
    KOTOBA_CHECK(id >= 0 && id < int64_t(tokens.size()), f.name, ": ", gguf_key, " ", id, " is not a token id");
    tokenizer_config[name] = tokens[size_t(id)];
    if (id_out) *id_out = id;
  };
  special("tokenizer.ggml.bos_token_id", "bos_token", &generation.bos_token_id);
  special("tokenizer.ggml.eos_token_id", "eos_token", &generation.eos_token_id);
  special("tokenizer.ggml.unknown_token_id", "unk_token", nullptr);
  special("tokenizer.ggml.padding_token_id", "pad_token", &generation.pad_token_id);
  if (const GGUFValue* v = f.find("tokenizer.ggml.add_bos_token"))
    tokenizer_config["add_bos_token"] = v->as_bool(f.name + ": tokenizer.ggml.add_bos_token");
  if (const GGUFValue* v = f.find("tokenizer.ggml.add_eos_token"))
    tokenizer_config["add_eos_token"] = v->as_bool(f.name + ": tokenizer.ggml.add_eos_token");
  if (const GGUFValue* v = f.find("tokenizer.chat_template"))
    tokenizer_config["chat_template"] = v->as_string(f.name + ": tokenizer.chat_template");
  tokenizer_config["model_max_length"] = model->max_positions();

  // The directory: built beside the target, then swapped in.
  write_directory_atomically(model_dir, [&](const std::string& tmp_dir) {
    const fs::path tmp(tmp_dir);
    json config_out = model_config_to_json(*model);
    if (generation.bos_token_id) config_out["bos_token_id"] = *generation.bos_token_id;
    if (generation.eos_token_id) config_out["eos_token_id"] = *generation.eos_token_id;
    save_safetensors((tmp / "model.safetensors").string(), model_to_hf_tensors(*model), {{"format", "pt"}});
    write_file_atomically((tmp / "config.json").string(), config_out.dump(2) + "\n");
    write_file_atomically((tmp / "generation_config.json").string(),
                          generation_config_to_json(generation).dump(2) + "\n");
    write_file_atomically((tmp / "tokenizer.json").string(), tokenizer_json.dump(2) + "\n");
    write_file_atomically((tmp / "tokenizer_config.json").string(), tokenizer_config.dump(2) + "\n");
  });
}

}  // namespace kotoba
