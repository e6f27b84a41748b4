// Logits processors, token selection and the GPT-2 decoding loop (see generate.h).
#include "infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

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

int32_t argmax(std::span<const float> scores) {
  KOTOBA_CHECK(!scores.empty(), "argmax: no scores");
  return int32_t(std::max_element(scores.begin(), scores.end()) - scores.begin());
}

int32_t sample_from_scores(std::span<const float> scores, Generator& gen) {
  KOTOBA_CHECK(!scores.empty(), "sample: no scores");
  const float top = *std::max_element(scores.begin(), scores.end());
  KOTOBA_CHECK(std::isfinite(top), "sample: no token has a finite score (max ", top, ")");
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

LogitsProcessorList make_logits_processors(const GenerationOptions& o) {
  KOTOBA_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", o.max_new_tokens);
  KOTOBA_CHECK(o.top_k >= 0, "top_k must be >= 0 (0 turns it off), got ", o.top_k);
  LogitsProcessorList list;
  if (o.repetition_penalty != 1.0f) list.push_back(std::make_unique<RepetitionPenalty>(o.repetition_penalty));
  if (o.do_sample) {
    if (o.temperature != 1.0f) list.push_back(std::make_unique<Temperature>(o.temperature));
    if (o.top_k > 0) list.push_back(std::make_unique<TopK>(o.top_k));
    if (o.top_p != 1.0f) list.push_back(std::make_unique<TopP>(o.top_p));
  }
  return list;
}

Decoder::Decoder(nn::CausalLM& model, bool use_kv_cache, int64_t capacity)
    : model_(model),
      was_training_(model.training()),
      use_kv_cache_(use_kv_cache),
      capacity_(capacity > 0 ? std::min(capacity, model.max_positions()) : model.max_positions()) {
  model_.eval();
  if (use_kv_cache_) cache_ = model_.make_kv_cache(1, capacity_);
}

Decoder::~Decoder() { model_.train(was_training_); }

std::vector<float> Decoder::feed(std::span<const int32_t> ids) {
  KOTOBA_CHECK(!ids.empty(), "generate: nothing to feed the model");
  KOTOBA_CHECK(length_ + int64_t(ids.size()) <= max_length(), "generate: ", length_ + int64_t(ids.size()),
               " tokens exceed the model's context of ", max_length());
  NoGradGuard no_grad;
  Tensor logits;
  if (use_kv_cache_) {
    logits = model_.logits_cached(Tensor::from_vector_i32({ids.begin(), ids.end()}, {1, int64_t(ids.size())}), cache_,
                                  /*last_only=*/true);
  } else {
    sequence_.insert(sequence_.end(), ids.begin(), ids.end());
    const int64_t T = int64_t(sequence_.size());
    logits = model_.logits(Tensor::from_vector_i32(sequence_, {1, T})).slice_view(1, T - 1, T);
  }
  length_ += int64_t(ids.size());
  return logits.to_vector();
}

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
  }
  return "unknown";
}

double GenerationResult::tokens_per_second() const {
  double seconds = prefill_seconds + decode_seconds;
  return seconds > 0 ? double(ids.size()) / seconds : 0.0;
}

GenerationResult generate(nn::CausalLM& model, std::span<const int32_t> prompt, const GenerationOptions& options,
                          const TokenCallback& on_token) {
  KOTOBA_CHECK(!prompt.empty(), "generate: the prompt is empty (give at least one token, e.g. the BOS/EOS id)");
  const int64_t V = model.vocab_size();
  for (int32_t id : prompt)
    KOTOBA_CHECK(id >= 0 && id < V, "generate: prompt token ", id, " is outside the vocabulary of ", V);
  LogitsProcessorList processors = make_logits_processors(options);
  GenerationResult result;
  if (options.max_new_tokens == 0) return result;

  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  Decoder decoder(model, options.use_kv_cache, int64_t(prompt.size()) + options.max_new_tokens);
  Generator gen(options.seed);
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  std::vector<float> scores = decoder.feed(prompt);
  auto first_token_done = start;
  for (;;) {
    apply_processors(processors, context, scores);
    const int32_t next = options.do_sample ? sample_from_scores(scores, gen) : argmax(scores);
    context.push_back(next);
    result.ids.push_back(next);
    if (result.ids.size() == 1) first_token_done = clock::now();
    const bool go_on = !on_token || on_token(next);
    if (std::find(options.eos_token_ids.begin(), options.eos_token_ids.end(), next) != options.eos_token_ids.end()) {
      result.finish_reason = FinishReason::eos;
      break;
    }
    if (!go_on) {
      result.finish_reason = FinishReason::stopped;
      break;
    }
    if (int64_t(result.ids.size()) >= options.max_new_tokens) {
      result.finish_reason = FinishReason::length;
      break;
    }
    if (decoder.length() >= decoder.max_length()) {
      result.finish_reason = FinishReason::context_full;
      break;
    }
    scores = decoder.feed(std::span<const int32_t>(&next, 1));
  }
  auto end = clock::now();
  result.prefill_seconds = std::chrono::duration<double>(first_token_done - start).count();
  result.decode_seconds = std::chrono::duration<double>(end - first_token_done).count();
  return result;
}

}  // namespace kotoba::infer
