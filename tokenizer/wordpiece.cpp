// WordPiece: BERT normalisation and pre-tokenisation over code points, greedy longest-match
// encoding, the WordPiece decoder, a likelihood-score trainer and the tokenizer.json form.
#include "tokenizer/wordpiece.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/utf8.h"
#include "tokenizer/bert_unicode.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode_norm.h"

namespace kotoba::tokenizer {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;
namespace bu = bert_unicode;

template <size_t N>
bool in_ranges(const bu::CodeRange (&table)[N], char32_t cp) {
  auto it = std::upper_bound(std::begin(table), std::end(table), cp,
                             [](char32_t c, const bu::CodeRange& r) { return c < r.first; });
  return it != std::begin(table) && cp <= std::prev(it)->last;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// Calls f(code point, byte offset, byte length) for each character of valid UTF-8.
template <typename F>
void for_each_cp(std::string_view text, F&& f) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    size_t len = 0;
    char32_t cp = detail::decode_utf8(s + i, len);
    f(cp, i, len);
    i += len;
  }
}

bool is_whitespace(char32_t cp) { return cp < 0x80 ? (cp == ' ' || (cp >= 9 && cp <= 13)) : char_class(cp) == CharClass::space; }
bool is_control(char32_t cp) { return cp != '\t' && cp != '\n' && cp != '\r' && in_ranges(bu::kOther, cp); }
bool is_punctuation(char32_t cp) {
  if (cp < 0x80) return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  return in_ranges(bu::kPunctuation, cp);
}
// HF's CJK blocks (the ideographs only: Hangul and kana are written with spaces or are not split).
bool is_chinese(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}
void append_lowercase(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  auto it = std::lower_bound(std::begin(bu::kLowercase), std::end(bu::kLowercase), cp,
                             [](const bu::Lowercase& l, char32_t c) { return l.from < c; });
  if (it == std::end(bu::kLowercase) || it->from != cp) return append_utf8(out, cp);
  for (char32_t c : it->to)
    if (c) append_utf8(out, c);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, "wordpiece: cannot open '", path, "'");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The three cleanup rules of HF's WordPiece decoder (and BERT's original detokeniser).
std::string cleanup(std::string s) {
  static const std::pair<const char*, const char*> rules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},   {" ' ", "'"},  {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (auto [from, to] : rules) {
    std::string out;
    const size_t n = std::strlen(from);
    size_t i = 0;
    for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + n) out.append(s, i, j - i).append(to);
    out.append(s, i);
    s = std::move(out);
  }
  return s;
}

}  // namespace

// ---- normalisation and pre-tokenisation ----

std::string WordPiece::normalize(std::string_view text) const {
  if (!has_normalizer_) return std::string(text);
  const BertNormalizerOptions& o = normalizer_;
  std::string s;
  s.reserve(text.size() + 8);
  for_each_cp(text, [&](char32_t cp, size_t, size_t) {
    if (o.clean_text) {
      if (cp == 0 || cp == 0xFFFD || is_control(cp)) return;
      if (is_whitespace(cp)) cp = ' ';
    }
    if (o.handle_chinese_chars && is_chinese(cp)) {
      s += ' ';
      append_utf8(s, cp);
      s += ' ';
      return;
    }
    append_utf8(s, cp);
  });
  if (o.strip_accents.value_or(o.lowercase)) {
    std::string decomposed = normalize_unicode(s, NormalForm::nfd);
    s.clear();
    for_each_cp(decomposed, [&](char32_t cp, size_t at, size_t len) {
      if (!in_ranges(bu::kNonspacingMarks, cp)) s.append(decomposed, at, len);
    });
  }
  if (o.lowercase) {
    std::string lower;
    lower.reserve(s.size());
    for_each_cp(s, [&](char32_t cp, size_t, size_t) { append_lowercase(lower, cp); });
    s = std::move(lower);
  }
  return s;
}

