// Greedy first-fit packing of (ids, labels) examples into rows of max_length tokens.
#include "data/packing.h"

#include "core/error.h"

namespace kotoba::data {

PackedExamples pack_examples(const std::vector<PackingExample>& examples, int64_t max_length, int32_t pad_id) {
  std::vector<const PackingExample*> pointers;
  pointers.reserve(examples.size());
  for (const PackingExample& e : examples) pointers.push_back(&e);
  return pack_examples_by_pointer(pointers, max_length, pad_id);
}

PackedExamples pack_examples_by_pointer(std::span<const PackingExample* const> examples, int64_t max_length,
                                        int32_t pad_id) {
  KOTOBA_CHECK(max_length > 0, "pack_examples: max_length must be positive, got ", max_length);
  PackedExamples packed;
  std::vector<int64_t> used;  // tokens filled per row
  for (size_t i = 0; i < examples.size(); ++i) {
    const PackingExample& e = *examples[i];
    const int64_t n = int64_t(e.ids.size());
    KOTOBA_CHECK(n > 0, "pack_examples: example ", i, " has no tokens");
    KOTOBA_CHECK(e.labels.size() == e.ids.size(), "pack_examples: example ", i, " has ", e.ids.size(),
                 " ids but ", e.labels.size(), " labels");
    KOTOBA_CHECK(n <= max_length, "pack_examples: example ", i, " has ", n, " tokens, more than max_length ",
                 max_length, " (examples are not truncated; drop or shorten it)");
    size_t row = 0;
    while (row < used.size() && used[row] + n > max_length) ++row;
    if (row == used.size()) {
      used.push_back(0);
      packed.rows.emplace_back();
    }
    used[row] += n;
    packed.rows[row].push_back(i);
  }

  const int64_t R = int64_t(packed.rows.size()), L = max_length;
  std::vector<int32_t> ids(size_t(R * L), pad_id), targets(size_t(R * L), -100), positions(size_t(R * L), 0),
      segments(size_t(R * L), 0);
  for (int64_t r = 0; r < R; ++r) {
    int64_t at = r * L;
    int32_t segment = 0;
    for (size_t index : packed.rows[size_t(r)]) {
      const PackingExample& e = *examples[index];
      const int64_t n = int64_t(e.ids.size());
      ++segment;
      for (int64_t t = 0; t < n; ++t) {
        ids[size_t(at + t)] = e.ids[size_t(t)];
        positions[size_t(at + t)] = int32_t(t);
        segments[size_t(at + t)] = segment;
        // The last token's target stays -100: the next token in the row belongs to another example.
        if (t + 1 < n) targets[size_t(at + t)] = e.labels[size_t(t + 1)];
      }
      at += n;
    }
  }
  packed.batch.ids = Tensor::from_vector_i32(ids, {R, L});
  packed.batch.targets = Tensor::from_vector_i32(targets, {R, L});
  packed.batch.positions = Tensor::from_vector_i32(positions, {R, L});
  packed.batch.segments = Tensor::from_vector_i32(segments, {R, L});
  return packed;
}

}  // namespace kotoba::data
