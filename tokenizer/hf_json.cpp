// HF tokenizer.json in and out (the BPE model with its normalizer, pre-tokenizer, added tokens,
// post-processor and decoder), SentencePiece .model files, and model directories.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/tokenizer_impl.h"

namespace kotoba::tokenizer {

using namespace internal;

namespace {

using nlohmann::json;
using nlohmann::ordered_json;
namespace fs = std::filesystem;

// Nesting deeper than any tokenizer.json needs is refused before parsing, so that no recursion
// over the document (ours or the JSON library's) can run out of stack.
constexpr int kMaxJsonDepth = 64;

int json_depth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

ordered_json default_byte_level(bool add_prefix_space, bool trim_offsets) {
  return ordered_json{{"type", "ByteLevel"},
                      {"add_prefix_space", add_prefix_space},
                      {"trim_offsets", trim_offsets},
                      {"use_regex", true}};
}

// Field access with errors that name the file and the field.
struct JsonReader {
  std::string path;
  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(kotoba::detail::concat("tokenizer.json '", path, "': field ", field, ": ", what));
  }
  const json& get(const json& obj, const std::string& key, const std::string& field) const {
    if (!obj.is_object() || !obj.contains(key)) fail(field, "missing");
    return obj.at(key);
  }
  bool flag(const json& obj, const std::string& key, const std::string& field, bool fallback) const {
    if (!obj.is_object() || !obj.contains(key) || obj.at(key).is_null()) return fallback;
    if (!obj.at(key).is_boolean()) fail(field + "." + key, "expected true or false");
    return obj.at(key).get<bool>();
  }
  std::string string(const json& obj, const std::string& key, const std::string& field) const {
    const json& v = get(obj, key, field + "." + key);
    if (!v.is_string()) fail(field + "." + key, "expected a string");
    std::string s = v.get<std::string>();
    if (find_invalid_utf8(s) != std::string_view::npos) fail(field + "." + key, "not valid UTF-8");
    return s;
  }
  size_t count(const json& obj, const std::string& key, const std::string& field) const {
    const json& v = get(obj, key, field + "." + key);
    if (!v.is_number_unsigned() || v.get<uint64_t>() > 1000000) fail(field + "." + key, "expected a small count");
    return size_t(v.get<uint64_t>());
  }
  std::string type_of(const json& obj, const std::string& field) const {
    if (!obj.is_object()) fail(field, "expected an object");
    const json& t = get(obj, "type", field + ".type");
    if (!t.is_string()) fail(field + ".type", "expected a string");
    return t.get<std::string>();
  }
  const json& list(const json& obj, const std::string& key, const std::string& field) const {
    const json& v = get(obj, key, field + "." + key);
    if (!v.is_array()) fail(field + "." + key, "expected an array");
    return v;
  }
  // {"String": s} patterns only: HF's Regex patterns are not interpreted here.
  std::string string_pattern(const json& obj, const std::string& field) const {
    const json& p = get(obj, "pattern", field + ".pattern");
    if (!p.is_object() || !p.contains("String") || !p["String"].is_string())
      fail(field + ".pattern", "only {\"String\": ...} patterns are supported here, got " +
                                   (p.is_object() && p.contains("Regex") ? std::string("a Regex") : p.type_name()));
    return p["String"].get<std::string>();
  }
  std::string one_char(const json& obj, const std::string& key, const std::string& field) const {
    std::string s = string(obj, key, field);
    size_t len = 0;
    if (!s.empty()) detail::decode_utf8(reinterpret_cast<const unsigned char*>(s.data()), len);
    if (s.empty() || len != s.size()) fail(field + "." + key, "expected one character, got '" + s + "'");
    return s;
  }
};

void parse_normalizer(const JsonReader& r, const json& n, const std::string& field,
                      std::vector<NormalizerStep>& steps) {
  std::string type = r.type_of(n, field);
  using K = NormalizerStep::Kind;
  if (type == "NFC") steps.push_back({K::nfc, "", ""});
  else if (type == "NFD") steps.push_back({K::nfd, "", ""});
  else if (type == "NFKC") steps.push_back({K::nfkc, "", ""});
  else if (type == "NFKD") steps.push_back({K::nfkd, "", ""});
  else if (type == "Prepend") steps.push_back({K::prepend, r.string(n, "prepend", field), ""});
  else if (type == "Replace") steps.push_back({K::replace, r.string_pattern(n, field), r.string(n, "content", field)});
  else if (type == "Sequence") {
    const json& list = r.list(n, "normalizers", field);
    for (size_t i = 0; i < list.size(); ++i)
      parse_normalizer(r, list[i], field + ".normalizers[" + std::to_string(i) + "]", steps);
  } else {
    r.fail(field + ".type", "'" + type + "' is not supported (kotoba reads NFC, NFD, NFKC, NFKD, Prepend, "
                            "Replace and Sequence)");
  }
}

PreTokenizerStep::Prepend prepend_scheme(const JsonReader& r, const json& obj, const std::string& field) {
  using P = PreTokenizerStep::Prepend;
  if (obj.contains("prepend_scheme") && !obj["prepend_scheme"].is_null()) {
    std::string s = r.string(obj, "prepend_scheme", field);
    if (s == "always") return P::always;
    if (s == "first") return P::first;
    if (s == "never") return P::never;
    r.fail(field + ".prepend_scheme", "expected \"always\", \"first\" or \"never\", got '" + s + "'");
  }
  return r.flag(obj, "add_prefix_space", field, true) ? P::always : P::never;  // before tokenizers 0.14
}

// Flattens the pre-tokenizer into steps; `byte_level` is set by a ByteLevel step, which must come last.
void parse_pre_tokenizer(const JsonReader& r, const json& p, const std::string& field,
                         std::vector<PreTokenizerStep>& steps, bool& byte_level) {
  std::string type = r.type_of(p, field);
  using K = PreTokenizerStep::Kind;
  if (byte_level) r.fail(field, "nothing may follow a ByteLevel pre-tokenizer");
  if (type == "ByteLevel") {
    if (r.flag(p, "add_prefix_space", field, true)) steps.push_back({.kind = K::prefix_space});
    if (r.flag(p, "use_regex", field, true)) steps.push_back({.kind = K::split_gpt2});
    byte_level = true;
  } else if (type == "Split") {
    const json& pattern = r.get(p, "pattern", field + ".pattern");
    if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string())
      r.fail(field + ".pattern", "expected {\"Regex\": ...} with one of the known split patterns");
    std::string regex = pattern["Regex"].get<std::string>();
    if (regex == kGpt2Pattern) steps.push_back({.kind = K::split_gpt2});
    else if (regex == kLlama3Pattern) steps.push_back({.kind = K::split_llama3});
    else if (regex == kQwen2Pattern) steps.push_back({.kind = K::split_qwen2});
    else
      r.fail(field + ".pattern", "the regex '" + regex +
                                     "' is not one kotoba knows (it reads the GPT-2, Llama 3 and Qwen2 split patterns)");
    if (!p.contains("behavior") || !p["behavior"].is_string() || p["behavior"].get<std::string>() != "Isolated")
      r.fail(field + ".behavior", "expected \"Isolated\"");
    if (r.flag(p, "invert", field, false)) r.fail(field + ".invert", "expected false");
  } else if (type == "Metaspace") {
    PreTokenizerStep step{.kind = K::metaspace};
    step.replacement = r.one_char(p, "replacement", field);
    step.prepend = prepend_scheme(r, p, field);
    step.split = r.flag(p, "split", field, true);
    steps.push_back(std::move(step));
  } else if (type == "Sequence") {
    const json& list = r.list(p, "pretokenizers", field);
    for (size_t i = 0; i < list.size(); ++i)
      parse_pre_tokenizer(r, list[i], field + ".pretokenizers[" + std::to_string(i) + "]", steps, byte_level);
  } else {
    r.fail(field + ".type", "'" + type + "' is not supported (kotoba reads ByteLevel, Split, Metaspace and Sequence)");
  }
}

