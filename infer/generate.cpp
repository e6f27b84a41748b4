// Logits processors, token selection, the batched decoder, greedy/sampled decoding, beam search
// and text streaming (see generate.h). Beam search follows transformers 4.48's _beam_search with
// BeamSearchScorer and BeamHypotheses step for step, so that it keeps the same hypotheses.
#include "infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "ops/ops.h"

namespace kotoba::infer {

namespace {
constexpr float kRemoved = -std::numeric_limits<float>::infinity();
}

void apply_processors(const LogitsProcessorList& processors, std::span<const int32_t> context,
                      std::span<float> scores) {
  for (auto& p : processors) p->apply(context, scores);
}

RepetitionPenalty::RepetitionPenalty(float penalty) : penalty_(penalty) {
  KOTOBA_CHECK(penalty > 0 && std::isfinite(penalty), "repetition_penalty must be positive, got ", penalty);
}

void RepetitionPenalty::apply(std::span<const int32_t> context, std::span<float> scores) const {
  // Each distinct token once, however often it occurs.
  std::unordered_set<int32_t> seen(context.begin(), context.end());
  for (int32_t id : seen) {
    KOTOBA_CHECK(id >= 0 && size_t(id) < scores.size(), "repetition_penalty: token id ", id,
                 " is outside the vocabulary of ", scores.size());
    float& s = scores[size_t(id)];
    s = s < 0 ? s * penalty_ : s / penalty_;
  }
}

NoRepeatNGram::NoRepeatNGram(int64_t n) : n_(n) {
  KOTOBA_CHECK(n >= 1, "no_repeat_ngram_size must be at least 1 (0 turns it off), got ", n);
}

void NoRepeatNGram::apply(std::span<const int32_t> context, std::span<float> scores) const {
  const int64_t L = int64_t(context.size()), n = n_;
  if (L + 1 < n) return;
  // The last n - 1 tokens; every earlier n-gram that starts with them bans its last token.
  std::span<const int32_t> prefix = context.subspan(size_t(L - (n - 1)));
  for (int64_t i = 0; i + n <= L; ++i) {
    if (!std::equal(prefix.begin(), prefix.end(), context.begin() + i)) continue;
    const int32_t banned = context[size_t(i + n - 1)];
    KOTOBA_CHECK(banned >= 0 && size_t(banned) < scores.size(), "no_repeat_ngram_size: token id ", banned,
                 " is outside the vocabulary of ", scores.size());
    scores[size_t(banned)] = kRemoved;
  }
}

Temperature::Temperature(float temperature) : temperature_(temperature) {
  KOTOBA_CHECK(temperature > 0 && std::isfinite(temperature), "temperature must be positive, got ", temperature);
}

void Temperature::apply(std::span<const int32_t>, std::span<float> scores) const {
  for (float& s : scores) s /= temperature_;
}

TopK::TopK(int64_t k) : k_(k) { KOTOBA_CHECK(k >= 1, "top_k must be at least 1, got ", k); }

void TopK::apply(std::span<const int32_t>, std::span<float> scores) const {
  if (k_ >= int64_t(scores.size())) return;
  std::vector<float> sorted(scores.begin(), scores.end());
  std::nth_element(sorted.begin(), sorted.begin() + (k_ - 1), sorted.end(), std::greater<float>());
  const float kth = sorted[size_t(k_ - 1)];
  for (float& s : scores)
    if (s < kth) s = kRemoved;
}

TopP::TopP(float top_p) : top_p_(top_p) {
  KOTOBA_CHECK(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
}

void TopP::apply(std::span<const int32_t>, std::span<float> scores) const {
  if (top_p_ >= 1.0f || scores.empty()) return;
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return scores[size_t(a)] < scores[size_t(b)]; });
  const double top = scores[size_t(order.back())];
  double total = 0;
  for (float s : scores) total += std::exp(double(s) - top);
  const double remove_up_to = 1.0 - double(top_p_);
  double cumulative = 0;
  // Ascending: the last (most probable) token always stays.
  for (size_t i = 0; i + 1 < order.size(); ++i) {
    float& s = scores[size_t(order[i])];
    cumulative += std::exp(double(s) - top) / total;
    if (cumulative > remove_up_to) break;
    s = kRemoved;
  }
}