std::vector<std::string_view> WordPiece::pre_tokenize(std::string_view text) const {
  std::vector<std::string_view> words;
  size_t start = std::string_view::npos;
  for_each_cp(text, [&](char32_t cp, size_t at, size_t len) {
    const bool space = is_whitespace(cp), punct = !space && has_pre_tokenizer_ && is_punctuation(cp);
    if ((space && has_pre_tokenizer_) || punct) {
      if (start != std::string_view::npos) words.push_back(text.substr(start, at - start));
      start = std::string_view::npos;
      if (punct) words.push_back(text.substr(at, len));
    } else if (start == std::string_view::npos) {
      start = at;
    }
  });
  if (start != std::string_view::npos) words.push_back(text.substr(start));
  return words;
}

// ---- encoding ----

void WordPiece::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<size_t> bounds;  // byte offsets of the character boundaries, end included
  for_each_cp(word, [&](char32_t, size_t at, size_t) { bounds.push_back(at); });
  bounds.push_back(word.size());
  if (int64_t(bounds.size()) - 1 > max_input_chars_per_word_) {
    out.push_back(unk_id_);
    return;
  }
  const size_t first = out.size();
  std::string piece;
  for (size_t start = 0; start + 1 < bounds.size();) {
    // Longest match first: shrink the candidate one character at a time.
    size_t end = bounds.size() - 1;
    int32_t found = -1;
    for (; end > start; --end) {
      piece.assign(start > 0 ? prefix_ : std::string());
      piece.append(word.substr(bounds[start], bounds[end] - bounds[start]));
      auto it = ids_.find(piece);
      if (it != ids_.end()) {
        found = it->second;
        break;
      }
    }
    if (found < 0) {  // one uncovered character makes the whole word unknown, as in BERT
      out.resize(first);
      out.push_back(unk_id_);
      return;
    }
    out.push_back(found);
    start = end;
  }
}

void WordPiece::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  const std::string normalized = normalize(text);
  for (std::string_view word : pre_tokenize(normalized)) encode_word(word, out);
}

void WordPiece::encode(std::string_view text, std::vector<int32_t>& out) const {
  size_t bad = find_invalid_utf8(text);
  KOTOBA_CHECK(bad == std::string_view::npos, "tokenizer: the text to encode is not valid UTF-8 at byte offset ", bad);
  // Added tokens are found in the raw text first (leftmost, longest), as HF's added vocabulary.
  size_t plain_from = 0;
  for (size_t i = 0; i < text.size();) {
    const Added* hit = nullptr;
    for (const Added& a : added_)
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    encode_plain(text.substr(plain_from, i - plain_from), out);
    out.push_back(hit->id);
    i += hit->content.size();
    plain_from = i;
  }
  encode_plain(text.substr(plain_from), out);
}

std::vector<int32_t> WordPiece::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> out;
  if (add_special_tokens) out = prefix_ids_;
  encode(text, out);
  if (add_special_tokens) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

std::string WordPiece::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    KOTOBA_CHECK(ids[i] >= 0 && ids[i] < size(), "tokenizer: decode: id ", ids[i], " at position ", i,
                 " is outside the vocabulary [0, ", size(), ")");
    const std::string& token = tokens_[size_t(ids[i])];
    if (!has_decoder_) {  // HF joins tokens with spaces when there is no decoder
      out += (i ? " " : "") + token;
      continue;
    }
    std::string part;
    if (i != 0 && token.compare(0, decoder_prefix_.size(), decoder_prefix_) == 0 && !decoder_prefix_.empty())
      part = token.substr(decoder_prefix_.size());
    else
      part = (i != 0 ? " " : "") + token;
    out += decoder_cleanup_ ? cleanup(std::move(part)) : part;
  }
  return out;
}

