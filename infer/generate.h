// Text generation: logits processors (repetition penalty, temperature, top-k, top-p), token
// selection (greedy, sampling) and the decoding loop over a GPT-2 with a KV cache, streaming.
// Semantics follow HF transformers' generate() so that a model behaves the same in both.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/rng.h"
#include "nn/causal_lm.h"

namespace kotoba::infer {

// ---- logits processors: rewrite next-token scores (V) in place ----
// `context` holds every id so far (prompt and generated). Removed tokens get -inf.
class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  virtual void apply(std::span<const int32_t> context, std::span<float> scores) const = 0;
};
using LogitsProcessorList = std::vector<std::unique_ptr<LogitsProcessor>>;
void apply_processors(const LogitsProcessorList& processors, std::span<const int32_t> context, std::span<float> scores);

// CTRL's repetition penalty (HF RepetitionPenaltyLogitsProcessor): every token present in the
// context has its score divided by `penalty` when positive, multiplied when negative.
class RepetitionPenalty : public LogitsProcessor {
 public:
  explicit RepetitionPenalty(float penalty);  // > 0; 1 changes nothing
  void apply(std::span<const int32_t> context, std::span<float> scores) const override;

 private:
  float penalty_;
};

// scores / temperature (HF TemperatureLogitsWarper).
class Temperature : public LogitsProcessor {
 public:
  explicit Temperature(float temperature);  // > 0
  void apply(std::span<const int32_t> context, std::span<float> scores) const override;

 private:
  float temperature_;
};

// Keeps the scores >= the k-th largest (ties at the boundary are kept, as HF's TopKLogitsWarper).
class TopK : public LogitsProcessor {
 public:
  explicit TopK(int64_t k);  // >= 1; k >= V keeps everything
  void apply(std::span<const int32_t> context, std::span<float> scores) const override;

 private:
  int64_t k_;
};

// Nucleus filtering (HF TopPLogitsWarper): keeps the smallest set of most probable tokens whose
// probability sums to >= top_p, and always at least the most probable one. Computed in float64
// as HF does it: tokens sorted by ascending score are removed while the cumulative probability
// up to and including them is <= 1 - top_p.
class TopP : public LogitsProcessor {
 public:
  explicit TopP(float top_p);  // in (0, 1]; 1 keeps everything
  void apply(std::span<const int32_t> context, std::span<float> scores) const override;

 private:
  float top_p_;
};

// ---- token selection ----
int32_t argmax(std::span<const float> scores);  // the first maximum
// One draw from softmax(scores) (-inf scores have probability 0), by inverse CDF in float64
// with a 48-bit uniform from `gen`.
int32_t sample_from_scores(std::span<const float> scores, Generator& gen);

// ---- the decoding loop ----
struct GenerationOptions {
  int64_t max_new_tokens = 64;
  bool do_sample = false;                   // false: greedy (argmax); the warpers below apply only when sampling
  float temperature = 1.0f;                 // > 0
  int64_t top_k = 0;                        // 0: off
  float top_p = 1.0f;                       // in (0, 1]; 1: off
  float repetition_penalty = 1.0f;          // > 0; 1: off. Applies to greedy decoding too, as in HF
  std::vector<int32_t> eos_token_ids = {};  // generation stops after emitting one of these
  uint64_t seed = 0;                        // the sampling Generator's seed
  bool use_kv_cache = true;                 // false recomputes the whole sequence per token (checks, benchmarks)
};

// HF's order: processors (repetition penalty), then when sampling the warpers temperature,
// top-k, top-p. Checks the options' ranges (errors name the option).
LogitsProcessorList make_logits_processors(const GenerationOptions& options);

// The model side of decoding for one sequence: feeds tokens, keeps the KV cache (or the whole
// sequence when recomputing) and returns the next-token scores. Switches the model to eval mode
// while it lives and records nothing on the tape. Beam search will hold one per beam group
// (batch = beams) and reorder the cache rows.
class Decoder {
 public:
  // capacity: the most positions this sequence will reach (0: the model's context); the KV
  // cache is sized to it, so a long-context model does not allocate its whole context.
  Decoder(nn::CausalLM& model, bool use_kv_cache, int64_t capacity = 0);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Appends ids (the prompt first, then one chosen token at a time); returns the scores (V) of
  // the token that follows the last one.
  std::vector<float> feed(std::span<const int32_t> ids);
  int64_t length() const { return length_; }  // positions fed so far
  int64_t max_length() const { return capacity_; }  // positions this decoder can hold

 private:
  nn::CausalLM& model_;
  bool was_training_;
  bool use_kv_cache_;
  int64_t capacity_;
  nn::KVCache cache_;
  std::vector<int32_t> sequence_;  // recompute mode only
  int64_t length_ = 0;
};

enum class FinishReason { eos, length, context_full, stopped };
const char* finish_reason_name(FinishReason reason);  // "eos", "length", "context_full", "stopped"

struct GenerationResult {
  std::vector<int32_t> ids;  // generated tokens only, the EOS that ended them included
  FinishReason finish_reason = FinishReason::length;
  double prefill_seconds = 0;        // prompt forward and the first token
  double decode_seconds = 0;         // every later token
  double tokens_per_second() const;  // generated tokens over the whole time
};

// Called with each generated token as soon as it is chosen; returning false stops generation
// (finish reason `stopped`).
using TokenCallback = std::function<bool(int32_t id)>;

// Continues `prompt` (at least one id) until an EOS id, max_new_tokens, the model's context
// length or the callback says stop.
GenerationResult generate(nn::CausalLM& model, std::span<const int32_t> prompt, const GenerationOptions& options,
                          const TokenCallback& on_token = {});

}  // namespace kotoba::infer
