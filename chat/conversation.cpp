// Conversation: turns kept whole so a template never sees a reply without its question.
#include "chat/conversation.h"

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace kotoba::chat {

void Conversation::add_user(std::string content, std::string input) {
  turns_.push_back(Turn{Message{"user", std::move(content), std::move(input)}, std::nullopt});
  if (max_turns_ > 0 && turns_.size() > max_turns_) turns_.erase(turns_.begin(), turns_.end() - ptrdiff_t(max_turns_));
}

void Conversation::add_assistant(std::string content) {
  KOTOBA_CHECK(!turns_.empty(), "conversation: an assistant message needs a user message before it");
  KOTOBA_CHECK(!turns_.back().assistant.has_value(),
               "conversation: two assistant messages in a row (each must answer its own user message)");
  turns_.back().assistant = std::move(content);
}

void Conversation::add(const Message& message) {
  if (message.role == "system")
    set_system(message.content);
  else if (message.role == "user")
    add_user(message.content, message.input);
  else if (message.role == "assistant")
    add_assistant(message.content);
  else
    throw Error(detail::concat("conversation: unknown role '", message.role, "' (expected system, user or assistant)"));
}

std::vector<Message> Conversation::messages() const {
  std::vector<Message> out;
  if (system_) out.push_back(Message{"system", *system_, ""});
  for (const Turn& t : turns_) {
    out.push_back(t.user);
    if (t.assistant) out.push_back(Message{"assistant", *t.assistant, ""});
  }
  return out;
}

size_t Conversation::fit(const ChatTemplate& chat_template, const TokenCounter& count_tokens, size_t budget) {
  // Find the first turn from which the rest fits, then drop everything before it at once, so a
  // failure leaves the conversation as it was.
  Conversation trial = *this;
  size_t dropped = 0;
  while (true) {
    const size_t tokens = count_tokens(chat_template.render(trial.messages(), /*add_generation_prompt=*/true));
    if (tokens <= budget) break;
    KOTOBA_CHECK(trial.turns_.size() > 1, "conversation: the ", trial.turns_.empty() ? "system message" : "last turn",
                 trial.system_ && !trial.turns_.empty() ? " with the system message" : "", " takes ", tokens,
                 " tokens, more than the budget of ", budget, " (shorten it, or raise the budget)");
    trial.turns_.erase(trial.turns_.begin());
    ++dropped;
  }
  turns_ = std::move(trial.turns_);
  return dropped;
}

size_t Conversation::fit(const ChatTemplate& chat_template, const tokenizer::Tokenizer& tokenizer, size_t budget) {
  return fit(
      chat_template, [&](const std::string& text) { return tokenizer.encode(text, /*add_special_tokens=*/false).size(); },
      budget);
}

}  // namespace kotoba::chat