std::optional<int32_t> WordPiece::token_to_id(std::string_view token) const {
  auto it = ids_.find(std::string(token));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

const std::string& WordPiece::id_to_token(int32_t id) const {
  KOTOBA_CHECK(id >= 0 && id < size(), "tokenizer: id ", id, " is outside the vocabulary [0, ", size(), ")");
  return tokens_[size_t(id)];
}

std::vector<int32_t> WordPiece::special_ids() const {
  std::vector<int32_t> out;
  for (const Added& a : added_)
    if (a.special) out.push_back(a.id);
  std::sort(out.begin(), out.end());
  return out;
}

void WordPiece::finalize(const std::string& where) {
  ids_.clear();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    KOTOBA_CHECK(ids_.emplace(tokens_[i], int32_t(i)).second, where, ": token '", tokens_[i], "' appears twice");
  }
  auto unk = ids_.find(unk_token_);
  KOTOBA_CHECK(unk != ids_.end(), where, ": model.unk_token '", unk_token_, "' is not in the vocabulary");
  unk_id_ = unk->second;
  std::stable_sort(added_.begin(), added_.end(),
                   [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });
}

// ---- files ----

WordPiece WordPiece::from_json(const json& doc, const std::string& name) {
  try {
    return from_json_checked(doc, name);
  } catch (const json::exception& e) {  // a value of the wrong JSON type somewhere
    throw Error(kotoba::detail::concat("tokenizer.json '", name, "': a WordPiece field has the wrong type (", e.what(), ")"));
  }
}

