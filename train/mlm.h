// The masked-LM objective's input corruption, as transformers' DataCollatorForLanguageModeling
// (mlm_probability 0.15): each non-special, non-padding token is selected with probability
// 0.15; a selected token becomes [MASK] with probability 0.8, a uniformly random token of the
// vocabulary with probability 0.1, and stays itself otherwise. Labels hold the original id at
// selected positions and -100 elsewhere. Every draw is a pure function of (seed, batch index,
// position), so a resumed run masks its batches exactly as the uninterrupted one would.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace kotoba::train {

struct MlmOptions {
  int32_t mask_id = -1;                // [MASK]
  int32_t vocab_size = 0;              // random replacements are drawn from [0, vocab_size)
  std::vector<int32_t> special_ids;    // never selected ([CLS], [SEP], [PAD], [UNK], [MASK])
  double mlm_probability = 0.15;
  double mask_probability = 0.8;       // of the selected: -> [MASK]
  double random_probability = 0.1;     // of the selected: -> a random token (the rest stay)
};

// Checks the options (ids inside the vocabulary, probabilities in [0, 1], mask + random <= 1).
void validate_mlm_options(const MlmOptions& options);

// ids (B, T) i32 -> inputs (B, T) i32 (corrupted) and labels (B, T) i32. attention_mask (B, T)
// i32, when defined, marks padding (0) that is never selected. The batch_index keys the draws.
void mlm_mask(const MlmOptions& options, const Tensor& ids, uint64_t seed, uint64_t batch_index, Tensor& inputs,
              Tensor& labels, const Tensor& attention_mask = Tensor());

}  // namespace kotoba::train
