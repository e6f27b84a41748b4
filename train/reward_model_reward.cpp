// A reward model as a reward (train/reward_model_reward.h).
#include "train/reward_model_reward.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "core/error.h"
#include "core/tensor.h"
#include "core/utf8.h"
#include "data/instruct_data.h"
#include "data/preference_data.h"
#include "io/reward_model_dir.h"
#include "nn/reward_model.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"
#include "train/sft.h"

namespace fs = std::filesystem;

namespace kotoba::train {

struct RewardModelScorer::State {
  LoadedRewardModel loaded;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::optional<chat::ChatTemplate> tmpl;
};

RewardModelScorer::RewardModelScorer(const std::string& dir, const std::string& chat_template, int64_t max_length,
                                     int64_t batch)
    : state_(std::make_unique<State>()), dir_(dir), max_length_(max_length), batch_(batch) {
  KOTOBA_CHECK(max_length > 0, "reward model ", dir, ": max_length must be positive, got ", max_length);
  KOTOBA_CHECK(batch > 0, "reward model ", dir, ": batch must be positive, got ", batch);
  KOTOBA_CHECK(!dir.empty(), "reward model: no directory given");
  KOTOBA_CHECK(fs::exists(dir), "reward model ", dir,
               ": no such directory (expected a reward model: `kotoba reward`'s OUT/model, or a transformers "
               "...ForSequenceClassification directory)");
  State& s = *state_;
  s.loaded = load_reward_model_dir(dir);
  nn::RewardModel& model = *s.loaded.model;
  model.set_training(false);
  s.tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load_dir(dir));
  s.tmpl.emplace(resolve_chat_template(chat_template, dir, *s.tok, GenerationConfig{}));
  pad_ = int32_t(model.pad_token_id().value_or(s.tok->pad_id().value_or(s.tok->eos_id().value_or(0))));
  const int64_t context = model.backbone().max_positions();
  if (context > 0) max_length_ = std::min(max_length_, context);
}

RewardModelScorer::~RewardModelScorer() = default;

nn::RewardModel& RewardModelScorer::model() { return *state_->loaded.model; }
const tokenizer::Tokenizer& RewardModelScorer::tokenizer() const { return *state_->tok; }
const chat::ChatTemplate& RewardModelScorer::chat_template() const { return *state_->tmpl; }

std::vector<int32_t> RewardModelScorer::tokenize(const std::vector<chat::Message>& prompt, const std::string& reply,
                                                 const std::string& where) {
  State& s = *state_;
  // Sampled replies need not be valid UTF-8 (byte-level tokens may stop inside a character): such
  // bytes become U+FFFD, as a decode with errors="replace" (TRL's) gives them to a reward model.
  data::PreferencePair pair;
  pair.prompt = prompt;
  for (chat::Message& m : pair.prompt) m.content = replace_invalid_utf8(m.content);
  pair.where = where;
  data::SftTokens t = data::tokenize_sft_example(data::preference_example(pair, replace_invalid_utf8(reply)), *s.tmpl,
                                                 *s.tok, max_length_);
  truncated_ += t.truncated;
  const int64_t vocab = s.loaded.model->backbone().vocab_size();
  for (int32_t id : t.ids)
    KOTOBA_CHECK(id >= 0 && id < vocab, where, ": token id ", id, " is outside the vocabulary of the reward model ",
                 dir_, " (", vocab, " ids): its tokenizer.json does not fit the model");
  KOTOBA_CHECK(!t.ids.empty(), where, ": renders to no tokens (reward model ", dir_, ")");
  return std::move(t.ids);
}

std::vector<float> RewardModelScorer::score_tokens(const std::vector<std::vector<int32_t>>& rows) {
  nn::RewardModel& model = *state_->loaded.model;
  std::vector<float> scores;
  scores.reserve(rows.size());
  NoGradGuard no_grad;
  for (size_t begin = 0; begin < rows.size(); begin += size_t(batch_)) {
    const size_t end = std::min(rows.size(), begin + size_t(batch_));
    size_t longest = 0;
    for (size_t i = begin; i < end; ++i) {
      KOTOBA_CHECK(!rows[i].empty(), "reward model ", dir_, ": row ", i, " has no tokens");
      longest = std::max(longest, rows[i].size());
    }
    std::vector<int32_t> ids((end - begin) * longest, pad_);
    std::vector<int64_t> lengths;
    for (size_t i = begin; i < end; ++i) {
      std::copy(rows[i].begin(), rows[i].end(), ids.begin() + ptrdiff_t((i - begin) * longest));
      lengths.push_back(int64_t(rows[i].size()));
      // Read where transformers reads: the last token that is not the pad token.
      while (lengths.back() > 1 && rows[i][size_t(lengths.back() - 1)] == pad_) --lengths.back();
    }
    Tensor ids_t = Tensor::from_vector_i32(ids, {int64_t(end - begin), int64_t(longest)});
    for (float r : model.rewards(on_device(ids_t, model.device()), lengths).to_vector()) scores.push_back(r);
  }
  return scores;
}

std::vector<float> RewardModelScorer::score(const std::vector<RewardInput>& inputs) {
  std::vector<std::vector<int32_t>> rows;
  rows.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string where = "reward input " + std::to_string(i);
    KOTOBA_CHECK(inputs[i].prompt != nullptr, where, ": no prompt");
    rows.push_back(tokenize(*inputs[i].prompt, inputs[i].completion, where));
  }
  return score_tokens(rows);
}

RewardFunction reward_model_reward(const std::string& dir, int64_t max_length, int64_t batch,
                                   std::function<void(const std::string&)> warn) {
  auto scorer = std::make_shared<RewardModelScorer>(dir, "auto", max_length, batch);
  if (!warn) warn = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  auto next_warning = std::make_shared<int64_t>(1);
  return [scorer, warn, next_warning](const std::vector<RewardInput>& inputs) {
    const std::vector<float> scores = scorer->score(inputs);
    if (scorer->truncated() >= *next_warning) {
      warn("warning: reward model " + scorer->dir() + ": " + std::to_string(scorer->truncated()) +
           " sequences so far were cut at max_length " + std::to_string(scorer->max_length()) +
           " tokens (their rewards read the cut text)");
      while (*next_warning <= scorer->truncated()) *next_warning *= 2;
    }
    return std::vector<double>(scores.begin(), scores.end());
  };
}

}  // namespace kotoba::train
