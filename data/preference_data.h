// Preference data for alignment (reward models, DPO, PPO/GRPO prompts): a prompt and two replies,
// one preferred, read from the shapes people publish it in, with errors that give file, line and
// field.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"
#include "data/instruct_data.h"

namespace kotoba::data {

// The shapes on disk (JSONL, or a .json file holding one array). Keys per record:
//   pairs    prompt, chosen, rejected
//   choice   prompt, response_1, response_2, preference (1 or 2: the preferred response)
//   ranked   prompt, responses: [K strings], ranks: [K integers, 1 = best]; expanded to every pair
//            whose ranks differ (the better-ranked reply is the chosen one), K(K-1)/2 at most
//   prompts  prompt only (the prompts an RL run samples from)
// `prompt` is a string (one user turn) or a conversation [{role, content}, ...] ending with a user
// turn (TRL's conversational form); a reply is a string or [{role: assistant, content}].
enum class PreferenceShape { pairs, choice, ranked, prompts };

const char* preference_shape_name(PreferenceShape shape);
// "pairs", "choice", "ranked" or "prompts"; anything else is an Error listing them.
PreferenceShape parse_preference_shape(std::string_view name);

struct PreferencePair {
  std::vector<chat::Message> prompt;  // system?, then user/assistant turns, the last one the user's
  std::string chosen, rejected;       // empty for the prompts shape
  std::string where;                  // "FILE:LINE" (JSON arrays: "FILE:LINE: record N"), for messages
};

// Reads a preference data set; `format` is "auto" (the first record's keys give the shape: chosen →
// pairs, response_1 → choice, responses → ranked, prompt alone → prompts) or a shape name. Every
// error names the file, the line and the field and says what was expected (malformed JSON, a
// missing or mistyped field, a preference other than 1 or 2, ranks that do not match the replies,
// a record of another shape than the first, a prompt that does not end with a user turn, an empty
// file). Records of the ranked shape whose replies all share one rank give no pair and are an error.
std::vector<PreferencePair> read_preference_dataset(const std::string& path, const std::string& format = "auto");

// The conversation of `pair.prompt` followed by the assistant's `reply` (chosen, rejected or a
// sampled one), ready for tokenize_sft_example: its labels then mark exactly the reply's tokens
// (with the template's end-of-turn text), which is what reward models read and DPO scores.
SftExample preference_example(const PreferencePair& pair, const std::string& reply);

}  // namespace kotoba::data
