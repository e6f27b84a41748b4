// Sequence packing for fine-tuning: many short (ids, labels) examples laid greedily into rows of
// a fixed length, with the positions, segment ids and shifted targets a packed batch needs.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "nn/causal_lm.h"

namespace kotoba::data {

// One tokenised example. labels has the length of ids and says, HF-style and unshifted, what
// each position should hold: usually labels[i] == ids[i], and -100 on tokens that are not
// trained on (a prompt). The loss at position i predicts labels[i] from the tokens before it.
struct PackingExample {
  std::vector<int32_t> ids, labels;
};

struct PackedExamples {
  // (rows, max_length) i32 CPU tensors (see nn::PackedBatch):
  //   ids: the examples back to back, then pad_id;
  //   positions: 0, 1, ... within each example (0 on padding);
  //   segments: 1, 2, ... for the examples of a row in order, 0 on padding;
  //   targets, shifted for CausalLM: targets[t] = labels[t + 1] of the same example, and -100
  //     at each example's last token (it must not predict the next example's first token) and
  //     on padding. An example's first label is never a target (nothing precedes it), as in HF.
  nn::PackedBatch batch;
  // rows[r]: the indices of the examples in row r, in the order they sit there.
  std::vector<std::vector<size_t>> rows;
};

// Greedy first-fit: each example in turn goes into the first row with room for all of it, or
// opens a new row. Examples are never split or truncated: an empty one, one longer than
// max_length, or one whose labels differ in length from its ids throws kotoba::Error naming
// its index. No examples gives no rows (tensors of shape (0, max_length)).
PackedExamples pack_examples(const std::vector<PackingExample>& examples, int64_t max_length, int32_t pad_id = 0);
// The same over examples held elsewhere (an epoch's order without copying them); rows[r] holds
// indices into `examples`.
PackedExamples pack_examples_by_pointer(std::span<const PackingExample* const> examples, int64_t max_length,
                                        int32_t pad_id = 0);

}  // namespace kotoba::data