MinP::MinP(float min_p) : min_p_(min_p) {
  KOTOBA_CHECK(min_p >= 0 && min_p <= 1, "min_p must be in [0, 1], got ", min_p);
}

void MinP::apply(std::span<const int32_t>, std::span<float> scores) const {
  if (min_p_ <= 0 || scores.empty()) return;
  const size_t best = size_t(std::max_element(scores.begin(), scores.end()) - scores.begin());
  const double top = scores[best];
  if (!std::isfinite(top)) return;
  // p_i / p_max = exp(s_i - s_max): the softmax's normaliser cancels.
  for (size_t i = 0; i < scores.size(); ++i)
    if (i != best && std::exp(double(scores[i]) - top) < double(min_p_)) scores[i] = kRemoved;
}

int32_t argmax(std::span<const float> scores) {
  KOTOBA_CHECK(!scores.empty(), "argmax: no scores");
  return int32_t(std::max_element(scores.begin(), scores.end()) - scores.begin());
}

int32_t sample_from_scores(std::span<const float> scores, Generator& gen) {
  KOTOBA_CHECK(!scores.empty(), "sample: no scores");
  const float top = *std::max_element(scores.begin(), scores.end());
  KOTOBA_CHECK(std::isfinite(top), "sample: every token was removed by the logits processors or has a non-finite score (max ", top, "); loosen no_repeat_ngram_size, top_k, top_p or min_p");
  double total = 0;
  for (float s : scores) total += std::exp(double(s) - top);
  // 48 random bits from two 24-bit draws, so tiny probabilities of large vocabularies are reachable.
  double hi = gen.uniform(), lo = gen.uniform();
  double target = (hi + lo / 16777216.0) * total, cumulative = 0;
  int32_t last_possible = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    double p = std::exp(double(scores[i]) - top);
    if (p == 0) continue;
    cumulative += p;
    last_possible = int32_t(i);
    if (target < cumulative) return int32_t(i);
  }
  return last_possible;  // rounding left target at the very top
}

void log_softmax_in_place(std::span<float> scores) {
  if (scores.empty()) return;
  const float top = *std::max_element(scores.begin(), scores.end());
  KOTOBA_CHECK(std::isfinite(top), "log_softmax: no finite score (max ", top, ")");
  double total = 0;
  for (float s : scores) total += std::exp(double(s - top));
  const float log_total = float(std::log(total));
  for (float& s : scores) s = (s - top) - log_total;
}

EarlyStopping parse_early_stopping(const std::string& text) {
  if (text == "false" || text == "False") return EarlyStopping::heuristic;
  if (text == "true" || text == "True") return EarlyStopping::stop;
  if (text == "never") return EarlyStopping::never;
  throw Error(detail::concat("early_stopping must be \"true\", \"false\" or \"never\", got \"", text, "\""));
}

