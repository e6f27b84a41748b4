// `kotoba chat`: a REPL over a model directory's causal LM with a chat template and a history
// bounded by the context window, streaming each reply; or one reply to a conversation file.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "chat/conversation.h"
#include "cli/command.h"
#include "core/utf8.h"
#include "core/parallel.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// --input: one JSON object {"role", "content"[, "input"]} per line; errors name the file and line.
chat::Conversation read_conversation(const std::string& path, size_t max_turns) {
  std::ifstream in(path);
  KOTOBA_CHECK(in, "chat: cannot open --input '", path, "'");
  chat::Conversation conversation(max_turns);
  std::string line, last_role;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (trim(line).empty()) continue;
    const std::string where = detail::concat("chat: --input '", path, "' line ", number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(detail::concat(where, " is not JSON: ", e.what()));
    }
    KOTOBA_CHECK(j.is_object() && j.contains("role") && j["role"].is_string() && j.contains("content") &&
                     j["content"].is_string() && (!j.contains("input") || j["input"].is_string()),
                 where, " must be an object with string \"role\" and \"content\" (and optionally \"input\")");
    try {
      conversation.add(chat::Message{j["role"], j["content"], j.value("input", std::string())});
    } catch (const Error& e) {
      throw Error(detail::concat(where, ": ", e.what()));
    }
    last_role = j["role"];
  }
  KOTOBA_CHECK(last_role == "user", "chat: --input '", path, "' must end with a \"user\" message to answer",
               last_role.empty() ? " (it holds none)" : detail::concat(" (its last is \"", last_role, "\")"));
  return conversation;
}

struct Chat {
  nn::CausalLM& model;
  const tokenizer::Tokenizer& tok;
  chat::ChatTemplate chat_template;
  infer::GenerationOptions options;
  std::optional<int32_t> eos;
  size_t context;

  // Fits the history to the context (leaving room for the reply), generates, and returns the
  // reply; `print` receives the text as it becomes final, stop strings left out.
  std::string reply(chat::Conversation& conversation, const std::function<void(const std::string&)>& print,
                    infer::FinishReason* reason = nullptr) {
    KOTOBA_CHECK(size_t(options.max_new_tokens) < context, "chat: --max-new-tokens (", options.max_new_tokens,
                 ") leaves no room for the conversation in the model's context of ", context);
    conversation.fit(chat_template, tok, context - size_t(options.max_new_tokens));
    const std::string prompt = chat_template.render(conversation.messages(), /*add_generation_prompt=*/true);
    std::vector<int32_t> ids = tok.encode(prompt, /*add_special_tokens=*/false);
    if (ids.empty() && eos) ids = {*eos};
    KOTOBA_CHECK(!ids.empty(), "chat: the rendered prompt is empty and the tokenizer has no EOS to start from");
    infer::TextStream stream(options.detokenize, options.stop_strings);
    std::string shown;
    auto emit = [&](std::string piece) {
      if (stream.stopped())  // the piece that completed a stop string ends with it; it is not shown
        for (const std::string& s : options.stop_strings)
          if (piece.size() >= s.size() && piece.compare(piece.size() - s.size(), s.size(), s) == 0) {
            piece.resize(piece.size() - s.size());
            break;
          }
      // Templates end their cue before the reply's first space ("Assistant:"): don't print it.
      if (shown.empty()) piece.erase(0, piece.find_first_not_of(" "));
      if (piece.empty() && shown.empty()) return;
      shown += piece;
      print(piece);
    };
    auto on_token = [&](size_t, size_t, int32_t id) {
      if (eos && id == *eos) return true;
      emit(stream.push(id));
      return !stream.stopped();
    };
    auto results = infer::generate_batch(model, {ids}, options, on_token);
    if (!stream.stopped()) emit(stream.finish());
    if (reason) *reason = results[0].finish_reason;
    return trim(shown);
  }
};

