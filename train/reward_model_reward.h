// A trained reward model as a reward: a reward-model directory (`kotoba reward`'s OUT/model, or a
// transformers ...ForSequenceClassification directory with one label) with its tokenizer and chat
// template, scoring (prompt, reply) pairs. Each pair is rendered through the template as the
// prompt's turns followed by the reply as the assistant's turn and tokenised exactly as the reward
// trainer does (data::tokenize_sft_example of data::preference_example), rows are batched
// right-padded without gradients, and each row's reward is the score at its last token that is not
// the pad token (where transformers reads). `kotoba score` and GRPO's `reward_model` both score
// through this class.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "train/reward_functions.h"

namespace kotoba::nn {
class RewardModel;
}
namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::train {

class RewardModelScorer {
 public:
  // Loads `dir`. chat_template: chatml, llama2, alpaca, plain, or auto (the directory's own, as
  // train::resolve_chat_template finds it). max_length: tokens per sequence, longer ones are cut
  // (lowered to the model's context when that is shorter); batch: sequences per forward pass.
  // A missing directory, one that is not a reward model, or a bad setting is an Error naming it.
  explicit RewardModelScorer(const std::string& dir, const std::string& chat_template = "auto",
                             int64_t max_length = 1024, int64_t batch = 16);
  ~RewardModelScorer();
  RewardModelScorer(const RewardModelScorer&) = delete;
  RewardModelScorer& operator=(const RewardModelScorer&) = delete;

  // The tokens of `prompt` followed by the assistant's `reply`, as they are scored (bytes that are
  // not valid UTF-8, as a sampled reply may hold, are read as U+FFFD). A sequence
  // longer than max_length() is cut and counted in truncated(); a token id outside the model's
  // vocabulary is an Error naming `where` and the directory.
  std::vector<int32_t> tokenize(const std::vector<chat::Message>& prompt, const std::string& reply,
                                const std::string& where);
  // One reward per row of token ids (no gradient; batch() rows per forward pass).
  std::vector<float> score_tokens(const std::vector<std::vector<int32_t>>& rows);
  // tokenize + score_tokens; errors name "reward input I" (its index in `inputs`).
  std::vector<float> score(const std::vector<RewardInput>& inputs);

  // Sequences cut at max_length() so far (by tokenize).
  int64_t truncated() const { return truncated_; }
  int64_t max_length() const { return max_length_; }
  int64_t batch() const { return batch_; }
  const std::string& dir() const { return dir_; }
  int32_t pad_id() const { return pad_; }
  nn::RewardModel& model();
  const tokenizer::Tokenizer& tokenizer() const;
  const chat::ChatTemplate& chat_template() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
  std::string dir_;
  int64_t max_length_ = 0, batch_ = 0, truncated_ = 0;
  int32_t pad_ = 0;
};

// A RewardFunction that scores with the reward model at `dir` (its own chat template). Sequences
// cut at max_length are reported through `warn` (default: a line on stderr) the first time, and
// again each time their count doubles.
RewardFunction reward_model_reward(const std::string& dir, int64_t max_length = 1024, int64_t batch = 16,
                                   std::function<void(const std::string&)> warn = {});

}  // namespace kotoba::train