WordPiece WordPiece::from_json_checked(const json& doc, const std::string& name) {
  auto fail = [&](const std::string& field, const std::string& what) -> void {
    throw Error(kotoba::detail::concat("tokenizer.json '", name, "': ", field, ": ", what));
  };
  WordPiece wp;
  if (!doc.is_object() || !doc.contains("model") || !doc["model"].is_object()) fail("model", "expected an object");
  const json& model = doc["model"];
  auto str = [&](const json& obj, const char* key, const std::string& field, const std::string& fallback) {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_string()) fail(field, "expected a string");
    return obj[key].get<std::string>();
  };
  wp.unk_token_ = str(model, "unk_token", "model.unk_token", "[UNK]");
  wp.prefix_ = str(model, "continuing_subword_prefix", "model.continuing_subword_prefix", "##");
  if (model.contains("max_input_chars_per_word")) {
    if (!model["max_input_chars_per_word"].is_number_integer() || model["max_input_chars_per_word"].get<int64_t>() < 1)
      fail("model.max_input_chars_per_word", "expected a positive integer");
    wp.max_input_chars_per_word_ = model["max_input_chars_per_word"].get<int64_t>();
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) fail("model.vocab", "expected an object of token: id");
  const json& vocab = model["vocab"];
  std::vector<std::string> tokens(vocab.size());
  std::vector<char> seen(vocab.size(), 0);
  for (auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= int64_t(vocab.size()))
      fail("model.vocab['" + token + "']", "expected an id in [0, " + std::to_string(vocab.size()) + ")");
    const size_t i = size_t(id.get<int64_t>());
    if (seen[i]) fail("model.vocab['" + token + "']", "id " + std::to_string(i) + " is used twice");
    seen[i] = 1;
    tokens[i] = token;
  }
  wp.tokens_ = std::move(tokens);
  if (doc.contains("added_tokens") && doc["added_tokens"].is_array()) {
    for (const json& a : doc["added_tokens"]) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id") ||
          !a["id"].is_number_integer())
        fail("added_tokens", "each entry needs a string 'content' and an integer 'id'");
      const std::string content = a["content"].get<std::string>();
      const int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id >= int64_t(wp.tokens_.size()) || wp.tokens_[size_t(id)] != content)
        fail("added_tokens['" + content + "']", "kotoba's WordPiece needs added tokens to be in model.vocab with the same id");
      if (content.empty()) fail("added_tokens", "empty content");
      wp.added_.push_back({content, int32_t(id), a.value("special", true)});
    }
  }
  const json normalizer = doc.value("normalizer", json());
  if (normalizer.is_null()) {
    wp.has_normalizer_ = false;
  } else {
    if (normalizer.value("type", "") != "BertNormalizer")
      fail("normalizer.type", "'" + normalizer.value("type", std::string("?")) + "' is not supported with model.type \"WordPiece\" (kotoba reads \"BertNormalizer\" or null)");
    wp.normalizer_.clean_text = normalizer.value("clean_text", true);
    wp.normalizer_.handle_chinese_chars = normalizer.value("handle_chinese_chars", true);
    wp.normalizer_.lowercase = normalizer.value("lowercase", true);
    if (normalizer.contains("strip_accents") && !normalizer["strip_accents"].is_null()) {
      if (!normalizer["strip_accents"].is_boolean()) fail("normalizer.strip_accents", "expected a boolean or null");
      wp.normalizer_.strip_accents = normalizer["strip_accents"].get<bool>();
    }
  }
  const json pre = doc.value("pre_tokenizer", json());
  if (pre.is_null()) wp.has_pre_tokenizer_ = false;
  else if (pre.value("type", "") != "BertPreTokenizer")
    fail("pre_tokenizer.type", "'" + pre.value("type", std::string("?")) + "' is not supported with model.type \"WordPiece\" (kotoba reads \"BertPreTokenizer\" or null)");
  const json dec = doc.value("decoder", json());
  if (dec.is_null()) {
    wp.has_decoder_ = false;
  } else {
    if (dec.value("type", "") != "WordPiece")
      fail("decoder.type", "'" + dec.value("type", std::string("?")) + "' is not supported with model.type \"WordPiece\" (kotoba reads \"WordPiece\" or null)");
    wp.decoder_prefix_ = dec.value("prefix", std::string("##"));
    wp.decoder_cleanup_ = dec.value("cleanup", true);
  }
  const json post = doc.value("post_processor", json());
  auto id_of = [&](const std::string& token, const std::string& field) {
    auto it = std::find(wp.tokens_.begin(), wp.tokens_.end(), token);
    if (it == wp.tokens_.end()) fail(field, "'" + token + "' is not in the vocabulary");
    return int32_t(it - wp.tokens_.begin());
  };
  if (post.is_null()) {
    wp.post_processor_ = false;
  } else if (post.value("type", "") == "BertProcessing") {
    if (!post.contains("cls") || !post["cls"].is_array() || post["cls"].size() != 2 || !post.contains("sep") ||
        !post["sep"].is_array() || post["sep"].size() != 2)
      fail("post_processor", "BertProcessing needs 'cls' and 'sep' as [token, id]");
    wp.prefix_ids_ = {id_of(post["cls"][0].get<std::string>(), "post_processor.cls")};
    wp.suffix_ids_ = {id_of(post["sep"][0].get<std::string>(), "post_processor.sep")};
  } else if (post.value("type", "") == "TemplateProcessing") {
    if (!post.contains("single") || !post["single"].is_array()) fail("post_processor.single", "expected an array");
    bool after = false;
    for (const json& piece : post["single"]) {
      if (piece.contains("Sequence")) {
        after = true;
        continue;
      }
      if (!piece.contains("SpecialToken") || !piece["SpecialToken"].contains("id"))
        fail("post_processor.single", "expected SpecialToken and Sequence entries");
      const std::string key = piece["SpecialToken"]["id"].get<std::string>();
      std::vector<int32_t> ids;
      const json* entry = post.contains("special_tokens") && post["special_tokens"].contains(key) ? &post["special_tokens"][key] : nullptr;
      if (entry && entry->contains("ids")) ids = (*entry)["ids"].get<std::vector<int32_t>>();
      else ids = {id_of(key, "post_processor.single")};
      for (int32_t id : ids)
        if (id < 0 || id >= int32_t(wp.tokens_.size()))
          fail("post_processor.special_tokens['" + key + "']", "id " + std::to_string(id) + " is outside the vocabulary");
      auto& into = after ? wp.suffix_ids_ : wp.prefix_ids_;
      into.insert(into.end(), ids.begin(), ids.end());
    }
  } else {
    fail("post_processor.type", "'" + post.value("type", std::string("?")) + "' is not supported with model.type \"WordPiece\" (kotoba reads TemplateProcessing, BertProcessing or null)");
  }
  wp.finalize("tokenizer.json '" + name + "'");
  return wp;
}

