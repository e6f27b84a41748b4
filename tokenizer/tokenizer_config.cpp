// Reader of tokenizer_config.json: only the keys kotoba uses are read, each checked for its type.
#include "tokenizer/tokenizer_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace kotoba::tokenizer {

namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& name, const std::string& key, const std::string& what) {
  throw Error(kotoba::detail::concat("tokenizer_config.json '", name, "': key ", key, ": ", what));
}

std::optional<std::string> token_string(const json& doc, const char* key, const std::string& name) {
  if (!doc.contains(key) || doc[key].is_null()) return std::nullopt;
  const json& v = doc[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail(name, key, "expected a string or an object with a string \"content\"");
}

std::optional<bool> flag(const json& doc, const char* key, const std::string& name) {
  if (!doc.contains(key) || doc[key].is_null()) return std::nullopt;
  if (!doc[key].is_boolean()) fail(name, key, "expected true or false");
  return doc[key].get<bool>();
}

}  // namespace

TokenizerConfig TokenizerConfig::parse(std::string_view text, const std::string& name) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(kotoba::detail::concat("tokenizer_config.json '", name, "': not valid JSON (", e.what(), ")"));
  }
  KOTOBA_CHECK(doc.is_object(), "tokenizer_config.json '", name, "': expected a JSON object at the top level");
  TokenizerConfig cfg;
  cfg.bos_token = token_string(doc, "bos_token", name);
  cfg.eos_token = token_string(doc, "eos_token", name);
  cfg.pad_token = token_string(doc, "pad_token", name);
  cfg.unk_token = token_string(doc, "unk_token", name);
  cfg.add_bos_token = flag(doc, "add_bos_token", name);
  cfg.add_eos_token = flag(doc, "add_eos_token", name);
  if (doc.contains("model_max_length") && !doc["model_max_length"].is_null()) {
    const json& v = doc["model_max_length"];
    if (v.is_number_unsigned() || v.is_number_integer()) {
      if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) {
        // transformers writes int(1e30) for "no limit"
      } else {
        int64_t n = v.get<int64_t>();
        if (n <= 0) fail(name, "model_max_length", "expected a positive integer, got " + std::to_string(n));
        cfg.model_max_length = n;
      }
    } else if (v.is_number_float()) {
      double d = v.get<double>();
      if (!(d > 0) || d != std::floor(d)) fail(name, "model_max_length", "expected a positive integer");
      if (d < 9.2e18) cfg.model_max_length = int64_t(d);
    } else {
      fail(name, "model_max_length", "expected an integer");
    }
  }
  if (doc.contains("tokenizer_class") && !doc["tokenizer_class"].is_null()) {
    if (!doc["tokenizer_class"].is_string()) fail(name, "tokenizer_class", "expected a string");
    cfg.tokenizer_class = doc["tokenizer_class"].get<std::string>();
  }
  if (doc.contains("chat_template") && !doc["chat_template"].is_null()) {
    const json& t = doc["chat_template"];
    if (t.is_string()) {
      cfg.chat_template = t.get<std::string>();
      cfg.chat_templates.emplace_back("default", cfg.chat_template);
    } else if (t.is_array()) {
      for (size_t i = 0; i < t.size(); ++i) {
        const json& e = t[i];
        std::string key = "chat_template[" + std::to_string(i) + "]";
        if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("template") ||
            !e["template"].is_string())
          fail(name, key, "expected {\"name\": string, \"template\": string}");
        cfg.chat_templates.emplace_back(e["name"].get<std::string>(), e["template"].get<std::string>());
        if (cfg.chat_templates.back().first == "default") cfg.chat_template = cfg.chat_templates.back().second;
      }
    } else {
      fail(name, "chat_template", "expected a string or a list of {\"name\", \"template\"}");
    }
  }
  return cfg;
}

TokenizerConfig TokenizerConfig::read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, "tokenizer_config.json '", path, "': cannot open the file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  KOTOBA_CHECK(!in.bad(), "tokenizer_config.json '", path, "': error reading the file");
  return parse(text, path);
}

}  // namespace kotoba::tokenizer
