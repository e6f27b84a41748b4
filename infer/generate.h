// Text generation: logits processors (repetition penalty, no-repeat n-grams, temperature, top-k,
// top-p, min-p), greedy decoding, sampling, beam search, stop strings and streaming, for one
// prompt or a batch of them over any CausalLM with a KV cache. Semantics follow HF transformers'
// generate() (4.48) so that a model decodes the same tokens in both.
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

// HF NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already present in the
// context (the prompt included) is removed. Nothing is removed while the context is shorter
// than n - 1 tokens.
class NoRepeatNGram : public LogitsProcessor {
 public:
  explicit NoRepeatNGram(int64_t n);  // >= 1
  void apply(std::span<const int32_t> context, std::span<float> scores) const override;

 private:
  int64_t n_;
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
// probability sums to >= top_p, and always at least the most probable one. Computed in float64:
// tokens sorted by ascending score are removed while the cumulative probability up to and
// including them is <= 1 - top_p.
class TopP : public LogitsProcessor {
 public:
  explicit TopP(float top_p);  // in (0, 1]; 1 keeps everything
  void apply(std::span<const int32_t> context, std::span<float> scores) const override;

 private:
  float top_p_;
};

// HF MinPLogitsWarper: removes the tokens whose probability is below min_p times the most
// probable token's (compared as exp(score - max) < min_p in float64); the most probable stays.
class MinP : public LogitsProcessor {
 public:
  explicit MinP(float min_p);  // in [0, 1]; 0 keeps everything
  void apply(std::span<const int32_t> context, std::span<float> scores) const override;

 private:
  float min_p_;
};

// ---- token selection ----
int32_t argmax(std::span<const float> scores);  // the first maximum
// One draw from softmax(scores) (-inf scores have probability 0), by inverse CDF in float64
// with a 48-bit uniform from `gen`. kotoba's own generator: the same seed gives the same tokens
// in kotoba, never the tokens torch.multinomial would draw.
int32_t sample_from_scores(std::span<const float> scores, Generator& gen);
// scores -> log_softmax(scores) in place, in float32 as torch computes it (x - max - log sum exp):
// the scores beam search accumulates.
void log_softmax_in_place(std::span<float> scores);

// ---- options ----
// HF's early_stopping for beam search: heuristic = False (stop a prompt when the best running
// beam, scored at the current length, cannot beat the worst kept hypothesis), stop = True (stop
// as soon as num_beams hypotheses are finished), never = "never" (stop only when no running beam
// can beat them at any length up to the limit).
enum class EarlyStopping { heuristic, stop, never };
EarlyStopping parse_early_stopping(const std::string& text);  // "false", "true" or "never"

// ids -> text bytes (the tokenizer's decode), needed for stop strings.
using Detokenizer = std::function<std::string(std::span<const int32_t>)>;

// Sees each step's next-token scores of one sequence after every processor and warper in use
// (so softmax(scores) is the distribution the token was drawn from, or its argmax under greedy
// decoding; removed tokens are -inf) and the token chosen from them. Greedy decoding and
// sampling only: beam search rejects it. For tools that show what the model does
// (`kotoba generate --show-probs`); it must not keep the span.
using ScoresObserver =
    std::function<void(size_t prompt, size_t sequence, std::span<const float> scores, int32_t chosen)>;

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  int64_t max_length = 0;  // > 0: prompt + generated tokens at most this, instead of max_new_tokens
  bool do_sample = false;  // false: greedy (or beam search); the warpers below apply only when sampling
  float temperature = 1.0f;          // > 0
  int64_t top_k = 0;                 // 0: off
  float top_p = 1.0f;                // in (0, 1]; 1: off
  float min_p = 0.0f;                // in [0, 1]; 0: off
  float repetition_penalty = 1.0f;   // > 0; 1: off. Applies to greedy decoding and beam search too, as in HF
  int64_t no_repeat_ngram_size = 0;  // 0: off. Applies to every strategy, as in HF
  int64_t num_beams = 1;             // > 1: beam search (without sampling)
  double length_penalty = 1.0;       // beam search: a hypothesis scores sum(log p) / generated_length^length_penalty
  EarlyStopping early_stopping = EarlyStopping::heuristic;  // beam search
  // Sequences returned per prompt: the best ones of beam search (<= num_beams), or independent
  // samples. Greedy decoding returns one.
  int64_t num_return_sequences = 1;
  std::vector<int32_t> eos_token_ids = {};  // a sequence ends after emitting one of these
  // A sequence ends once its generated text (detokenize of its generated ids, the prompt not
  // included) contains one of these. Its ids keep every token up to the one that completed the
  // stop string; GeneratedSequence::text_end says where the text is cut (right after the stop
  // string, which stays). Beam search stops a prompt when all its running beams contain one.
  std::vector<std::string> stop_strings = {};
  Detokenizer detokenize = {};  // required with stop_strings
  // Each prompt draws from its own Generator seeded with `seed`: a prompt's samples depend on
  // the prompt and the seed only, not on what it is batched with.
  uint64_t seed = 0;
  // generate_batch: prompt p's Generator is seeded with prompt_seeds[p] instead (one per prompt),
  // so that prompts batched together, even equal ones, draw independently. Empty: `seed` for all.
  std::vector<uint64_t> prompt_seeds = {};
  bool use_kv_cache = true;  // false recomputes each whole sequence per token (checks, benchmarks)
  ScoresObserver observe_scores = {};  // empty: nothing observes
};

// HF's order: processors (repetition penalty, no-repeat n-grams), then when sampling the warpers
// temperature, top-k, top-p, min-p. Checks every option's range (errors name the option).
LogitsProcessorList make_logits_processors(const GenerationOptions& options);