int cmd_chat(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout
        << "kotoba chat MODEL [--template chatml|llama2|alpaca|plain] [--system TEXT] [--max-new-tokens N]\n"
           "                  [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R] [--greedy]\n"
           "                  [--seed S] [--max-turns N] [--input conversation.jsonl [--json]] [--threads N]\n"
           "                  [--device cpu|cuda]\n"
           "  Chats with the model directory MODEL. The template is MODEL/tokenizer_config.json's chat_template\n"
           "  when it is one kotoba knows, else the one --template names. Reads a line from stdin per turn and\n"
           "  streams the reply; `quit`, `exit` or `bye` (or end of input) leaves, `/reset` forgets the turns,\n"
           "  `/system TEXT` sets the system message (`/system` alone removes it). The oldest turns are dropped\n"
           "  when the conversation and N new tokens would not fit the model's context (or beyond --max-turns).\n"
           "  --input FILE reads messages, one {\"role\", \"content\"} JSON object per line, ending with a user\n"
           "  message, prints the reply to it and exits (--json: {\"reply\", \"finish_reason\"}).\n"
           "  Sampling defaults come from MODEL/generation_config.json, as for `kotoba generate`.\n"
           "  --device cuda runs the model on the GPU (default cpu; LLM.int8() weights run on the CPU only).\n";
    return 0;
  }
  Flags f = Flags::parse(args, "chat",
                         {"template", "system", "max-new-tokens", "temperature", "top-k", "top-p", "repetition-penalty",
                          "seed", "max-turns", "input", "threads", "device"},
                         {"greedy", "json"}, 1);
  KOTOBA_CHECK(f.positional().size() == 1, "chat: expected the model directory (kotoba chat MODEL)");
  KOTOBA_CHECK(!f.has("json") || f.has("input"), "chat: --json needs --input (the REPL prints text)");
  // Check the template name before the (slow) model load.
  std::optional<chat::TemplateStyle> named;
  if (f.has("template")) {
    try {
      named = chat::parse_template_style(f.str("template"));
    } catch (const Error& e) {
      throw Error(detail::concat("chat: --template: ", e.what()));
    }
  }
  const int64_t max_turns = f.integer("max-turns", 0);
  KOTOBA_CHECK(max_turns >= 0, "chat: --max-turns must be >= 0 (0: no limit), got ", max_turns);
  set_num_threads(int(f.integer("threads", 0)));
  const Device device = cli::device_flag(f, "chat");
  LoadedModel loaded = load_model_dir(f.positional()[0]);
  cli::move_model(*loaded.model, device, "chat");
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(loaded.dir);

  const std::string config_path = (std::filesystem::path(loaded.dir) / "tokenizer_config.json").string();
  tokenizer::TokenizerConfig config;
  const bool has_config = std::filesystem::exists(config_path);
  if (has_config) config = tokenizer::TokenizerConfig::read(config_path);
  const GenerationConfig& defaults = loaded.generation;
  std::optional<int32_t> eos =
      defaults.eos_token_id ? std::optional<int32_t>(int32_t(*defaults.eos_token_id)) : tok.eos_id();
  std::optional<chat::ChatTemplate> chat_template;
  if (named) {
    std::string bos = config.bos_token.value_or(tok.bos_id() ? tok.id_to_token(*tok.bos_id()) : "");
    std::string eos_text = config.eos_token.value_or(eos ? tok.id_to_token(*eos) : "");
    chat_template.emplace(*named, bos, eos_text);
  } else {
    KOTOBA_CHECK(has_config, "chat: ", loaded.dir,
                 " has no tokenizer_config.json naming a chat template; name one with --template "
                 "chatml|llama2|alpaca|plain");
    chat_template.emplace(chat::ChatTemplate::from_tokenizer_config(config, config_path));
  }

  infer::GenerationOptions o;
  o.max_new_tokens = f.integer("max-new-tokens", defaults.max_new_tokens);
  o.temperature = float(f.num("temperature", defaults.temperature));
  o.top_k = f.integer("top-k", defaults.top_k);
  o.top_p = float(f.num("top-p", defaults.top_p));
  o.repetition_penalty = float(f.num("repetition-penalty", defaults.repetition_penalty));
  o.seed = uint64_t(f.integer("seed", 0));
  KOTOBA_CHECK(o.max_new_tokens >= 1, "chat: --max-new-tokens must be >= 1, got ", o.max_new_tokens);
  KOTOBA_CHECK(o.temperature >= 0, "chat: --temperature must be >= 0, got ", o.temperature);
  KOTOBA_CHECK(o.top_k >= 0, "chat: --top-k must be >= 0 (0: off), got ", o.top_k);
  KOTOBA_CHECK(o.top_p > 0 && o.top_p <= 1, "chat: --top-p must be in (0, 1], got ", o.top_p);
  KOTOBA_CHECK(o.repetition_penalty > 0, "chat: --repetition-penalty must be positive, got ", o.repetition_penalty);
  o.do_sample = defaults.do_sample && !f.has("greedy") && o.temperature > 0;
  if (!o.do_sample) o.temperature = 1.0f;
  if (eos) o.eos_token_ids = {*eos};
  o.stop_strings = chat_template->stop_strings();
  o.detokenize = [&tok](std::span<const int32_t> ids) { return tok.decode(ids); };

  Chat session{*loaded.model, tok, *chat_template, o, eos, size_t(loaded.model->max_positions())};

  if (f.has("input")) {
    chat::Conversation conversation = read_conversation(f.str("input"), size_t(max_turns));
    if (f.has("system")) conversation.set_system(f.str("system"));
    infer::FinishReason reason{};
    std::string streamed;
    const std::string reply =
        session.reply(conversation, [&](const std::string& piece) { streamed += piece; }, &reason);
    if (f.has("json"))
      std::cout << nlohmann::json{{"reply", reply}, {"finish_reason", infer::finish_reason_name(reason)}}.dump(
                       -1, ' ', false, nlohmann::json::error_handler_t::replace)
                << std::endl;
    else
      std::cout << reply << std::endl;
    return 0;
  }

  chat::Conversation conversation{size_t(max_turns)};
  if (f.has("system")) conversation.set_system(f.str("system"));
  std::cerr << "kotoba chat: " << loaded.dir << " (template " << chat::template_style_name(chat_template->style())
            << "). Type quit, exit or bye to leave; /reset forgets the conversation; /system TEXT sets the "
               "system message.\n";
  std::string line;
  while (true) {
    std::cout << "> " << std::flush;
    if (!std::getline(std::cin, line)) {
      std::cout << "\n";
      break;
    }
    const std::string text = trim(line);
    std::string lower = text;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (lower == "quit" || lower == "exit" || lower == "bye") break;
    if (text.empty()) continue;
    if (text == "/reset") {
      conversation.reset();
      std::cout << "(conversation reset)\n";
      continue;
    }
    if (text == "/system" || text.rfind("/system ", 0) == 0) {
      const std::string system = trim(text.substr(7));
      if (system.empty())
        conversation.clear_system();
      else
        conversation.set_system(system);
      std::cout << (system.empty() ? "(system message removed)\n" : "(system message set)\n");
      continue;
    }
    conversation.add_user(text);
    try {
      const std::string reply = session.reply(conversation, [](const std::string& piece) { std::cout << piece << std::flush; });
      std::cout << "\n";
      // Random or small models can emit bytes that are not UTF-8; the history keeps what was shown.
      conversation.add_assistant(replace_invalid_utf8(reply));
    } catch (const Error& e) {
      // A turn that does not fit is the user's to shorten; the session goes on without it.
      std::cout << "\n";
      std::cerr << "error: " << e.what() << "\n";
      conversation.drop_last_turn();
    }
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("chat", "chat with a model (REPL with streaming, or one reply to a conversation file)", cmd_chat);
