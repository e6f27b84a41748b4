// TokenDataset (a split of mapped shards read as one stream), the random window sampler and
// the sequential evaluation windows.
#include "data/token_dataset.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/rng.h"

namespace kotoba::data {

namespace fs = std::filesystem;

struct TokenDataset::State {
  std::string dir, split;
  ShardIndex index;
  std::vector<std::unique_ptr<MappedShard>> shards;
  std::vector<int64_t> starts;  // starts[i]: stream offset of shard i's first token; back() = size
};

TokenDataset TokenDataset::open(const std::string& dir, const std::string& split) {
  KOTOBA_CHECK(split == "train" || split == "val", "token dataset: split must be \"train\" or \"val\", got \"",
               split, "\"");
  auto state = std::make_shared<State>();
  state->dir = dir;
  state->split = split;
  state->index = read_shard_index(dir);
  const SplitIndex& s = split == "train" ? state->index.train : state->index.val;
  const std::string meta = (fs::path(dir) / "meta.json").string();
  int64_t offset = 0;
  for (const auto& name : s.shards) {
    auto shard = std::make_unique<MappedShard>(fs::path(dir) / name);
    check_vocab_match(state->index.vocab_size, dir, shard->vocab_size(), "its shard '" + shard->path().string() + "'");
    state->starts.push_back(offset);
    offset += shard->size();
    state->shards.push_back(std::move(shard));
  }
  state->starts.push_back(offset);
  KOTOBA_CHECK(offset == s.tokens, meta, ": the ", split, " split lists ", s.tokens, " tokens but its ",
               s.shards.size(), " shard(s) hold ", offset);
  TokenDataset data;
  data.state_ = std::move(state);
  return data;
}

const std::string& TokenDataset::dir() const { return state_->dir; }
const std::string& TokenDataset::split() const { return state_->split; }
const ShardIndex& TokenDataset::index() const { return state_->index; }
int64_t TokenDataset::size() const { return state_->starts.back(); }

void TokenDataset::read(int64_t offset, int64_t n, int32_t* out) const {
  KOTOBA_CHECK(offset >= 0 && n >= 0 && offset + n <= size(), "token dataset '", dir(), "' (", split(),
               "): read of [", offset, ", ", offset + n, ") is outside its ", size(), " tokens");
  const auto& starts = state_->starts;
  // The shard holding `offset`: the last start <= offset.
  size_t i = size_t(std::upper_bound(starts.begin(), starts.end() - 1, offset) - starts.begin()) - 1;
  while (n > 0) {
    int64_t local = offset - starts[i];
    int64_t take = std::min(n, state_->shards[i]->size() - local);
    state_->shards[i]->read(local, take, out);
    out += take;
    offset += take;
    n -= take;
    ++i;
  }
}

void TokenDataset::check_tokenizer_vocab(int64_t tokenizer_vocab_size) const {
  check_vocab_match(vocab_size(), dir(), tokenizer_vocab_size, "the tokenizer");
}

void TokenDataset::check_model_vocab(int64_t model_vocab_size) const {
  check_vocab_match(vocab_size(), dir(), model_vocab_size, "the model", /*other_may_be_larger=*/true);
}

namespace {

void check_batch_tensor(const Tensor& t, int64_t B, int64_t T, const char* name) {
  KOTOBA_CHECK(t.defined() && t.dtype() == DType::i32 && t.shape() == Shape({B, T}), "window sampler: ", name,
               " must be an i32 tensor of shape (", B, ", ", T, ")");
}

void split_window(const std::vector<int32_t>& window, int64_t T, int32_t* x, int32_t* y) {
  std::copy(window.begin(), window.begin() + T, x);
  std::copy(window.begin() + 1, window.begin() + T + 1, y);
}

}  // namespace

WindowSampler::WindowSampler(TokenDataset data, int64_t batch_size, int64_t context, uint64_t seed)
    : data_(std::move(data)), batch_size_(batch_size), context_(context), seed_(seed) {
  KOTOBA_CHECK(batch_size > 0 && context > 0, "window sampler: batch size and context must be positive, got ",
               batch_size, " and ", context);
  KOTOBA_CHECK(data_.size() >= context + 1, "the ", data_.split(), " split of '", data_.dir(), "' has ", data_.size(),
               " tokens, fewer than the context + 1 = ", context + 1, " one window needs");
  window_.resize(size_t(context + 1));
}

TokenBatch WindowSampler::next() {
  TokenBatch batch{Tensor::empty({batch_size_, context_}, DType::i32),
                   Tensor::empty({batch_size_, context_}, DType::i32)};
  next(batch.x, batch.y);
  return batch;
}

void WindowSampler::next(Tensor& x, Tensor& y) {
  check_batch_tensor(x, batch_size_, context_, "x");
  check_batch_tensor(y, batch_size_, context_, "y");
  const uint64_t starts = uint64_t(data_.size() - context_);  // windows [s, s+T] for s in [0, starts)
  const uint64_t stream = mix64(seed_ ^ 0x6b6f746f6261ull);
  int32_t* xi = x.data<int32_t>();
  int32_t* yi = y.data<int32_t>();
  for (int64_t b = 0; b < batch_size_; ++b) {
    uint64_t h = mix64(stream + drawn_++);
    auto start = int64_t((unsigned __int128)h * starts >> 64);  // uniform in [0, starts) without modulo bias
    data_.read(start, context_ + 1, window_.data());
    split_window(window_, context_, xi + b * context_, yi + b * context_);
  }
}

SequentialWindows::SequentialWindows(TokenDataset data, int64_t batch_size, int64_t context)
    : data_(std::move(data)), batch_size_(batch_size), context_(context) {
  KOTOBA_CHECK(batch_size > 0 && context > 0, "sequential windows: batch size and context must be positive, got ",
               batch_size, " and ", context);
  num_windows_ = data_.size() > 0 ? (data_.size() - 1) / context : 0;
  KOTOBA_CHECK(num_windows_ > 0, "the ", data_.split(), " split of '", data_.dir(), "' has ", data_.size(),
               " tokens, fewer than the context + 1 = ", context + 1, " one evaluation window needs");
  window_.resize(size_t(context + 1));
}

std::optional<TokenBatch> SequentialWindows::next() {
  if (position_ >= num_windows_) return std::nullopt;
  int64_t rows = std::min(batch_size_, num_windows_ - position_);
  TokenBatch batch{Tensor::empty({rows, context_}, DType::i32), Tensor::empty({rows, context_}, DType::i32)};
  int32_t* xi = batch.x.data<int32_t>();
  int32_t* yi = batch.y.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r, ++position_) {
    data_.read(position_ * context_, context_ + 1, window_.data());
    split_window(window_, context_, xi + r * context_, yi + r * context_);
  }
  return batch;
}

}  // namespace kotoba::data
