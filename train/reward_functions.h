// Rewards for reinforcement learning on sampled replies (GRPO, PPO): a function from (prompt,
// completion) pairs to one number each — a rule on the text, a checker program, or a reward model
// (train/reward_model_reward.h).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "chat/chat_template.h"

namespace kotoba::train {

struct RewardInput {
  const std::vector<chat::Message>* prompt = nullptr;  // the conversation the completion answers
  std::string completion;                              // the sampled reply's text (EOS and stop string cut off)
};
// One reward per input. A reward model is one of these (score prompt + completion).
using RewardFunction = std::function<std::vector<double>(const std::vector<RewardInput>&)>;

// A rule: "ends-with:TEXT" (1 when the reply, stripped of surrounding ASCII whitespace, ends with TEXT,
// else 0), "contains:TEXT", "regex:PATTERN" (1 when ECMAScript PATTERN matches somewhere in the
// reply). Anything else is an Error naming --reward and the known forms.
RewardFunction rule_reward(const std::string& spec);
// A checker program: `command` is run by the shell with one JSON object per completion on its
// standard input ({"prompt": [{"role", "content"}, ...], "completion": "..."}, one a line) and
// must print one number per completion, one a line. A failing command, a missing or non-numeric
// line is an Error naming the command and the line.
RewardFunction command_reward(const std::string& command);

}  // namespace kotoba::train
