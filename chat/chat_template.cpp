// The four chat template styles rendered directly, each following its Jinja source below step by
// step so that the bytes equal transformers' apply_chat_template (checked by
// tests/test_chat.cpp against tests/chat_template_reference.py).
#include "chat/chat_template.h"

#include <cstdint>

#include "core/error.h"
#include "tokenizer/tokenizer_config.h"

namespace kotoba::chat {

namespace {

// kotoba's sources. ChatML is the template of HF's chat-templating docs (teknium/OpenHermes-2.5);
// Llama-2 is meta-llama/Llama-2-7b-chat-hf's (the double space before `+ content` is theirs);
// Alpaca and plain are kotoba's own, written to need nothing but messages and the flag.
const std::string kChatML =
    R"({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";
const std::string kLlama2 =
    R"({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})";
const std::string kAlpaca =
    R"({% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% set loop_messages = messages[1:] %}{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' }}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% if message['input'] is defined and message['input'] %}{{ '### Input:\n' + message['input'] + '\n\n' }}{% endif %}{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %})";
const std::string kPlain =
    R"({% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + '\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %})";
const char kAlpacaPreamble[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";

// tokenizer_config.json files carry a Jinja "\n" escape either as written or already decoded to a
// newline by JSON ("\\n" vs "\n" in the file); both mean the same template.
std::string unescape_newlines(std::string_view jinja) {
  std::string out;
  out.reserve(jinja.size());
  for (size_t i = 0; i < jinja.size(); ++i) {
    if (jinja[i] == '\\' && i + 1 < jinja.size() && jinja[i + 1] == 'n') {
      out += '\n';
      ++i;
    } else {
      out += jinja[i];
    }
  }
  return out;
}

// Decodes the code point starting at text[i] (advancing i); invalid UTF-8 is an Error.
uint32_t decode_utf8(std::string_view text, size_t& i) {
  const auto byte = [&](size_t k) { return uint8_t(text[k]); };
  const uint8_t lead = byte(i);
  size_t length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 0;
  KOTOBA_CHECK(length != 0 && i + length <= text.size(), "chat template: message text is not valid UTF-8 (byte ",
               i, ")");
  uint32_t cp = length == 1 ? lead : lead & (0xFF >> (length + 1));
  for (size_t k = 1; k < length; ++k) {
    KOTOBA_CHECK((byte(i + k) & 0xC0) == 0x80, "chat template: message text is not valid UTF-8 (byte ", i + k, ")");
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  i += length;
  return cp;
}

// Python's str.isspace(): Unicode White_Space-like set (bidi WS/B/S or category Zs).
bool python_isspace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

void check_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) decode_utf8(text, i);
}

std::string render_chatml(const std::vector<Message>& messages, bool add_generation_prompt) {
  std::string out;
  for (const Message& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_llama2(const std::vector<Message>& messages, const std::string& bos, const std::string& eos) {
  const bool has_system = messages[0].role == "system";
  std::string out;
  for (size_t i = has_system ? 1 : 0, index = 0; i < messages.size(); ++i, ++index) {
    const Message& m = messages[i];
    KOTOBA_CHECK((m.role == "user") == (index % 2 == 0), "chat template llama2: message ", i, " has role '", m.role,
                 "'; roles must alternate user/assistant/user/assistant/... after an optional system message");
    std::string content = index == 0 && has_system
                              ? "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" + m.content
                              : m.content;
    if (m.role == "user")
      out += bos + "[INST] " + python_strip(content) + " [/INST]";
    else if (m.role == "assistant")
      out += " " + python_strip(content) + " " + eos;
  }
  return out;
}

std::string render_alpaca(const std::vector<Message>& messages, bool add_generation_prompt) {
  std::string out;
  size_t first = 0;
  if (!messages.empty() && messages[0].role == "system") {
    out += messages[0].content + "\n\n";
    first = 1;
  } else {
    out += kAlpacaPreamble;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == "user") {
      out += "### Instruction:\n" + m.content + "\n\n";
      if (!m.input.empty()) out += "### Input:\n" + m.input + "\n\n";
    } else if (m.role == "assistant") {
      out += "### Response:\n" + m.content + "\n\n";
    }
  }
  if (add_generation_prompt) out += "### Response:\n";
  return out;
}

std::string render_plain(const std::vector<Message>& messages, bool add_generation_prompt) {
  std::string out;
  for (const Message& m : messages) {
    if (m.role == "system")
      out += m.content + "\n\n";
    else if (m.role == "user")
      out += "User: " + m.content + "\n";
    else if (m.role == "assistant")
      out += "Assistant: " + m.content + "\n";
  }
  if (add_generation_prompt) out += "Assistant:";
  return out;
}

}  // namespace

std::string python_strip(std::string_view text) {
  size_t begin = 0, end = text.size();
  // Leading whitespace: advance over code points while they are spaces.
  for (size_t i = 0; i < text.size();) {
    size_t next = i;
    if (!python_isspace(decode_utf8(text, next))) break;
    begin = i = next;
  }
  // Trailing: walk the code points of the rest and remember where the last non-space one ends.
  size_t last_end = begin;
  for (size_t i = begin; i < text.size();) {
    if (!python_isspace(decode_utf8(text, i))) last_end = i;
  }
  end = last_end;
  return std::string(text.substr(begin, end - begin));
}

const char* template_style_name(TemplateStyle style) {
  switch (style) {
    case TemplateStyle::chatml: return "chatml";
    case TemplateStyle::llama2: return "llama2";
    case TemplateStyle::alpaca: return "alpaca";
    case TemplateStyle::plain: return "plain";
  }
  return "?";
}

TemplateStyle parse_template_style(std::string_view name) {
  for (TemplateStyle s : {TemplateStyle::chatml, TemplateStyle::llama2, TemplateStyle::alpaca, TemplateStyle::plain})
    if (name == template_style_name(s)) return s;
  throw Error(detail::concat("unknown chat template '", name, "': expected chatml, llama2, alpaca or plain"));
}

const std::string& template_jinja(TemplateStyle style) {
  switch (style) {
    case TemplateStyle::chatml: return kChatML;
    case TemplateStyle::llama2: return kLlama2;
    case TemplateStyle::alpaca: return kAlpaca;
    case TemplateStyle::plain: return kPlain;
  }
  throw Error("template_jinja: invalid template style");
}

std::optional<TemplateStyle> recognise_template(std::string_view jinja) {
  const std::string wanted = unescape_newlines(jinja);
  for (TemplateStyle s : {TemplateStyle::chatml, TemplateStyle::llama2, TemplateStyle::alpaca, TemplateStyle::plain})
    if (wanted == unescape_newlines(template_jinja(s))) return s;
  // The Llama-2 source as some copies carry it, with a single space before `+ content.strip()`.
  std::string single_space = unescape_newlines(kLlama2);
  const std::string doubled = "' '  + content";
  single_space.replace(single_space.find(doubled), doubled.size(), "' ' + content");
  if (wanted == single_space) return TemplateStyle::llama2;
  return std::nullopt;
}

ChatTemplate::ChatTemplate(TemplateStyle style, std::string bos_token, std::string eos_token)
    : style_(style), bos_(std::move(bos_token)), eos_(std::move(eos_token)) {}

ChatTemplate ChatTemplate::from_tokenizer_config(const tokenizer::TokenizerConfig& config, const std::string& file) {
  KOTOBA_CHECK(!config.chat_template.empty(), file,
               " has no \"chat_template\"; name one with --template chatml|llama2|alpaca|plain");
  std::optional<TemplateStyle> style = recognise_template(config.chat_template);
  KOTOBA_CHECK(style.has_value(), file,
               ": \"chat_template\" is not one kotoba renders (ChatML, Llama-2 [INST], Alpaca, plain "
               "User:/Assistant:); name one with --template chatml|llama2|alpaca|plain");
  return ChatTemplate(*style, config.bos_token.value_or(""), config.eos_token.value_or(""));
}

std::string ChatTemplate::render(const std::vector<Message>& messages, bool add_generation_prompt) const {
  // apply_chat_template refuses an empty conversation (it looks at conversation[0]).
  KOTOBA_CHECK(!messages.empty(), "chat template ", template_style_name(style_), ": the conversation has no message");
  for (const Message& m : messages) {
    check_utf8(m.content);
    check_utf8(m.input);
  }
  switch (style_) {
    case TemplateStyle::chatml: return render_chatml(messages, add_generation_prompt);
    case TemplateStyle::llama2: return render_llama2(messages, bos_, eos_);  // has no generation prompt
    case TemplateStyle::alpaca: return render_alpaca(messages, add_generation_prompt);
    case TemplateStyle::plain: return render_plain(messages, add_generation_prompt);
  }
  throw Error("ChatTemplate::render: invalid template style");
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  std::vector<std::string> stops;
  switch (style_) {
    case TemplateStyle::chatml: stops = {"<|im_end|>"}; break;
    case TemplateStyle::llama2: stops = {"[INST]"}; break;
    case TemplateStyle::alpaca: stops = {"### Instruction:"}; break;
    case TemplateStyle::plain: stops = {"\nUser:"}; break;
  }
  if (!eos_.empty()) stops.push_back(eos_);
  return stops;
}

}  // namespace kotoba::chat
