// A chat's state: an optional system message and the user/assistant turns, bounded by a number
// of turns and by a token budget (the oldest whole turns drop first; the system message stays).
#pragma once
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "chat/chat_template.h"

namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::chat {

class Conversation {
 public:
  // max_turns: the most user turns kept (0: no limit); adding one more drops the oldest.
  explicit Conversation(size_t max_turns = 0) : max_turns_(max_turns) {}

  void set_system(std::string text) { system_ = std::move(text); }
  void clear_system() { system_.reset(); }
  const std::optional<std::string>& system() const { return system_; }

  // A user message starts a turn; an assistant message answers the last one (an Error when there
  // is no user turn yet or it is answered already).
  void add_user(std::string content, std::string input = "");
  void add_assistant(std::string content);
  // Adds messages as read from a file: "system" replaces the system message, others as above.
  void add(const Message& message);
  // Forgets the turns; the system message stays.
  void reset() { turns_.clear(); }
  // Forgets the newest turn (e.g. one that could not be answered).
  void drop_last_turn() {
    if (!turns_.empty()) turns_.pop_back();
  }

  size_t turns() const { return turns_.size(); }
  // The system message (when set) followed by each turn's user and assistant messages.
  std::vector<Message> messages() const;

  // Drops the oldest turns until the template's rendering (with the generation prompt) counts at
  // most `budget` tokens. Returns how many turns were dropped. An Error when the newest turn with
  // the system message alone does not fit (nothing is dropped then).
  using TokenCounter = std::function<size_t(const std::string&)>;
  size_t fit(const ChatTemplate& chat_template, const TokenCounter& count_tokens, size_t budget);
  // With the tokenizer's count of the rendered text (special tokens parsed, none added: the
  // template writes BOS itself where it wants one).
  size_t fit(const ChatTemplate& chat_template, const tokenizer::Tokenizer& tokenizer, size_t budget);

 private:
  struct Turn {
    Message user;
    std::optional<std::string> assistant;
  };
  std::optional<std::string> system_;
  std::vector<Turn> turns_;
  size_t max_turns_;
};

}  // namespace kotoba::chat