LogitsProcessorList make_logits_processors(const GenerationOptions& o) {
  KOTOBA_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", o.max_new_tokens);
  KOTOBA_CHECK(o.max_length >= 0, "max_length must be >= 0 (0: use max_new_tokens), got ", o.max_length);
  KOTOBA_CHECK(o.top_k >= 0, "top_k must be >= 0 (0 turns it off), got ", o.top_k);
  KOTOBA_CHECK(o.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0 (0 turns it off), got ",
               o.no_repeat_ngram_size);
  KOTOBA_CHECK(o.num_beams >= 1, "num_beams must be >= 1, got ", o.num_beams);
  KOTOBA_CHECK(o.num_return_sequences >= 1, "num_return_sequences must be >= 1, got ", o.num_return_sequences);
  KOTOBA_CHECK(std::isfinite(o.length_penalty), "length_penalty must be finite, got ", o.length_penalty);
  if (o.num_beams > 1) {
    KOTOBA_CHECK(!o.do_sample, "beam search with sampling (num_beams > 1 and do_sample) is not supported");
    KOTOBA_CHECK(o.num_return_sequences <= o.num_beams, "num_return_sequences (", o.num_return_sequences,
                 ") must be <= num_beams (", o.num_beams, ")");
  } else if (!o.do_sample) {
    KOTOBA_CHECK(o.num_return_sequences == 1, "num_return_sequences must be 1 for greedy decoding (got ",
                 o.num_return_sequences, "): sample or use beam search for several sequences");
  }
  for (const std::string& s : o.stop_strings) KOTOBA_CHECK(!s.empty(), "stop_strings: a stop string is empty");
  KOTOBA_CHECK(o.stop_strings.empty() || o.detokenize, "stop_strings need a detokenizer (GenerationOptions::detokenize)");
  for (int32_t id : o.eos_token_ids) KOTOBA_CHECK(id >= 0, "eos_token_ids: token id ", id, " is negative");
  LogitsProcessorList list;
  if (o.repetition_penalty != 1.0f) list.push_back(std::make_unique<RepetitionPenalty>(o.repetition_penalty));
  if (o.no_repeat_ngram_size > 0) list.push_back(std::make_unique<NoRepeatNGram>(o.no_repeat_ngram_size));
  if (o.do_sample) {
    if (o.temperature != 1.0f) list.push_back(std::make_unique<Temperature>(o.temperature));
    if (o.top_k > 0) list.push_back(std::make_unique<TopK>(o.top_k));
    if (o.top_p != 1.0f) list.push_back(std::make_unique<TopP>(o.top_p));
    if (o.min_p != 0.0f) list.push_back(std::make_unique<MinP>(o.min_p));
  }
  return list;
}

// ---- BatchDecoder ----

BatchDecoder::BatchDecoder(nn::CausalLM& model, bool use_kv_cache, int64_t capacity)
    : model_(model),
      was_training_(model.training()),
      use_kv_cache_(use_kv_cache),
      capacity_(capacity > 0 ? std::min(capacity, model.max_positions()) : model.max_positions()) {
  model_.eval();
}

BatchDecoder::~BatchDecoder() { model_.train(was_training_); }

std::vector<float> BatchDecoder::scores_of(const Tensor& logits) { return logits.contiguous().to_vector(); }

Tensor BatchDecoder::ids_tensor(const std::vector<int32_t>& ids, int64_t rows, int64_t T) const {
  return on_device(Tensor::from_vector_i32(ids, {rows, T}), model_.device());
}

std::vector<float> BatchDecoder::prefill(const std::vector<std::vector<int32_t>>& prompts) {
  KOTOBA_CHECK(!prompts.empty(), "generate: no prompts to feed the model");
  NoGradGuard no_grad;
  rows_ = int64_t(prompts.size());
  size_t longest = 0;
  for (const auto& p : prompts) {
    KOTOBA_CHECK(!p.empty(), "generate: a prompt is empty");
    longest = std::max(longest, p.size());
  }
  const int64_t T = int64_t(longest);
  KOTOBA_CHECK(T <= capacity_, "generate: ", T, " tokens exceed the model's context of ", capacity_);
  if (!use_kv_cache_) {
    sequences_ = prompts;
    std::vector<float> scores;
    for (const auto& p : sequences_) {
      const int64_t n = int64_t(p.size());
      auto row = scores_of(model_.logits(ids_tensor(p, 1, n)).slice_view(1, n - 1, n));
      scores.insert(scores.end(), row.begin(), row.end());
    }
    return scores;
  }
  cache_ = model_.make_kv_cache(rows_, capacity_);
  // Left padding: every row's last token sits in the same slot, so one step feeds them all. The
  // padding slots repeat the row's first token (any valid id: they are masked out).
  std::vector<int32_t> ids;
  bool padded = false;
  for (const auto& p : prompts) {
    const size_t pad = longest - p.size();
    padded = padded || pad > 0;
    cache_.pad.push_back(int64_t(pad));
    ids.insert(ids.end(), pad, p.front());
    ids.insert(ids.end(), p.begin(), p.end());
  }
  if (!padded) cache_.pad.clear();
  return scores_of(model_.logits_cached(ids_tensor(ids, rows_, T), cache_, /*last_only=*/true));
}

