// Shared rollout helpers of the RL trainers (train/rollout.h).
#include "train/rollout.h"

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/preference_data.h"
#include "tokenizer/tokenizer.h"

namespace kotoba::train {

infer::GenerationOptions rollout_sampling_options(const SamplingSettings& settings, const tokenizer::Tokenizer& tok,
                                                  const chat::ChatTemplate& tmpl, int64_t n) {
  infer::GenerationOptions o;
  o.max_new_tokens = settings.max_new_tokens;
  o.do_sample = true;
  o.temperature = float(settings.temperature);
  o.top_k = settings.top_k;
  o.top_p = float(settings.top_p);
  o.num_return_sequences = n;
  if (tok.eos_id()) o.eos_token_ids = {*tok.eos_id()};
  o.stop_strings = tmpl.stop_strings();
  o.detokenize = [&tok](std::span<const int32_t> ids) { return tok.decode(ids); };
  return o;
}

std::vector<std::vector<int32_t>> encode_rollout_prompts(const std::vector<data::PreferencePair>& prompts,
                                                         const chat::ChatTemplate& tmpl,
                                                         const tokenizer::Tokenizer& tok, int64_t max_new_tokens,
                                                         int64_t max_positions, const char* who) {
  std::vector<std::vector<int32_t>> out;
  out.reserve(prompts.size());
  for (const auto& p : prompts) {
    std::vector<chat::Message> m = data::template_messages(p.prompt, tmpl.style());
    std::vector<int32_t> ids = tok.encode(tmpl.render(m, /*add_generation_prompt=*/true), true);
    KOTOBA_CHECK(!ids.empty(), who, ": ", p.where, ": the prompt renders to no token");
    KOTOBA_CHECK(int64_t(ids.size()) + max_new_tokens <= max_positions, who, ": ", p.where, ": the prompt (",
                 ids.size(), " tokens) and the completion length (", max_new_tokens,
                 ") exceed the model's context (", max_positions, " positions)");
    out.push_back(std::move(ids));
  }
  return out;
}

void split_validation(std::vector<data::PreferencePair>& prompts, std::vector<data::PreferencePair>& val,
                      double fraction, int64_t seed) {
  if (!val.empty() || fraction <= 0) return;
  const size_t n_val = size_t(std::floor(double(prompts.size()) * fraction));
  std::vector<size_t> order = permutation(prompts.size(), mix64(uint64_t(seed) ^ 0x5a11d5eedull));
  std::vector<bool> is_val(prompts.size(), false);
  for (size_t i = 0; i < n_val; ++i) is_val[order[i]] = true;
  std::vector<data::PreferencePair> kept;
  for (size_t i = 0; i < prompts.size(); ++i) (is_val[i] ? val : kept).push_back(std::move(prompts[i]));
  prompts = std::move(kept);
}

std::string completion_text(const infer::GeneratedSequence& s, const tokenizer::Tokenizer& tok,
                            const std::vector<std::string>& stops) {
  std::vector<int32_t> ids = s.ids;
  if (!ids.empty() && tok.eos_id() && ids.back() == *tok.eos_id()) ids.pop_back();
  std::string text = tok.decode(ids);
  if (s.text_end > 0) text = text.substr(0, s.text_end);
  for (const std::string& stop : stops)
    if (!stop.empty() && text.size() >= stop.size() && text.compare(text.size() - stop.size(), stop.size(), stop) == 0) {
      text.resize(text.size() - stop.size());
      break;
    }
  return text;
}

}  // namespace kotoba::train
