// tokenizer_config.json as transformers writes it: the special tokens by name, whether BOS/EOS
// are added, the context length and the chat template(s).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kotoba::tokenizer {

struct TokenizerConfig {
  // Token strings; the file gives each as a string or as {"content": "...", ...}.
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
  std::optional<bool> add_bos_token, add_eos_token;
  std::optional<int64_t> model_max_length;  // absent when the file has none or the "no limit" 1e30
  std::string tokenizer_class;              // e.g. "LlamaTokenizer", "" when absent
  // The template used when none is named: "chat_template" as a string, or the entry named
  // "default" of a list of {name, template}; "" when there is none.
  std::string chat_template;
  std::vector<std::pair<std::string, std::string>> chat_templates;  // (name, template), in file order

  // Errors name the file (or `name`) and the key.
  static TokenizerConfig read(const std::string& path);
  static TokenizerConfig parse(std::string_view text, const std::string& name);
};

}  // namespace kotoba::tokenizer
