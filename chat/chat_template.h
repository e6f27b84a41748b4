// Chat templates: ChatML, Llama-2 [INST], Alpaca and plain "User:/Assistant:", rendered in C++
// byte for byte as transformers' apply_chat_template renders their Jinja sources (no Jinja engine:
// a tokenizer_config.json chat_template is recognised as one of these, or refused).
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kotoba::tokenizer {
struct TokenizerConfig;
}

namespace kotoba::chat {

struct Message {
  std::string role;     // "system", "user", "assistant" (ChatML passes any role through)
  std::string content;
  std::string input;    // Alpaca only: a user message's "### Input:" (empty: none)
};

enum class TemplateStyle { chatml, llama2, alpaca, plain };

// "chatml", "llama2", "alpaca", "plain".
const char* template_style_name(TemplateStyle style);
// The inverse; an unknown name is an Error listing the known ones.
TemplateStyle parse_template_style(std::string_view name);
// The Jinja source kotoba renders for a style (what `kotoba chat` writes for transformers and what
// the tests hand to apply_chat_template).
const std::string& template_jinja(TemplateStyle style);
// A Jinja chat template identified as one of the styles: kotoba's own sources above and the
// well-known published ones (OpenHermes/HF-docs ChatML, meta-llama/Llama-2-*-chat-hf), compared
// exactly after the escape "\n" and a literal newline are taken as the same; nullopt otherwise.
std::optional<TemplateStyle> recognise_template(std::string_view jinja);

class ChatTemplate {
 public:
  ChatTemplate(TemplateStyle style, std::string bos_token, std::string eos_token);
  // The template of tokenizer_config.json (its "chat_template", or the "default" of a named list):
  // an Error naming `file` when it has none or one that is not a known style (use --template NAME).
  static ChatTemplate from_tokenizer_config(const tokenizer::TokenizerConfig& config, const std::string& file);

  // As apply_chat_template(messages, tokenize=False, add_generation_prompt=...). Llama-2 requires
  // user/assistant alternation after an optional leading system message (the Jinja source raises
  // the same); content must be valid UTF-8; an empty conversation is an Error, as in transformers.
  std::string render(const std::vector<Message>& messages, bool add_generation_prompt) const;
  // Texts that end an assistant reply under this template (for generation's stop strings).
  std::vector<std::string> stop_strings() const;

  TemplateStyle style() const { return style_; }
  const std::string& bos_token() const { return bos_; }
  const std::string& eos_token() const { return eos_; }

 private:
  TemplateStyle style_;
  std::string bos_, eos_;
};

// Python's str.strip(): removes str.isspace() code points from both ends of UTF-8 text.
std::string python_strip(std::string_view text);

}  // namespace kotoba::chat
