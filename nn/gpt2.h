// GPT-2: learned positions, pre-LayerNorm blocks, fused-QKV causal attention, GELU MLP, tied
// LM head, and GPT-2's initialisation (residual projections scaled by 1/sqrt(2 n_layer)).
// Parameter names are HF transformers' (transformer.h.0.attn.c_attn.weight, ...); HF stores
// these Conv1D weights as (in, out), kotoba as (out, in): io/ transposes on the way.
#pragma once
#include <memory>
#include <vector>

#include "nn/causal_lm.h"
#include "nn/layers.h"

namespace kotoba::nn {

struct GPT2Config {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;  // longest sequence (learned position table)
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  float layer_norm_epsilon = 1e-5f;
  float dropout = 0.0f;  // on embeddings and residual branches (HF embd_pdrop, resid_pdrop)
  float initializer_range = 0.02f;
  uint64_t seed = 1337;  // initialisation and dropout
};

using GPT2KVCache = KVCache;

class GPT2Attention : public Module {
 public:
  GPT2Attention(const GPT2Config& config, Generator& gen);
  // x (B, T, C) -> (B, T, C); segments (B, T) i32 (packed rows: attention stays within a
  // segment) may be undefined.
  Tensor forward(const Tensor& x, Generator& dropout_gen, const Tensor& segments = Tensor()) const;
  // Inference: x (B, T, C) holds positions [start, start + T); their keys and values are
  // written into k_cache/v_cache (B, H, max_len, D) at those positions, and the queries attend
  // causally over [0, start + T), minus the slots key_mask (B, start + T) i32 zeroes (may be
  // undefined). No dropout; records nothing.
  Tensor forward_cached(const Tensor& x, const Tensor& k_cache, const Tensor& v_cache, int64_t start,
                        const Tensor& key_mask = Tensor()) const;
  Linear c_attn;  // (3C, C): [q | k | v]
  Linear c_proj;  // (C, C), init scaled for the residual stream
  int64_t n_head;
  float dropout;
};

class GPT2MLP : public Module {
 public:
  GPT2MLP(const GPT2Config& config, Generator& gen);
  Tensor forward(const Tensor& x, Generator& dropout_gen) const;
  Linear c_fc;    // (4C, C)
  Linear c_proj;  // (C, 4C), init scaled for the residual stream
  float dropout;
};

class GPT2Block : public Module {
 public:
  GPT2Block(const GPT2Config& config, Generator& gen);
  Tensor forward(const Tensor& x, Generator& dropout_gen, const Tensor& segments = Tensor()) const;
  Tensor forward_cached(const Tensor& x, const Tensor& k_cache, const Tensor& v_cache, int64_t start,
                        const Tensor& key_mask = Tensor()) const;
  LayerNorm ln_1;
  GPT2Attention attn;
  LayerNorm ln_2;
  GPT2MLP mlp;
};

class GPT2 : public CausalLM {
  // Declared first: the members below are initialised from them.
  GPT2Config config_;
  Generator init_gen_;

 public:
  explicit GPT2(const GPT2Config& config);

  std::string model_type() const override { return "gpt2"; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t max_positions() const override { return config_.n_positions; }
  Tensor logits(const Tensor& ids) override;
  // Learned position embeddings are looked up at the given (restarting) positions.
  Tensor packed_logits(const Tensor& ids, const Tensor& positions, const Tensor& segments) override;
  Tensor hidden_states(const Tensor& ids) override { return hidden(ids); }
  Tensor head_logits(const Tensor& hidden) override;
  KVCache make_kv_cache(int64_t batch, int64_t max_len = 0) const override;
  Tensor logits_cached(const Tensor& ids, KVCache& cache, bool last_only = false) override;

  const GPT2Config& config() const { return config_; }

  Embedding wte;  // (V, C), also the LM head
  Embedding wpe;  // (n_positions, C)
  std::vector<std::unique_ptr<GPT2Block>> h;
  LayerNorm ln_f;

 private:
  // Final-LayerNorm output (B, T, C); positions (B, T) and segments for packed rows, or undefined.
  Tensor hidden(const Tensor& ids, const Tensor& positions = Tensor(), const Tensor& segments = Tensor());
  Module transformer_;               // the "transformer." prefix of HF names
  Tensor positions_;  // (T) i32, 0..T-1, cached for the last T
};

}  // namespace kotoba::nn
