// A reward model (sequence scorer): a decoder-only language model without its LM head, and a
// `score` Linear(hidden, 1, no bias) read at the last real token of each row — transformers'
// GPT2ForSequenceClassification and LlamaForSequenceClassification with num_labels = 1, under
// the same parameter names (transformer.* or model.*, score.weight). io/reward_model_dir.h reads
// and writes its directories.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "nn/causal_lm.h"
#include "nn/layers.h"

namespace kotoba::nn {

class RewardModel : public Module {
  Generator init_gen_;  // declared first: score is drawn from it

 public:
  // Takes the backbone (GPT-2 or the LLaMA family); an untied LLaMA lm_head is dropped from the
  // parameters (a sequence classifier has none). score ~ N(0, init_std^2) from `seed`, as
  // transformers initialises it with the config's initializer_range. pad_token_id: the id the
  // rows are right-padded with (config.json's pad_token_id), if any.
  RewardModel(std::unique_ptr<CausalLM> backbone, std::optional<int64_t> pad_token_id, float init_std, uint64_t seed);

  CausalLM& backbone() { return *backbone_; }
  const CausalLM& backbone() const { return *backbone_; }
  std::string model_type() const { return backbone_->model_type(); }
  int64_t hidden_size() const { return score.in_features(); }
  std::optional<int64_t> pad_token_id() const { return pad_token_id_; }
  void set_pad_token_id(std::optional<int64_t> id) { pad_token_id_ = id; }

  // ids (B, T) i32, right-padded; lengths[b] in [1, T] is row b's real length, and its reward is
  // the score of the hidden state at lengths[b] - 1. Returns (B, 1) f32 (autograd-recorded).
  Tensor rewards(const Tensor& ids, const std::vector<int64_t>& lengths);
  // Rows' lengths as transformers finds them: the last token that is not pad_token_id (no pad id:
  // the whole row). A row of pads only is an error.
  std::vector<int64_t> lengths_of(const Tensor& ids) const;
  Tensor rewards(const Tensor& ids) { return rewards(ids, lengths_of(ids)); }

  // Training mode (dropout) for the backbone and every layer below.
  void set_training(bool on);

  Linear score;  // (1, C)

 private:
  std::unique_ptr<CausalLM> backbone_;
  std::optional<int64_t> pad_token_id_;
};

// The backbone's hidden size (GPT-2's n_embd, LLaMA's hidden_size).
int64_t hidden_size_of(const CausalLM& model);
// The backbone's initializer_range (transformers initialises score with it).
float initializer_range_of(const CausalLM& model);

}  // namespace kotoba::nn