void parse_decoder(const JsonReader& r, const json& d, const std::string& field, std::vector<DecoderStep>& steps) {
  std::string type = r.type_of(d, field);
  using K = DecoderStep::Kind;
  if (type == "ByteLevel") {
    steps.push_back({.kind = K::byte_level});
  } else if (type == "Replace") {
    steps.push_back({.kind = K::replace, .text = r.string_pattern(d, field), .with = r.string(d, "content", field)});
  } else if (type == "ByteFallback") {
    steps.push_back({.kind = K::byte_fallback});
  } else if (type == "Fuse") {
    steps.push_back({.kind = K::fuse});
  } else if (type == "Strip") {
    steps.push_back({.kind = K::strip,
                     .text = r.one_char(d, "content", field),
                     .start = r.count(d, "start", field),
                     .stop = r.count(d, "stop", field)});
  } else if (type == "Metaspace") {
    steps.push_back({.kind = K::metaspace,
                     .text = r.one_char(d, "replacement", field),
                     .metaspace_prepends = prepend_scheme(r, d, field) != PreTokenizerStep::Prepend::never});
  } else if (type == "Sequence") {
    const json& list = r.list(d, "decoders", field);
    for (size_t i = 0; i < list.size(); ++i)
      parse_decoder(r, list[i], field + ".decoders[" + std::to_string(i) + "]", steps);
  } else {
    r.fail(field + ".type", "'" + type + "' is not supported (kotoba reads ByteLevel, Replace, ByteFallback, Fuse, "
                            "Strip, Metaspace and Sequence)");
  }
}

