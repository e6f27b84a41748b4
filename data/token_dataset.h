// The pretraining loader: a split of a token shard directory (memory-mapped), random (B, T)
// windows for training with a checkpointable state, and every window once for evaluation.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/token_shards.h"

namespace kotoba::data {

// One split ("train" or "val") of a directory written by `kotoba prepare`. The split's shards
// read as one stream of tokens (windows may cross shard boundaries). Copies share the mapping.
class TokenDataset {
 public:
  // Opens and validates meta.json and every shard of the split: headers agree with the index
  // (vocab_size, token counts), sizes are exact (a truncated shard names expected vs actual).
  static TokenDataset open(const std::string& dir, const std::string& split);

  const std::string& dir() const;
  const std::string& split() const;
  const ShardIndex& index() const;
  int64_t vocab_size() const { return index().vocab_size; }
  int32_t eos_id() const { return index().eos_id; }
  int64_t size() const;  // tokens in this split
  // Copies tokens [offset, offset + n) of the split's stream into out.
  void read(int64_t offset, int64_t n, int32_t* out) const;
  // Throws naming both sizes unless a tokenizer (exact) / model (>=, padded embeddings) fits.
  void check_tokenizer_vocab(int64_t tokenizer_vocab_size) const;
  void check_model_vocab(int64_t model_vocab_size) const;

 private:
  struct State;
  std::shared_ptr<const State> state_;
};

struct TokenBatch {
  Tensor x;  // (B, T) i32 inputs
  Tensor y;  // (B, T) i32 targets: y[b, t] = the token after x[b, t]
};

// Random windows of T+1 tokens: x = window[0..T), y = window[1..T]. Window k's start is a pure
// function of (seed, k), so the whole state is k, the number of windows drawn so far.
class WindowSampler {
 public:
  WindowSampler(TokenDataset data, int64_t batch_size, int64_t context, uint64_t seed);

  TokenBatch next();
  void next(Tensor& x, Tensor& y);  // fills existing (B, T) i32 tensors

  uint64_t state() const { return drawn_; }
  void set_state(uint64_t state) { drawn_ = state; }
  int64_t batch_size() const { return batch_size_; }
  int64_t context() const { return context_; }
  const TokenDataset& dataset() const { return data_; }

 private:
  TokenDataset data_;
  int64_t batch_size_, context_;
  uint64_t seed_;
  uint64_t drawn_ = 0;
  std::vector<int32_t> window_;
};

// Every full window once, in order, for evaluation: window i holds tokens [i*T, i*T + T + 1),
// so each token after the first is a target exactly once (the tail that does not fill a
// window is left out). The last batch may have fewer than B rows.
class SequentialWindows {
 public:
  SequentialWindows(TokenDataset data, int64_t batch_size, int64_t context);

  int64_t num_windows() const { return num_windows_; }
  int64_t num_batches() const { return (num_windows_ + batch_size_ - 1) / batch_size_; }
  std::optional<TokenBatch> next();  // nullopt after the last window
  void reset() { position_ = 0; }

 private:
  TokenDataset data_;
  int64_t batch_size_, context_, num_windows_;
  int64_t position_ = 0;
  std::vector<int32_t> window_;
};

}  // namespace kotoba::data