WordPiece WordPiece::from_vocab_txt(const std::string& path, const BertNormalizerOptions& normalizer) {
  std::string text = read_file(path);
  WordPiece wp;
  wp.normalizer_ = normalizer;
  std::stringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    wp.tokens_.push_back(line);
  }
  KOTOBA_CHECK(!wp.tokens_.empty(), path, ": vocab.txt is empty");
  for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    auto it = std::find(wp.tokens_.begin(), wp.tokens_.end(), s);
    if (it != wp.tokens_.end()) wp.added_.push_back({s, int32_t(it - wp.tokens_.begin()), true});
  }
  wp.finalize(path);
  auto cls = wp.token_to_id("[CLS]"), sep = wp.token_to_id("[SEP]");
  if (cls && sep) {
    wp.prefix_ids_ = {*cls};
    wp.suffix_ids_ = {*sep};
  } else {
    wp.post_processor_ = false;
  }
  return wp;
}

ordered_json WordPiece::to_json() const {
  ordered_json doc;
  doc["version"] = "1.0";
  doc["truncation"] = nullptr;
  doc["padding"] = nullptr;
  ordered_json added = ordered_json::array();
  std::vector<Added> by_id = added_;
  std::sort(by_id.begin(), by_id.end(), [](const Added& a, const Added& b) { return a.id < b.id; });
  for (const Added& a : by_id)
    added.push_back(ordered_json{{"id", a.id}, {"content", a.content}, {"single_word", false}, {"lstrip", false},
                                 {"rstrip", false}, {"normalized", false}, {"special", a.special}});
  doc["added_tokens"] = added;
  if (has_normalizer_)
    doc["normalizer"] = ordered_json{{"type", "BertNormalizer"},
                                     {"clean_text", normalizer_.clean_text},
                                     {"handle_chinese_chars", normalizer_.handle_chinese_chars},
                                     {"strip_accents", normalizer_.strip_accents ? ordered_json(*normalizer_.strip_accents) : ordered_json()},
                                     {"lowercase", normalizer_.lowercase}};
  else
    doc["normalizer"] = nullptr;
  doc["pre_tokenizer"] = has_pre_tokenizer_ ? ordered_json{{"type", "BertPreTokenizer"}} : ordered_json();
  if (post_processor_) {
    auto special = [&](int32_t id, int type_id) {
      return ordered_json{{"SpecialToken", {{"id", tokens_[size_t(id)]}, {"type_id", type_id}}}};
    };
    auto sequence = [](const char* which, int type_id) { return ordered_json{{"Sequence", {{"id", which}, {"type_id", type_id}}}}; };
    ordered_json single = ordered_json::array(), pair = ordered_json::array(), specials = ordered_json::object();
    for (int32_t id : prefix_ids_) single.push_back(special(id, 0)), pair.push_back(special(id, 0));
    single.push_back(sequence("A", 0));
    pair.push_back(sequence("A", 0));
    for (int32_t id : suffix_ids_) single.push_back(special(id, 0)), pair.push_back(special(id, 0));
    pair.push_back(sequence("B", 1));
    for (int32_t id : suffix_ids_) pair.push_back(special(id, 1));
    std::vector<int32_t> all = prefix_ids_;
    all.insert(all.end(), suffix_ids_.begin(), suffix_ids_.end());
    for (int32_t id : all) {
      const std::string& t = tokens_[size_t(id)];
      specials[t] = ordered_json{{"id", t}, {"ids", {id}}, {"tokens", {t}}};
    }
    doc["post_processor"] = ordered_json{{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
                                         {"special_tokens", specials}};
  } else {
    doc["post_processor"] = nullptr;
  }
  doc["decoder"] = has_decoder_ ? ordered_json{{"type", "WordPiece"}, {"prefix", decoder_prefix_}, {"cleanup", decoder_cleanup_}}
                                : ordered_json();
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < tokens_.size(); ++id) vocab.get_ref<ordered_json::object_t&>().emplace_back(tokens_[id], id);
  doc["model"] = ordered_json{{"type", "WordPiece"},
                              {"unk_token", unk_token_},
                              {"continuing_subword_prefix", prefix_},
                              {"max_input_chars_per_word", max_input_chars_per_word_},
                              {"vocab", vocab}};
  return doc;
}

