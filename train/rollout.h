// What the RL trainers (GRPO, PPO) share around sampling: the prompts rendered for generation,
// a validation split, the sampler's options, and a sampled reply's text as a reward reads it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "infer/generate.h"

namespace kotoba::data {
struct PreferencePair;
}
namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::train {

struct SamplingSettings {
  int64_t max_new_tokens = 256;
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
};

// Sampling with the settings, n sequences per prompt, ending at the tokenizer's EOS or one of the
// template's stop strings.
infer::GenerationOptions rollout_sampling_options(const SamplingSettings& settings, const tokenizer::Tokenizer& tok,
                                                  const chat::ChatTemplate& tmpl, int64_t n);

// Each prompt rendered through the template with the generation prompt and tokenised. A prompt
// that renders to nothing, or leaves no room for max_new_tokens in the model's context
// (max_positions), is an Error naming `who` and the record.
std::vector<std::vector<int32_t>> encode_rollout_prompts(const std::vector<data::PreferencePair>& prompts,
                                                         const chat::ChatTemplate& tmpl,
                                                         const tokenizer::Tokenizer& tok, int64_t max_new_tokens,
                                                         int64_t max_positions, const char* who);

// When `val` is empty and fraction > 0: moves floor(fraction * n) prompts, drawn from seed, from
// `prompts` to `val`.
void split_validation(std::vector<data::PreferencePair>& prompts, std::vector<data::PreferencePair>& val,
                      double fraction, int64_t seed);

// The reply's text as a reward sees it: without the EOS that ended it, cut after a stop string
// and without the stop string itself.
std::string completion_text(const infer::GeneratedSequence& s, const tokenizer::Tokenizer& tok,
                            const std::vector<std::string>& stops);

}  // namespace kotoba::train