// The ids a post-processor puts before and after the sequence of one text.
void parse_post_processor(const JsonReader& r, const json& p, const std::string& field, int32_t vocab_size,
                          std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  std::string type = r.type_of(p, field);
  auto check_id = [&](const json& v, const std::string& f) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab_size)
      r.fail(f, "expected a token id in [0, " + std::to_string(vocab_size) + ")");
    return int32_t(v.get<int64_t>());
  };
  if (type == "ByteLevel") return;
  if (type == "TemplateProcessing") {
    const json& single = r.list(p, "single", field);
    const json& specials = r.get(p, "special_tokens", field + ".special_tokens");
    std::vector<int32_t> before, after;
    bool seen_sequence = false;
    for (size_t i = 0; i < single.size(); ++i) {
      std::string f = field + ".single[" + std::to_string(i) + "]";
      const json& item = single[i];
      if (item.is_object() && item.contains("Sequence")) {
        const json& seq = item["Sequence"];
        if (!seq.is_object() || !seq.contains("id") || seq["id"] != "A" || seen_sequence)
          r.fail(f, "expected the sequence $A once");
        seen_sequence = true;
      } else if (item.is_object() && item.contains("SpecialToken")) {
        const json& name = r.get(item["SpecialToken"], "id", f + ".SpecialToken.id");
        if (!name.is_string()) r.fail(f + ".SpecialToken.id", "expected a string");
        std::string key = name.get<std::string>();
        std::string sf = field + ".special_tokens[\"" + key + "\"]";
        if (!specials.is_object() || !specials.contains(key)) r.fail(sf, "missing");
        const json& ids = r.list(specials[key], "ids", sf);
        for (size_t k = 0; k < ids.size(); ++k)
          (seen_sequence ? after : before).push_back(check_id(ids[k], sf + ".ids[" + std::to_string(k) + "]"));
      } else {
        r.fail(f, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    if (!seen_sequence) r.fail(field + ".single", "the template has no $A");
    prefix.insert(prefix.begin(), before.begin(), before.end());
    suffix.insert(suffix.end(), after.begin(), after.end());
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    const json& cls = r.get(p, "cls", field + ".cls");
    const json& sep = r.get(p, "sep", field + ".sep");
    if (!cls.is_array() || cls.size() != 2) r.fail(field + ".cls", "expected [token, id]");
    if (!sep.is_array() || sep.size() != 2) r.fail(field + ".sep", "expected [token, id]");
    prefix.insert(prefix.begin(), check_id(cls[1], field + ".cls[1]"));
    suffix.push_back(check_id(sep[1], field + ".sep[1]"));
  } else if (type == "Sequence") {
    const json& list = r.list(p, "processors", field);
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(r, list[i], field + ".processors[" + std::to_string(i) + "]", vocab_size, prefix, suffix);
  } else {
    r.fail(field + ".type", "'" + type + "' is not supported (kotoba reads ByteLevel, TemplateProcessing, "
                            "RobertaProcessing, BertProcessing and Sequence)");
  }
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, what, " '", path, "': cannot open the file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  KOTOBA_CHECK(!in.bad(), what, " '", path, "': error reading the file");
  return text;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view text, const std::string& name) {
  JsonReader r{name};
  if (json_depth(text) > kMaxJsonDepth)
    throw Error(kotoba::detail::concat("tokenizer.json '", name, "': nested deeper than ", kMaxJsonDepth, " levels"));
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(kotoba::detail::concat("tokenizer.json '", name, "': not valid JSON (", e.what(), ")"));
  }
  if (!doc.is_object()) r.fail("(top level)", "expected an object");

  Tokenizer tok;
  Impl& im = *tok.impl_;

  // model
  const json& model = r.get(doc, "model", "model");
  if (!model.is_object()) r.fail("model", "expected an object");
  if (model.contains("type")) {
    std::string type = r.type_of(model, "model");
    if (type == "WordPiece") {  // BERT: its own pipeline (tokenizer/wordpiece.h)
      im.wordpiece = std::make_shared<const WordPiece>(WordPiece::from_json(doc, name));
      im.prefix_ids = im.wordpiece->prefix_ids();
      im.suffix_ids = im.wordpiece->suffix_ids();
      return tok;
    }
    if (type != "BPE") r.fail("model.type", "'" + type + "' is not supported (kotoba reads \"BPE\" and \"WordPiece\")");
  }
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0))
    r.fail("model.dropout", "BPE dropout is not supported (expected null)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null() && !(model[key].is_string() && model[key].get<std::string>().empty()))
      r.fail(std::string("model.") + key, "not supported (expected null)");
  im.byte_fallback = r.flag(model, "byte_fallback", "model", false);
  im.fuse_unk = r.flag(model, "fuse_unk", "model", false);
  im.ignore_merges = r.flag(model, "ignore_merges", "model", false);

  const json& vocab = r.get(model, "vocab", "model.vocab");
  if (!vocab.is_object()) r.fail("model.vocab", "expected an object of token: id");
  const json* added_list = nullptr;
  if (doc.contains("added_tokens") && !doc["added_tokens"].is_null()) {
    added_list = &doc["added_tokens"];
    if (!added_list->is_array()) r.fail("added_tokens", "expected an array");
  }
  // Ids run 0..N-1 over the model vocabulary and the added tokens together, so no id can be
  // beyond their count (which also bounds what a hostile file can make us allocate).
  const size_t entries = vocab.size() + (added_list ? added_list->size() : 0);
  std::vector<std::optional<std::string>> by_id;
  auto place = [&](const std::string& token, int64_t id, const std::string& field) {
    if (id < 0 || size_t(id) >= entries)
      r.fail(field, "id " + std::to_string(id) + " is out of range (ids must be 0..N-1 over the " +
                        std::to_string(entries) + " vocabulary and added entries)");
    if (size_t(id) >= by_id.size()) by_id.resize(size_t(id) + 1);
    if (by_id[size_t(id)] && *by_id[size_t(id)] != token)
      r.fail(field, "id " + std::to_string(id) + " is given to both '" + *by_id[size_t(id)] + "' and '" + token + "'");
    by_id[size_t(id)] = token;
  };
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) r.fail("model.vocab[\"" + it.key() + "\"]", "expected an integer id");
    place(it.key(), it.value().get<int64_t>(), "model.vocab[\"" + it.key() + "\"]");
  }

  if (added_list) {
    const json& added = *added_list;
    for (size_t i = 0; i < added.size(); ++i) {
      std::string field = "added_tokens[" + std::to_string(i) + "]";
      const json& a = added[i];
      const json& id = r.get(a, "id", field + ".id");
      const json& content = r.get(a, "content", field + ".content");
      if (!id.is_number_integer()) r.fail(field + ".id", "expected an integer");
      if (!content.is_string() || content.get<std::string>().empty()) r.fail(field + ".content", "expected a non-empty string");
      Impl::Added entry{.content = content.get<std::string>(),
                        .id = int32_t(std::clamp<int64_t>(id.get<int64_t>(), -1, INT32_MAX)),
                        .special = r.flag(a, "special", field, false),
                        .lstrip = r.flag(a, "lstrip", field, false),
                        .rstrip = r.flag(a, "rstrip", field, false),
                        .normalized = r.flag(a, "normalized", field, false),
                        .single_word = r.flag(a, "single_word", field, false)};
      if (find_invalid_utf8(entry.content) != std::string_view::npos) r.fail(field + ".content", "not valid UTF-8");
      place(entry.content, id.get<int64_t>(), field + ".id");
      im.added.push_back(std::move(entry));
    }
  }
  im.tokens.resize(by_id.size());
  im.in_model_vocab.assign(by_id.size(), 0);
  for (size_t id = 0; id < by_id.size(); ++id) {
    if (!by_id[id]) r.fail("model.vocab", "no token has id " + std::to_string(id) + " (ids must be 0..N-1)");
    im.tokens[id] = std::move(*by_id[id]);
  }
  for (auto it = vocab.begin(); it != vocab.end(); ++it) im.in_model_vocab[size_t(it.value().get<int64_t>())] = 1;
  for (size_t id = 0; id < im.tokens.size(); ++id)
    if (find_invalid_utf8(im.tokens[id]) != std::string_view::npos)
      r.fail("model.vocab", "token with id " + std::to_string(id) + " is not valid UTF-8");

  std::unordered_map<std::string, int32_t> vocab_ids;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) vocab_ids[it.key()] = int32_t(it.value().get<int64_t>());
  const json& merges = r.get(model, "merges", "model.merges");
  if (!merges.is_array()) r.fail("model.merges", "expected an array");
  im.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    std::string field = "model.merges[" + std::to_string(i) + "]";
    const json& m = merges[i];
    std::string left, right;
    if (m.is_string()) {  // "left right"
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        r.fail(field, "expected \"left right\" (two tokens and one space), got '" + s + "'");
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["left", "right"]
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      r.fail(field, "expected \"left right\" or [\"left\", \"right\"]");
    }
    auto li = vocab_ids.find(left), ri = vocab_ids.find(right);
    if (li == vocab_ids.end()) r.fail(field, "'" + left + "' is not in model.vocab");
    if (ri == vocab_ids.end()) r.fail(field, "'" + right + "' is not in model.vocab");
    im.merges.emplace_back(li->second, ri->second);
  }
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    if (!model["unk_token"].is_string()) r.fail("model.unk_token", "expected a string or null");
    auto it = vocab_ids.find(model["unk_token"].get<std::string>());
    if (it == vocab_ids.end()) r.fail("model.unk_token", "'" + model["unk_token"].get<std::string>() + "' is not in model.vocab");
    im.unk_id = it->second;
  }

  if (doc.contains("normalizer") && !doc["normalizer"].is_null()) {
    parse_normalizer(r, doc["normalizer"], "normalizer", im.normalizer);
    im.normalizer_json = doc["normalizer"];
  }

  im.byte_level = false;
  if (doc.contains("pre_tokenizer") && !doc["pre_tokenizer"].is_null())
    parse_pre_tokenizer(r, doc["pre_tokenizer"], "pre_tokenizer", im.pre_tokenizer, im.byte_level);
  else if (!doc.contains("pre_tokenizer"))
    r.fail("pre_tokenizer", "missing (null when there is none)");
  im.pre_tokenizer_json = doc["pre_tokenizer"];
  for (const auto& step : im.pre_tokenizer)
    if (im.byte_level && step.kind == PreTokenizerStep::Kind::metaspace)
      r.fail("pre_tokenizer", "Metaspace and ByteLevel together are not supported");
  if (im.byte_level && im.byte_fallback) r.fail("model.byte_fallback", "a byte-level BPE has no byte fallback (expected false)");

  if (doc.contains("decoder") && !doc["decoder"].is_null()) {
    parse_decoder(r, doc["decoder"], "decoder", im.decoder);
    im.decoder_json = doc["decoder"];
  } else if (!im.byte_level) {
    im.has_decoder = false;
    im.decoder_json = nullptr;
  }
  if (doc.contains("post_processor") && !doc["post_processor"].is_null()) {
    parse_post_processor(r, doc["post_processor"], "post_processor", int32_t(im.tokens.size()), im.prefix_ids,
                         im.suffix_ids);
    im.post_processor = doc["post_processor"];
  }
  for (auto [key, slot] : {std::pair{"truncation", &im.truncation}, std::pair{"padding", &im.padding}})
    if (doc.contains(key)) *slot = doc[key];

  im.finalize("tokenizer.json '" + name + "'");
  return tok;
}