void WordPiece::save(const std::string& path) const { write_file_atomically(path, to_json().dump(2) + "\n"); }

void WordPiece::save_vocab_txt(const std::string& path) const {
  std::string text;
  for (const std::string& t : tokens_) {
    KOTOBA_CHECK(t.find('\n') == std::string::npos, "wordpiece: token '", t, "' holds a line break; vocab.txt cannot store it");
    text += t + "\n";
  }
  write_file_atomically(path, text);
}

// ---- training ----

WordPiece WordPiece::train(const std::vector<std::string>& files, const WordPieceTrainOptions& o) {
  KOTOBA_CHECK(!files.empty(), "wordpiece train: no input files");
  KOTOBA_CHECK(o.min_frequency >= 1, "wordpiece train: min_frequency must be at least 1, got ", o.min_frequency);
  KOTOBA_CHECK(o.max_input_chars_per_word >= 1, "wordpiece train: max_input_chars_per_word must be positive");
  KOTOBA_CHECK(std::find(o.special_tokens.begin(), o.special_tokens.end(), o.unk_token) != o.special_tokens.end(),
               "wordpiece train: the unk token '", o.unk_token, "' must be one of the special tokens");
  KOTOBA_CHECK(o.vocab_size > int32_t(o.special_tokens.size()), "wordpiece train: vocab_size ", o.vocab_size,
               " leaves no room beside the ", o.special_tokens.size(), " special tokens");
  WordPiece wp;
  wp.normalizer_ = o.normalizer;
  wp.prefix_ = wp.decoder_prefix_ = o.continuing_subword_prefix;
  wp.unk_token_ = o.unk_token;
  wp.max_input_chars_per_word_ = o.max_input_chars_per_word;
  for (size_t i = 0; i < o.special_tokens.size(); ++i) {
    KOTOBA_CHECK(!o.special_tokens[i].empty(), "wordpiece train: special token ", i, " is empty");
    wp.tokens_.push_back(o.special_tokens[i]);
    wp.added_.push_back({o.special_tokens[i], int32_t(i), true});
  }
  std::stable_sort(wp.added_.begin(), wp.added_.end(),
                   [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });

  // Count the words of every line; special tokens in the text are cut out, never learned.
  std::unordered_map<std::string, int64_t> word_counts;
  auto count_text = [&](std::string_view line) {
    size_t from = 0;
    auto plain = [&](std::string_view part) {
      const std::string normalized = wp.normalize(part);
      for (std::string_view w : wp.pre_tokenize(normalized)) ++word_counts[std::string(w)];
    };
    for (size_t i = 0; i < line.size();) {
      const Added* hit = nullptr;
      for (const Added& a : wp.added_)
        if (line.compare(i, a.content.size(), a.content) == 0) hit = hit ? hit : &a;
      if (!hit) {
        ++i;
        continue;
      }
      plain(line.substr(from, i - from));
      i += hit->content.size();
      from = i;
    }
    plain(line.substr(from));
  };
  for (const std::string& path : files) {
    const std::string text = read_file(path);
    size_t bad = find_invalid_utf8(text);
    KOTOBA_CHECK(bad == std::string::npos, path, ": not valid UTF-8 at byte offset ", bad);
    const bool jsonl = ends_with(path, ".jsonl");
    size_t line_no = 0;
    for (size_t i = 0; i <= text.size();) {
      size_t end = text.find('\n', i);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + i, end - i);
      ++line_no;
      if (jsonl) {
        if (line.find_first_not_of(" \t\r") != std::string_view::npos) {
          json j;
          try {
            j = json::parse(line);
          } catch (const json::exception& e) {
            throw Error(kotoba::detail::concat(path, ": line ", line_no, ": not valid JSON (", e.what(), ")"));
          }
          KOTOBA_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(), path, ": line ", line_no,
                       ": expected an object with a string \"text\"");
          count_text(j["text"].get<std::string>());
        }
      } else {
        count_text(line);
      }
      i = end + 1;
    }
  }

  // Words as piece ids: the first character plain, the rest with the continuation prefix.
  std::unordered_map<std::string, int32_t> piece_ids;
  std::vector<std::string> pieces;
  auto piece_id = [&](const std::string& p) {
    auto [it, fresh] = piece_ids.emplace(p, int32_t(pieces.size()));
    if (fresh) pieces.push_back(p);
    return it->second;
  };
  struct Word {
    std::vector<int32_t> syms;
    int64_t count;
  };
  std::vector<Word> words;
  std::vector<std::string> sorted_words;
  for (auto& [w, c] : word_counts) sorted_words.push_back(w);
  std::sort(sorted_words.begin(), sorted_words.end());  // a fixed order: results independent of hashing
  std::vector<int64_t> char_freq;
  for (const std::string& w : sorted_words) {
    Word word{{}, word_counts[w]};
    int64_t chars = 0;
    for_each_cp(w, [&](char32_t, size_t, size_t) { ++chars; });
    if (chars > o.max_input_chars_per_word) continue;  // encoded as [UNK] whatever the vocabulary
    for_each_cp(w, [&](char32_t, size_t at, size_t len) {
      std::string p = (at ? o.continuing_subword_prefix : std::string()) + w.substr(at, len);
      int32_t id = piece_id(p);
      if (size_t(id) >= char_freq.size()) char_freq.resize(size_t(id) + 1, 0);
      char_freq[size_t(id)] += word.count;
      word.syms.push_back(id);
    });
    words.push_back(std::move(word));
  }
  // The alphabet, most frequent first, cut to what fits beside the specials.
  std::vector<int32_t> alphabet(pieces.size());
  for (size_t i = 0; i < alphabet.size(); ++i) alphabet[i] = int32_t(i);
  std::sort(alphabet.begin(), alphabet.end(), [&](int32_t a, int32_t b) {
    return char_freq[size_t(a)] != char_freq[size_t(b)] ? char_freq[size_t(a)] > char_freq[size_t(b)]
                                                         : pieces[size_t(a)] < pieces[size_t(b)];
  });
  const size_t room = size_t(o.vocab_size) - wp.tokens_.size();
  std::vector<char> in_vocab(pieces.size(), 0);
  for (size_t i = 0; i < alphabet.size() && i < room; ++i) in_vocab[size_t(alphabet[i])] = 1;
  std::set<std::string> taken(wp.tokens_.begin(), wp.tokens_.end());
  for (size_t i = 0; i < alphabet.size() && i < room; ++i)
    if (taken.insert(pieces[size_t(alphabet[i])]).second) wp.tokens_.push_back(pieces[size_t(alphabet[i])]);
  // Words with a character left out of the alphabet can never be covered: drop them.
  std::erase_if(words, [&](const Word& w) {
    return std::any_of(w.syms.begin(), w.syms.end(), [&](int32_t s) { return !in_vocab[size_t(s)]; });
  });

  // Pair and piece counts kept up to date as merges rewrite the words that hold them.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::vector<int64_t> sym_count(pieces.size(), 0);
  std::vector<std::vector<int32_t>> words_with(pieces.size());
  auto key = [](int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); };
  auto account = [&](const Word& w, int64_t sign) {
    for (size_t i = 0; i < w.syms.size(); ++i) {
      sym_count[size_t(w.syms[i])] += sign * w.count;
      if (i + 1 < w.syms.size()) {
        int64_t& c = pair_count[key(w.syms[i], w.syms[i + 1])];
        c += sign * w.count;
      }
    }
  };
  for (size_t i = 0; i < words.size(); ++i) {
    account(words[i], +1);
    for (int32_t s : words[i].syms) words_with[size_t(s)].push_back(int32_t(i));
  }
  Progress progress("wordpiece", o.vocab_size, {.unit = "tokens", .quiet = !o.show_progress});
  while (int32_t(wp.tokens_.size()) < o.vocab_size) {
    uint64_t best = 0;
    double best_score = -1;
    int64_t best_count = 0;
    std::string best_text;
    for (auto it = pair_count.begin(); it != pair_count.end();) {
      if (it->second <= 0) {
        it = pair_count.erase(it);
        continue;
      }
      const int64_t c = it->second;
      if (c >= o.min_frequency) {
        const int32_t a = int32_t(it->first >> 32), b = int32_t(it->first & 0xffffffffu);
        const double score = double(c) / (double(sym_count[size_t(a)]) * double(sym_count[size_t(b)]));
        bool better = score > best_score || (score == best_score && c > best_count);
        if (!better && score == best_score && c == best_count) {
          std::string text = pieces[size_t(a)] + pieces[size_t(b)];
          better = text < best_text;
        }
        if (better) {
          best = it->first;
          best_score = score;
          best_count = c;
          best_text = pieces[size_t(a)] + pieces[size_t(b)];
        }
      }
      ++it;
    }
    if (best_score < 0) break;  // no pair reaches min_frequency
    const int32_t a = int32_t(best >> 32), b = int32_t(best & 0xffffffffu);
    const std::string& right = pieces[size_t(b)];
    const std::string merged = pieces[size_t(a)] + right.substr(right.compare(0, o.continuing_subword_prefix.size(),
                                                                               o.continuing_subword_prefix) == 0
                                                                    ? o.continuing_subword_prefix.size()
                                                                    : 0);
    const int32_t m = piece_id(merged);
    if (size_t(m) >= sym_count.size()) {
      sym_count.resize(size_t(m) + 1, 0);
      words_with.resize(size_t(m) + 1);
    }
    if (taken.insert(merged).second) wp.tokens_.push_back(merged);
    std::vector<int32_t> holders = words_with[size_t(a)];
    std::sort(holders.begin(), holders.end());
    holders.erase(std::unique(holders.begin(), holders.end()), holders.end());
    for (int32_t wi : holders) {
      Word& w = words[size_t(wi)];
      bool has = false;
      for (size_t i = 0; i + 1 < w.syms.size(); ++i) has = has || (w.syms[i] == a && w.syms[i + 1] == b);
      if (!has) continue;
      account(w, -1);
      std::vector<int32_t> next;
      for (size_t i = 0; i < w.syms.size(); ++i) {
        if (i + 1 < w.syms.size() && w.syms[i] == a && w.syms[i + 1] == b) {
          next.push_back(m);
          ++i;
        } else {
          next.push_back(w.syms[i]);
        }
      }
      w.syms = std::move(next);
      account(w, +1);
      words_with[size_t(m)].push_back(wi);
    }
    if (pair_count[best] <= 0) pair_count.erase(best);
    progress.set(int64_t(wp.tokens_.size()));
  }
  progress.finish();
  auto cls = std::find(wp.tokens_.begin(), wp.tokens_.end(), "[CLS]");
  auto sep = std::find(wp.tokens_.begin(), wp.tokens_.end(), "[SEP]");
  if (cls != wp.tokens_.end() && sep != wp.tokens_.end()) {
    wp.prefix_ids_ = {int32_t(cls - wp.tokens_.begin())};
    wp.suffix_ids_ = {int32_t(sep - wp.tokens_.begin())};
  } else {
    wp.post_processor_ = false;
  }
  wp.finalize("wordpiece train");
  return wp;
}

}  // namespace kotoba::tokenizer