std::vector<float> BatchDecoder::step(std::span<const int32_t> tokens) {
  KOTOBA_CHECK(int64_t(tokens.size()) == rows_, "generate: ", tokens.size(), " tokens for ", rows_, " rows");
  NoGradGuard no_grad;
  if (!use_kv_cache_) {
    std::vector<float> scores;
    for (size_t r = 0; r < sequences_.size(); ++r) {
      auto& seq = sequences_[r];
      seq.push_back(tokens[r]);
      const int64_t n = int64_t(seq.size());
      KOTOBA_CHECK(n <= capacity_, "generate: ", n, " tokens exceed the model's context of ", capacity_);
      auto row = scores_of(model_.logits(ids_tensor(seq, 1, n)).slice_view(1, n - 1, n));
      scores.insert(scores.end(), row.begin(), row.end());
    }
    return scores;
  }
  KOTOBA_CHECK(cache_.length < cache_.max_len(), "generate: ", cache_.length + 1,
               " tokens exceed the decoder's capacity of ", cache_.max_len());
  return scores_of(model_.logits_cached(ids_tensor({tokens.begin(), tokens.end()}, rows_, 1), cache_,
                                        /*last_only=*/true));
}

void BatchDecoder::select_rows(const std::vector<int64_t>& rows) {
  std::vector<int64_t> identity(static_cast<size_t>(rows_));
  std::iota(identity.begin(), identity.end(), 0);
  if (rows == identity) return;
  if (use_kv_cache_) {
    cache_.select_rows(rows);
  } else {
    std::vector<std::vector<int32_t>> kept;
    for (int64_t r : rows) kept.push_back(sequences_.at(size_t(r)));
    sequences_ = std::move(kept);
  }
  rows_ = int64_t(rows.size());
}

// ---- results ----

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::eos:
      return "eos";
    case FinishReason::length:
      return "length";
    case FinishReason::context_full:
      return "context_full";
    case FinishReason::stopped:
      return "stopped";
    case FinishReason::stop_string:
      return "stop_string";
  }
  return "unknown";
}

double GenerationResult::tokens_per_second() const {
  double seconds = prefill_seconds + decode_seconds;
  size_t tokens = 0;
  for (const auto& s : sequences) tokens += s.ids.size();
  return seconds > 0 ? double(tokens) / seconds : 0.0;
}

size_t complete_utf8_prefix(std::string_view bytes) {
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    unsigned char c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
    size_t need = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    return need > back ? n - back : n;
  }
  return n;  // no lead byte within 4: not UTF-8 worth waiting for
}

size_t find_stop_string(std::string_view text, const std::vector<std::string>& stop_strings, size_t from) {
  size_t best = std::string::npos;
  for (const std::string& s : stop_strings) {
    // An occurrence ending after `from` starts after from - |s|.
    const size_t start = from >= s.size() ? from - s.size() + 1 : 0;
    const size_t at = text.find(s, start);
    if (at != std::string_view::npos) best = std::min(best, at + s.size());
  }
  return best;
}

namespace {

using clock = std::chrono::steady_clock;

// How many tokens a prompt of P tokens may gain and why it would stop there: max_new_tokens or
// max_length - P, unless the model's context ends first (its last position's prediction is the
// last token, so a full context gains C - P + 1).
struct Limit {
  int64_t tokens;
  FinishReason reason;
};

Limit limit_for(int64_t P, const GenerationOptions& o, int64_t context) {
  KOTOBA_CHECK(P <= context, "generate: a prompt of ", P, " tokens is longer than the model's context of ", context);
  int64_t wanted = o.max_new_tokens;
  if (o.max_length > 0) {
    KOTOBA_CHECK(o.max_length > P, "max_length (", o.max_length, ") must exceed the prompt's length of ", P,
                 " tokens");
    wanted = o.max_length - P;
  }
  const int64_t room = context - P + 1;
  return wanted <= room ? Limit{wanted, FinishReason::length} : Limit{room, FinishReason::context_full};
}

bool is_eos(const GenerationOptions& o, int32_t id) {
  return std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), id) != o.eos_token_ids.end();
}

struct Timing {
  clock::time_point start = clock::now(), first_token = start;
  bool first_done = false;
  void token_chosen() {
    if (!first_done) first_token = clock::now(), first_done = true;
  }
  void fill(std::vector<GenerationResult>& results) const {
    const auto end = clock::now();
    for (auto& r : results) {
      r.prefill_seconds = std::chrono::duration<double>(first_token - start).count();
      r.decode_seconds = std::chrono::duration<double>(end - first_token).count();
    }
  }
};