// ---- the model side ----
// Feeds a batch of sequences through a CausalLM: the prompts left-padded into one batch (a key
// mask hides the padding and each row counts its positions from its first token, so a row
// computes what it would alone), then one token per row and step. Rows can be dropped or
// repeated between steps (select_rows), which reorders the KV cache rows. Switches the model to
// eval mode while it lives and records nothing on the tape. Without the KV cache each row's whole
// sequence is recomputed alone every step.
class BatchDecoder {
 public:
  // capacity: the most slots a row will need (longest prompt + longest continuation; clamped to
  // the model's context), so a long-context model does not allocate its whole context.
  BatchDecoder(nn::CausalLM& model, bool use_kv_cache, int64_t capacity);
  ~BatchDecoder();
  BatchDecoder(const BatchDecoder&) = delete;
  BatchDecoder& operator=(const BatchDecoder&) = delete;

  // Starts one row per prompt (each at least one id); returns the next-token scores (rows, V).
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts);
  // Appends tokens[r] to row r; returns the next-token scores (rows, V).
  std::vector<float> step(std::span<const int32_t> tokens);
  // Keeps rows `rows` in that order (repeats allowed).
  void select_rows(const std::vector<int64_t>& rows);
  int64_t rows() const { return rows_; }

 private:
  std::vector<float> scores_of(const Tensor& logits);  // (B, 1, V) -> rows * V floats
  Tensor ids_tensor(const std::vector<int32_t>& ids, int64_t rows, int64_t T) const;  // on the model's device
  nn::CausalLM& model_;
  bool was_training_;
  bool use_kv_cache_;
  int64_t capacity_;
  int64_t rows_ = 0;
  nn::KVCache cache_;
  std::vector<std::vector<int32_t>> sequences_;  // recompute mode only
};

// ---- results ----
enum class FinishReason { eos, length, context_full, stopped, stop_string };
// "eos", "length", "context_full", "stopped", "stop_string"
const char* finish_reason_name(FinishReason reason);

struct GeneratedSequence {
  std::vector<int32_t> ids;  // generated tokens only, the EOS that ended them included
  FinishReason finish_reason = FinishReason::length;
  // Beam search: HF's sequence score, sum of the processed log-probabilities / length^length_penalty
  // (length counts the generated tokens, EOS included). 0 otherwise.
  double score = 0;
  // Finish reason stop_string: the text is detokenize(ids) cut to its first text_end bytes, which
  // end with the stop string. Otherwise 0 (nothing to cut).
  size_t text_end = 0;
};

struct GenerationResult {
  // num_return_sequences of them; the best first for beam search.
  std::vector<GeneratedSequence> sequences;
  std::vector<int32_t> ids;                           // sequences[0].ids
  FinishReason finish_reason = FinishReason::length;  // sequences[0]'s
  double prefill_seconds = 0;        // prompt forward and the first token (of the whole batch)
  double decode_seconds = 0;         // every later token
  double tokens_per_second() const;  // generated tokens over the whole time
};

// Called with each generated token as soon as it is chosen; returning false stops that sequence
// (finish reason `stopped`). Not available with beam search, whose tokens are final only at the
// end (HF's streamers refuse beam search too).
using TokenCallback = std::function<bool(int32_t id)>;
// The batched form: which prompt, which of its sequences (num_return_sequences), the token.
using BatchTokenCallback = std::function<bool(size_t prompt, size_t sequence, int32_t id)>;

// Continues `prompt` (at least one id) until an EOS id, a stop string, max_new_tokens /
// max_length, the model's context length or the callback says stop.
GenerationResult generate(nn::CausalLM& model, std::span<const int32_t> prompt, const GenerationOptions& options,
                          const TokenCallback& on_token = {});

// Continues every prompt in one batch through the model; each sequence ends on its own (EOS,
// stop string, its limit, the callback) and leaves the batch. max_length counts each prompt's own
// length. Every result equals generate() of that prompt alone (up to float rounding of the batched
// kernels).
std::vector<GenerationResult> generate_batch(nn::CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                             const GenerationOptions& options,
                                             const BatchTokenCallback& on_token = {});

// ---- streaming text ----
// Turns a sequence's generated ids into text pieces as they come, for printing: a piece never
// ends inside a UTF-8 character (byte-level tokens can end mid-character) nor shows text that may
// turn out to be part of a stop string; once a stop string appears, nothing after it is shown.
// The pieces put together equal the final text.
class TextStream {
 public:
  explicit TextStream(Detokenizer detokenize, std::vector<std::string> stop_strings = {});
  // Adds the next generated id; returns the text that became final (often empty).
  std::string push(int32_t id);
  // At the end of generation: the rest of the text (incomplete UTF-8 bytes included), cut after
  // the first stop string.
  std::string finish();
  bool stopped() const { return stop_end_ != std::string::npos; }  // a stop string appeared
  std::string text() const;                                         // the final text so far

 private:
  Detokenizer detokenize_;
  std::vector<std::string> stop_strings_;
  std::vector<int32_t> ids_;
  std::string full_;                    // detokenize(ids_)
  size_t emitted_ = 0;                  // bytes of full_ returned so far
  size_t stop_end_ = std::string::npos;  // where the first stop string ends, once found
};

// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence.
size_t complete_utf8_prefix(std::string_view bytes);
// The end (in bytes) of the earliest-ending occurrence of any stop string in `text` that ends
// after byte `from`; npos if none.
size_t find_stop_string(std::string_view text, const std::vector<std::string>& stop_strings, size_t from = 0);

}  // namespace kotoba::infer