Tokenizer Tokenizer::load(const std::string& path) {
  if (ends_with(path, ".model")) {
    std::string bytes = read_file(path, "tokenizer.model");
    Tokenizer tok;
    tok.impl_->sentencepiece = std::make_shared<const SentencePieceModel>(bytes, path);
    // LlamaTokenizer's default: BOS added, EOS not.
    if (auto bos = tok.impl_->sentencepiece->bos_id()) tok.impl_->prefix_ids = {*bos};
    return tok;
  }
  return from_json(read_file(path, "tokenizer.json"), path);
}

Tokenizer Tokenizer::load_dir(const std::string& dir) {
  fs::path d(dir);
  KOTOBA_CHECK(fs::is_directory(d), "tokenizer: '", dir, "' is not a directory");
  Tokenizer tok;
  if (fs::exists(d / "tokenizer.json")) tok = load((d / "tokenizer.json").string());
  else if (fs::exists(d / "tokenizer.model")) tok = load((d / "tokenizer.model").string());
  else throw Error(kotoba::detail::concat("tokenizer: '", dir, "' has neither tokenizer.json nor tokenizer.model"));
  fs::path config_path = d / "tokenizer_config.json";
  if (!fs::exists(config_path)) return tok;
  const std::string cfg_name = config_path.string();
  TokenizerConfig cfg = TokenizerConfig::read(cfg_name);
  auto id_of = [&](const std::optional<std::string>& token, const char* key) -> std::optional<int32_t> {
    if (!token) return std::nullopt;
    auto id = tok.token_to_id(*token);
    KOTOBA_CHECK(id.has_value(), "tokenizer_config.json '", cfg_name, "': key ", key, ": '", *token,
                 "' is not in the tokenizer's vocabulary");
    return id;
  };
  Impl& im = *tok.impl_;
  if (auto id = id_of(cfg.bos_token, "bos_token")) im.bos = id;
  if (auto id = id_of(cfg.eos_token, "eos_token")) im.eos = id;
  if (auto id = id_of(cfg.pad_token, "pad_token")) im.pad = id;
  id_of(cfg.unk_token, "unk_token");
  // transformers' slow and fast Llama/Gemma tokenizers rebuild the template from add_bos_token
  // (default true) and add_eos_token (default false); other classes keep tokenizer.json's.
  static const char* const kRebuilding[] = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer",
                                            "CodeLlamaTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast"};
  bool rebuild = im.sentencepiece != nullptr;
  for (const char* c : kRebuilding) rebuild = rebuild || cfg.tokenizer_class == c;
  if (rebuild) {
    auto bos = tok.bos_id(), eos = tok.eos_id();
    im.prefix_ids.clear();
    im.suffix_ids.clear();
    if (cfg.add_bos_token.value_or(true) && bos) im.prefix_ids.push_back(*bos);
    if (cfg.add_eos_token.value_or(false) && eos) im.suffix_ids.push_back(*eos);
  }
  return tok;
}