// ---- greedy decoding and sampling ----

struct SampledRow {
  size_t prompt, sequence;
  std::vector<int32_t> context;  // prompt + generated
  Limit limit;
  size_t text_checked = 0;  // bytes of the generated text already searched for stop strings
};

void decode_greedy_or_sampled(nn::CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                              const GenerationOptions& o, const LogitsProcessorList& processors,
                              const BatchTokenCallback& on_token, std::vector<GenerationResult>& results,
                              Timing& timing) {
  const int64_t V = model.vocab_size(), R = o.num_return_sequences;
  KOTOBA_CHECK(o.prompt_seeds.empty() || o.prompt_seeds.size() == prompts.size(), "generate: ", o.prompt_seeds.size(),
               " prompt seeds for ", prompts.size(), " prompts");
  std::vector<Generator> generators;
  for (size_t p = 0; p < prompts.size(); ++p) generators.emplace_back(o.prompt_seeds.empty() ? o.seed : o.prompt_seeds[p]);
  std::vector<std::vector<int32_t>> started;  // the prompts with something to generate
  std::vector<SampledRow> rows;
  std::vector<int64_t> expand;  // prefill row -> sequence rows
  for (size_t p = 0; p < prompts.size(); ++p) {
    results[p].sequences.resize(size_t(R));
    Limit limit = limit_for(int64_t(prompts[p].size()), o, model.max_positions());
    if (limit.tokens == 0) {
      for (auto& s : results[p].sequences) s.finish_reason = limit.reason;
      continue;
    }
    for (int64_t s = 0; s < R; ++s) {
      rows.push_back({p, size_t(s), prompts[p], limit});
      expand.push_back(int64_t(started.size()));
    }
    started.push_back(prompts[p]);
  }
  if (rows.empty()) return;
  int64_t longest = 0;
  for (const auto& p : started) longest = std::max(longest, int64_t(p.size()));
  int64_t most_new = 0;
  for (const auto& r : rows) most_new = std::max(most_new, r.limit.tokens);
  BatchDecoder decoder(model, o.use_kv_cache, longest + most_new);
  std::vector<float> prefill_scores = decoder.prefill(started);
  decoder.select_rows(expand);
  std::vector<float> scores;
  for (int64_t e : expand)
    scores.insert(scores.end(), prefill_scores.begin() + e * V, prefill_scores.begin() + (e + 1) * V);

  for (;;) {
    std::vector<int64_t> kept;
    std::vector<int32_t> next_tokens;
    std::vector<SampledRow> kept_rows;
    for (size_t r = 0; r < rows.size(); ++r) {
      SampledRow& row = rows[r];
      std::span<float> s(scores.data() + r * size_t(V), size_t(V));
      apply_processors(processors, row.context, s);
      const int32_t next = o.do_sample ? sample_from_scores(s, generators[row.prompt]) : argmax(s);
      timing.token_chosen();
      if (o.observe_scores) o.observe_scores(row.prompt, row.sequence, s, next);
      row.context.push_back(next);
      GeneratedSequence& out = results[row.prompt].sequences[row.sequence];
      out.ids.push_back(next);
      const bool go_on = !on_token || on_token(row.prompt, row.sequence, next);
      bool finished = true;
      size_t stop_end = std::string::npos;
      if (!o.stop_strings.empty() && !is_eos(o, next)) {
        const std::string text = o.detokenize(out.ids);
        stop_end = find_stop_string(text, o.stop_strings, row.text_checked);
        row.text_checked = text.size();
      }
      if (is_eos(o, next)) {
        out.finish_reason = FinishReason::eos;
      } else if (stop_end != std::string::npos) {
        out.finish_reason = FinishReason::stop_string;
        out.text_end = stop_end;
      } else if (!go_on) {
        out.finish_reason = FinishReason::stopped;
      } else if (int64_t(out.ids.size()) >= row.limit.tokens) {
        out.finish_reason = row.limit.reason;
      } else {
        finished = false;
      }
      if (finished) continue;
      kept.push_back(int64_t(r));
      next_tokens.push_back(next);
      kept_rows.push_back(std::move(row));
    }
    if (kept.empty()) break;
    rows = std::move(kept_rows);
    decoder.select_rows(kept);
    scores = decoder.step(next_tokens);
  }
}

