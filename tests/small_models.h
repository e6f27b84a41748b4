// The small random decoders the generation tests share: a GPT-2 and a LLaMA with grouped-query
// attention, vocabulary 89, context 48, weights spread wide (initializer_range 0.2) so that
// greedy choices are rarely near-ties. The same seed gives the same weights.
#pragma once
#include <cstdint>
#include <memory>

#include "nn/gpt2.h"
#include "nn/llama.h"

namespace kotoba::testing {

inline std::unique_ptr<nn::GPT2> small_gpt2(uint64_t seed, float dropout = 0.0f) {
  return std::make_unique<nn::GPT2>(nn::GPT2Config{.vocab_size = 89,
                                                   .n_positions = 48,
                                                   .n_embd = 32,
                                                   .n_layer = 2,
                                                   .n_head = 4,
                                                   .dropout = dropout,
                                                   .initializer_range = 0.2f,
                                                   .seed = seed});
}

inline std::unique_ptr<nn::Llama> small_llama(uint64_t seed) {
  nn::LlamaConfig c;
  c.vocab_size = 89;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // GQA: two query heads per key/value head
  c.max_position_embeddings = 48;
  c.initializer_range = 0.2f;
  c.seed = seed;
  return std::make_unique<nn::Llama>(c);
}

}  // namespace kotoba::testing
