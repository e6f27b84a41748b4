// CausalLM: what every decoder-only language model offers the trainer, the generator and the
// model-directory code — logits and loss for whole sequences, and incremental decoding with a
// KV cache. GPT-2 (nn/gpt2.h) and the LLaMA family (nn/llama.h) implement it.
#pragma once
#include <string>
#include <vector>

#include "nn/module.h"

namespace kotoba::nn {

// Keys and values of the positions seen so far, for incremental decoding: per layer, k and v
// buffers (B, Hkv, max_len, D) allocated once; positions [0, length) are filled.
struct KVCache {
  std::vector<Tensor> k, v;  // one per layer
  int64_t length = 0;        // positions cached (the next token's position)
  // Left padding, for sequences of different lengths decoded as one batch: row b's first pad[b]
  // slots hold no token. They are masked out as keys, and row b's token in slot s sits at
  // position s - pad[b], so a padded row computes what it would alone. Empty: no row is padded.
  std::vector<int64_t> pad;

  int64_t batch() const { return k.empty() ? 0 : k[0].size(0); }
  int64_t max_len() const { return k.empty() ? 0 : k[0].size(2); }
  void clear() {  // forget the sequences, keep the buffers
    length = 0;
    pad.clear();
  }
  // Keeps the rows `rows` in that order (repeats allowed; the batch becomes rows.size()): beam
  // search copies the surviving beams' rows, batched decoding drops finished sequences. Leading
  // padding all kept rows share is dropped (length shrinks by it). On the buffers' device.
  void select_rows(const std::vector<int64_t>& rows);
};

// Several examples packed into each row of a batch (data/packing.h builds them): ids and
// targets (B, T) i32 as for CausalLM::loss (targets already shifted: targets[b][t] is the token
// that should follow ids[b][t], -100 where nothing is predicted — the last token of every
// example and padding); positions (B, T) i32 restart at 0 with each example; segments (B, T) i32
// say which example a token belongs to. Attention never crosses from one segment into another,
// so each example computes exactly what it would alone.
struct PackedBatch {
  Tensor ids, targets, positions, segments;
};

class CausalLM : public Module {
 public:
  // HF's model_type of the architecture: "gpt2", "llama", "mistral", "qwen2".
  virtual std::string model_type() const = 0;
  virtual int64_t vocab_size() const = 0;
  // The longest sequence the model accepts (positions [0, max_positions)).
  virtual int64_t max_positions() const = 0;

  // ids (B, T) i32 -> logits (B, T, V).
  virtual Tensor logits(const Tensor& ids) = 0;
  // ids, targets (B, T) i32 -> mean next-token cross-entropy over targets != -100. The logits
  // buffer is reused for their gradient: no (B, T, V) gradient is allocated.
  virtual Tensor loss(const Tensor& ids, const Tensor& targets);

  // Packed rows: ids, positions, segments (B, T) i32 (see PackedBatch) -> logits (B, T, V), each
  // token's as if its example ran alone from position 0.
  virtual Tensor packed_logits(const Tensor& ids, const Tensor& positions, const Tensor& segments) = 0;
  // ids (B, T) i32 -> the final hidden states (B, T, C) the LM head reads (after the last norm):
  // what a sequence-classification head (nn/reward_model.h) reads instead of the logits.
  virtual Tensor hidden_states(const Tensor& ids);
  // hidden (B, T, C) from hidden_states -> logits (B, T, V): the LM head alone, so that a caller
  // reading both (a policy with a value head) runs the network once.
  virtual Tensor head_logits(const Tensor& hidden);
  // Mean next-token cross-entropy over the batch's targets != -100, i.e. the token-weighted mean
  // of the examples' losses. Like loss(), the logits buffer is reused for their gradient.
  Tensor packed_loss(const PackedBatch& batch);

  // Incremental decoding (inference only: no dropout, nothing recorded). A cache for `batch`
  // sequences of up to max_len positions (0: max_positions()), on the parameters' device/dtype.
  virtual KVCache make_kv_cache(int64_t batch, int64_t max_len = 0) const = 0;
  // ids (B, T_new) i32 are positions [cache.length, cache.length + T_new): returns their logits
  // (B, T_new, V) — or (B, 1, V) for the last one only when last_only — appends their keys and
  // values to the cache and advances cache.length. The logits equal logits() of the whole sequence.
  virtual Tensor logits_cached(const Tensor& ids, KVCache& cache, bool last_only = false) = 0;

  Generator& dropout_generator() { return dropout_gen_; }

 protected:
  explicit CausalLM(uint64_t dropout_seed) : dropout_gen_(dropout_seed) {}
  // Checks ids (B, T) i32 and the cache before logits_cached; `model` names the caller in errors.
  void check_cached_call(const Tensor& ids, const KVCache& cache, int64_t n_layers, const char* model) const;
  // Checks a packed call's ids, positions and segments ((B, T) i32 alike, positions in
  // [0, max_positions())) and returns the largest position.
  int64_t check_packed_call(const Tensor& ids, const Tensor& positions, const Tensor& segments) const;
  // A cache of n_layers (batch, kv_heads, max_len, head_dim) buffers like `like`.
  static KVCache allocate_kv_cache(int64_t n_layers, int64_t batch, int64_t kv_heads, int64_t max_len,
                                   int64_t head_dim, const Tensor& like);
  Generator dropout_gen_;
};

// Writes src (B, H, T, D) into cache (B, H, max_len, D) (slots contiguous) at positions
// [start, start + T), on their device (one strided copy when src's (b, h) runs are even).
void write_kv_rows(const Tensor& cache, const Tensor& src, int64_t start);

// (T) i32 positions start, start + 1, ..., start + T - 1 on `device`.
Tensor position_ids(int64_t start, int64_t T, Device device);

// For a padded cache (cache.pad not empty), the new slots [cache.length, cache.length + T):
// positions (B, T) i32, slot - pad[b] (0 on padding slots), and the key mask (B, length + T) i32
// (0 on padding slots, 1 elsewhere), on `device`.
Tensor padded_position_ids(const KVCache& cache, int64_t T, Device device);
Tensor padded_key_mask(const KVCache& cache, int64_t T, Device device);

}  // namespace kotoba::nn