// ---- beam search ----

// HF's BeamHypotheses: the num_beams best finished hypotheses of one prompt.
struct Hypothesis {
  double score;
  std::vector<int32_t> ids;
  FinishReason reason;
};

struct BeamGroup {
  size_t prompt;
  Limit limit;
  std::vector<float> beam_scores;           // float32 sums of processed log-probabilities, as HF keeps them
  std::vector<std::vector<int32_t>> beams;  // generated tokens of each running beam
  std::vector<Hypothesis> hypotheses;
  double worst_score = 1e9;
  bool done = false;

  void add(std::vector<int32_t> ids, double sum_logprobs, int64_t generated, double length_penalty,
           size_t num_beams, FinishReason reason) {
    const double score = sum_logprobs / std::pow(double(generated), length_penalty);
    if (hypotheses.size() < num_beams || score > worst_score) {
      hypotheses.push_back({score, std::move(ids), reason});
      if (hypotheses.size() > num_beams) {
        // Drop the worst (the first of equal scores); the next worst becomes the bar.
        std::vector<std::pair<double, size_t>> ranked;
        for (size_t i = 0; i < hypotheses.size(); ++i) ranked.push_back({hypotheses[i].score, i});
        std::sort(ranked.begin(), ranked.end());
        hypotheses.erase(hypotheses.begin() + long(ranked[0].second));
        worst_score = ranked[1].first;
      } else {
        worst_score = std::min(score, worst_score);
      }
    }
  }

  bool is_done(double best_sum_logprobs, int64_t generated, const GenerationOptions& o) const {
    if (int64_t(hypotheses.size()) < o.num_beams) return false;
    if (o.early_stopping == EarlyStopping::stop) return true;
    int64_t length = generated;
    if (o.early_stopping == EarlyStopping::never && o.length_penalty > 0) length = limit.tokens;
    return worst_score >= best_sum_logprobs / std::pow(double(length), o.length_penalty);
  }
};