void Tokenizer::save(const std::string& path) const {
  const Impl& im = *impl_;
  if (im.sentencepiece) {
    KOTOBA_CHECK(ends_with(path, ".model"), "tokenizer: save '", path,
                 "': a SentencePiece tokenizer is saved as its .model file (the name must end in .model)");
    write_file_atomically(path, im.sentencepiece->serialized());
    return;
  }
  if (im.wordpiece) return im.wordpiece->save(path);
  ordered_json doc;
  doc["version"] = "1.0";
  doc["truncation"] = im.truncation;
  doc["padding"] = im.padding;
  ordered_json added = ordered_json::array();
  for (const auto& a : im.added)
    added.push_back(ordered_json{{"id", a.id},
                                 {"content", a.content},
                                 {"single_word", a.single_word},
                                 {"lstrip", a.lstrip},
                                 {"rstrip", a.rstrip},
                                 {"normalized", a.normalized},
                                 {"special", a.special}});
  doc["added_tokens"] = added;
  doc["normalizer"] = ordered_json::parse(im.normalizer_json.dump());
  doc["pre_tokenizer"] = im.pre_tokenizer_json.is_null() && im.byte_level
                             ? default_byte_level(false, true)
                             : ordered_json::parse(im.pre_tokenizer_json.dump());
  doc["post_processor"] = ordered_json::parse(im.post_processor.dump());
  doc["decoder"] = im.decoder_json.is_null() && im.byte_level ? default_byte_level(true, true)
                                                               : ordered_json::parse(im.decoder_json.dump());
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < im.tokens.size(); ++id)
    if (im.in_model_vocab[id])  // appended directly: ordered_json's operator[] searches linearly
      vocab.get_ref<ordered_json::object_t&>().emplace_back(im.tokens[id], id);
  ordered_json merges = ordered_json::array();
  for (auto [a, b] : im.merges) {
    const std::string &left = im.tokens[size_t(a)], &right = im.tokens[size_t(b)];
    // A token with a space cannot go into the "left right" form; HF reads the pair form too.
    if (left.find(' ') == std::string::npos && right.find(' ') == std::string::npos) merges.push_back(left + " " + right);
    else merges.push_back(ordered_json::array({left, right}));
  }
  doc["model"] = ordered_json{{"type", "BPE"},
                              {"dropout", nullptr},
                              {"unk_token", im.unk_id ? ordered_json(im.tokens[size_t(*im.unk_id)]) : ordered_json()},
                              {"continuing_subword_prefix", nullptr},
                              {"end_of_word_suffix", nullptr},
                              {"fuse_unk", im.fuse_unk},
                              {"byte_fallback", im.byte_fallback},
                              {"ignore_merges", im.ignore_merges},
                              {"vocab", vocab},
                              {"merges", merges}};
  write_file_atomically(path, doc.dump(2) + "\n");
}

}  // namespace kotoba::tokenizer