void beam_search(nn::CausalLM& model, const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& o,
                 const LogitsProcessorList& processors, std::vector<GenerationResult>& results, Timing& timing) {
  const int64_t V = model.vocab_size(), K = o.num_beams;
  const size_t n_keep = size_t(std::max<int64_t>(2, 1 + int64_t(o.eos_token_ids.size())) * K);
  std::vector<BeamGroup> groups;
  std::vector<std::vector<int32_t>> started;
  int64_t longest = 0, most_new = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    Limit limit = limit_for(int64_t(prompts[p].size()), o, model.max_positions());
    if (limit.tokens == 0) {
      results[p].sequences.resize(size_t(o.num_return_sequences));
      for (auto& s : results[p].sequences) s.finish_reason = limit.reason;
      continue;
    }
    BeamGroup g{p, limit, std::vector<float>(size_t(K), -1e9f), std::vector<std::vector<int32_t>>(size_t(K)), {}};
    g.beam_scores[0] = 0;  // only the first beam's continuations count at the first step (HF)
    groups.push_back(std::move(g));
    started.push_back(prompts[p]);
    longest = std::max(longest, int64_t(prompts[p].size()));
    most_new = std::max(most_new, limit.tokens);
  }
  if (groups.empty()) return;
  BatchDecoder decoder(model, o.use_kv_cache, longest + most_new);
  std::vector<float> prefill_scores = decoder.prefill(started);
  std::vector<int64_t> expand;
  std::vector<float> scores;
  for (size_t g = 0; g < groups.size(); ++g)
    for (int64_t k = 0; k < K; ++k) {
      expand.push_back(int64_t(g));
      scores.insert(scores.end(), prefill_scores.begin() + int64_t(g) * V, prefill_scores.begin() + int64_t(g + 1) * V);
    }
  decoder.select_rows(expand);

  std::vector<float> candidates(size_t(K * V));
  std::vector<int64_t> order(size_t(K * V));
  std::vector<int32_t> context;
  for (;;) {
    std::vector<int64_t> next_rows;
    std::vector<int32_t> next_tokens;
    std::vector<BeamGroup> running;
    for (size_t g = 0; g < groups.size(); ++g) {
      BeamGroup& group = groups[g];
      const std::vector<int32_t>& prompt = prompts[group.prompt];
      for (int64_t k = 0; k < K; ++k) {
        std::span<float> s(scores.data() + (int64_t(g) * K + k) * V, size_t(V));
        log_softmax_in_place(s);
        context.assign(prompt.begin(), prompt.end());
        context.insert(context.end(), group.beams[size_t(k)].begin(), group.beams[size_t(k)].end());
        apply_processors(processors, context, s);
        for (int64_t v = 0; v < V; ++v) candidates[size_t(k * V + v)] = s[size_t(v)] + group.beam_scores[size_t(k)];
      }
      // The n_keep best (beam, token) pairs, best first; equal scores by index.
      const size_t keep = std::min(n_keep, candidates.size());
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + long(keep), order.end(), [&](int64_t a, int64_t b) {
        const float x = candidates[size_t(a)], y = candidates[size_t(b)];
        return x > y || (x == y && a < b);
      });
      timing.token_chosen();
      const int64_t generated = int64_t(group.beams[0].size()) + 1;  // tokens per beam after this step
      std::vector<float> new_scores;
      std::vector<int32_t> new_tokens;
      std::vector<int64_t> sources;
      for (size_t rank = 0; rank < keep && int64_t(new_scores.size()) < K; ++rank) {
        const int64_t index = order[rank];
        const int32_t token = int32_t(index % V);
        const int64_t source = index / V;
        const float score = candidates[size_t(index)];
        if (is_eos(o, token)) {
          // An EOS among the num_beams best ends a hypothesis; below them it is ignored.
          if (int64_t(rank) >= K) continue;
          std::vector<int32_t> ids = group.beams[size_t(source)];
          ids.push_back(token);
          group.add(std::move(ids), double(score), generated, o.length_penalty, size_t(K), FinishReason::eos);
        } else {
          new_scores.push_back(score);
          new_tokens.push_back(token);
          sources.push_back(source);
        }
      }
      KOTOBA_CHECK(int64_t(new_scores.size()) == K, "beam search: fewer than num_beams (", K,
                   ") continuations that are not EOS have a finite score");
      group.done = group.done || group.is_done(double(candidates[size_t(order[0])]), generated, o);
      std::vector<std::vector<int32_t>> beams;
      for (int64_t k = 0; k < K; ++k) {
        beams.push_back(group.beams[size_t(sources[size_t(k)])]);
        beams.back().push_back(new_tokens[size_t(k)]);
      }
      group.beams = std::move(beams);
      group.beam_scores = std::move(new_scores);

      bool finished = group.done;
      FinishReason running_reason = group.limit.reason;
      if (!finished && generated >= group.limit.tokens) finished = true;
      if (!finished && !o.stop_strings.empty()) {
        bool all_stopped = true;
        for (const auto& beam : group.beams)
          all_stopped = all_stopped && find_stop_string(o.detokenize(beam), o.stop_strings) != std::string::npos;
        if (all_stopped) finished = true, running_reason = FinishReason::stop_string;
      }
      if (!finished) {
        for (int64_t k = 0; k < K; ++k) {
          next_rows.push_back(int64_t(g) * K + sources[size_t(k)]);
          next_tokens.push_back(new_tokens[size_t(k)]);
        }
        running.push_back(std::move(group));
        continue;
      }
      // Finalize (HF BeamSearchScorer.finalize): a prompt stopped by a limit also offers its
      // running beams; then the best hypotheses are returned, best first.
      if (!group.done)
        for (int64_t k = 0; k < K; ++k)
          group.add(group.beams[size_t(k)], double(group.beam_scores[size_t(k)]), generated, o.length_penalty,
                    size_t(K), running_reason);
      std::vector<Hypothesis>& hyps = group.hypotheses;
      std::stable_sort(hyps.begin(), hyps.end(),
                       [](const Hypothesis& a, const Hypothesis& b) { return a.score < b.score; });
      auto& out = results[group.prompt].sequences;
      for (int64_t j = 0; j < o.num_return_sequences; ++j) {
        Hypothesis& best = hyps[hyps.size() - 1 - size_t(j)];
        GeneratedSequence seq{std::move(best.ids), best.reason, best.score, 0};
        if (seq.finish_reason == FinishReason::stop_string)
          seq.text_end = find_stop_string(o.detokenize(seq.ids), o.stop_strings);
        out.push_back(std::move(seq));
      }
    }
    if (running.empty()) break;
    groups = std::move(running);
    decoder.select_rows(next_rows);
    scores = decoder.step(next_tokens);
  }
}

}  // namespace

std::vector<GenerationResult> generate_batch(nn::CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                             const GenerationOptions& options, const BatchTokenCallback& on_token) {
  KOTOBA_CHECK(!prompts.empty(), "generate: no prompts");
  const int64_t V = model.vocab_size();
  for (size_t p = 0; p < prompts.size(); ++p) {
    KOTOBA_CHECK(!prompts[p].empty(), "generate: prompt ", p,
                 " is empty (give at least one token, e.g. the BOS/EOS id)");
    for (int32_t id : prompts[p])
      KOTOBA_CHECK(id >= 0 && id < V, "generate: prompt token ", id, " is outside the vocabulary of ", V);
  }
  LogitsProcessorList processors = make_logits_processors(options);
  KOTOBA_CHECK(!on_token || options.num_beams == 1,
               "generate: tokens cannot be streamed with beam search (they are final only at the end)");
  KOTOBA_CHECK(!options.observe_scores || options.num_beams == 1,
               "generate: the scores observer needs greedy decoding or sampling, not beam search");
  std::vector<GenerationResult> results(prompts.size());
  Timing timing;
  if (options.num_beams > 1)
    beam_search(model, prompts, options, processors, results, timing);
  else
    decode_greedy_or_sampled(model, prompts, options, processors, on_token, results, timing);
  timing.fill(results);
  for (auto& r : results) {
    r.ids = r.sequences.front().ids;
    r.finish_reason = r.sequences.front().finish_reason;
  }
  return results;
}

GenerationResult generate(nn::CausalLM& model, std::span<const int32_t> prompt, const GenerationOptions& options,
                          const TokenCallback& on_token) {
  KOTOBA_CHECK(!prompt.empty(), "generate: the prompt is empty (give at least one token, e.g. the BOS/EOS id)");
  BatchTokenCallback batch_callback;
  if (on_token) batch_callback = [&](size_t, size_t, int32_t id) { return on_token(id); };
  return std::move(generate_batch(model, {std::vector<int32_t>(prompt.begin(), prompt.end())}, options,
                                  batch_callback)
                       .front());
}

// ---- TextStream ----

TextStream::TextStream(Detokenizer detokenize, std::vector<std::string> stop_strings)
    : detokenize_(std::move(detokenize)), stop_strings_(std::move(stop_strings)) {
  KOTOBA_CHECK(bool(detokenize_), "TextStream: a detokenizer is required");
}

std::string TextStream::push(int32_t id) {
  if (stopped()) return {};
  ids_.push_back(id);
  const size_t before = full_.size();
  full_ = detokenize_(ids_);
  if (!stop_strings_.empty()) stop_end_ = find_stop_string(full_, stop_strings_, std::min(before, full_.size()));
  size_t safe;
  if (stopped()) {
    safe = stop_end_;
  } else {
    safe = complete_utf8_prefix(full_);
    // Hold back a tail that could be the start of a stop string.
    for (const std::string& s : stop_strings_)
      for (size_t n = std::min(s.size() - 1, full_.size()); n > 0; --n)
        if (full_.compare(full_.size() - n, n, s, 0, n) == 0) {
          safe = std::min(safe, full_.size() - n);
          break;
        }
  }
  if (safe <= emitted_) return {};
  std::string piece = full_.substr(emitted_, safe - emitted_);
  emitted_ = safe;
  return piece;
}

std::string TextStream::finish() {
  const size_t end = stopped() ? stop_end_ : full_.size();
  if (end <= emitted_) return {};
  std::string piece = full_.substr(emitted_, end - emitted_);
  emitted_ = end;
  return piece;
}

std::string TextStream::text() const { return full_.substr(0, stopped() ? stop_end_ : full_.size()); }

}  // namespace kotoba::infer
