// The LLaMA family: pre-RMSNorm blocks, rotary positions, grouped-query attention and a SwiGLU
// MLP, with the variants HF ships as separate model types — Mistral (sliding-window attention)
// and Qwen2 (biases on q/k/v) — as options of one config. Parameter names are HF's
// (model.layers.0.self_attn.q_proj.weight, ...) and Linear weights are (out, in) as in HF, so
// HF checkpoints load without any transposition.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "nn/causal_lm.h"
#include "nn/layers.h"

namespace kotoba::nn {

// HF's rope_scaling: none, "linear" (positions divided by factor) or "llama3" (Llama 3.1's
// wavelength-dependent scaling of the rotary frequencies).
struct RopeScaling {
  enum class Type { none, linear, llama3 };
  Type type = Type::none;
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;       // llama3
  int64_t original_max_position_embeddings = 8192;            // llama3
};

struct LlamaConfig {
  std::string model_type = "llama";  // "llama", "mistral" or "qwen2": the config.json it maps to
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // < num_attention_heads: grouped-query attention
  int64_t head_dim = 0;              // 0: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;  // lm_head shares embed_tokens' weight
  bool attention_bias = false;       // biases on q, k, v and o (LLaMA's attention_bias)
  bool qkv_bias = false;             // biases on q, k, v only (Qwen2)
  bool mlp_bias = false;
  int64_t sliding_window = 0;        // > 0: each query sees its last sliding_window keys
  int64_t sliding_window_from_layer = 0;  // layers below this attend fully (Qwen2's max_window_layers)
  float initializer_range = 0.02f;
  uint64_t seed = 1337;              // initialisation

  int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  // Throws kotoba::Error naming `where` (e.g. the config.json path) for impossible shapes.
  void check(const std::string& where) const;
};

// The rotary inverse frequencies (head_dim / 2) of a config, scaling applied, in f32 as HF
// computes them.
std::vector<float> rope_inverse_frequencies(const LlamaConfig& config);

class LlamaAttention : public Module {
 public:
  LlamaAttention(const LlamaConfig& config, int64_t window, Generator& gen);
  // x (B, T, C); cos/sin rotary tables; positions (T) or (B, T) i32 -> (B, T, C). segments (B, T)
  // i32 (packed rows: attention stays within a segment; the sliding window, j > i - window on
  // the packed index, is then the distance within the example) may be undefined.
  Tensor forward(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin,
                 const Tensor& segments = Tensor()) const;
  // Inference: x holds positions [start, start + T); their rotated keys and values go into the
  // caches (B, Hkv, max_len, D) and the queries attend over [0, start + T), minus the slots
  // key_mask (B, start + T) i32 zeroes (may be undefined). positions (T) or (B, T).
  Tensor forward_cached(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin,
                        const Tensor& k_cache, const Tensor& v_cache, int64_t start,
                        const Tensor& key_mask = Tensor()) const;
  Linear q_proj, k_proj, v_proj, o_proj;
  int64_t n_head, n_kv_head, head_dim, window;

 private:
  // q (B, T, H, D), k and v (B, T, Hkv, D) after the projections (q and k rotated).
  void project(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k,
               Tensor& v) const;
};

class LlamaMLP : public Module {
 public:
  LlamaMLP(const LlamaConfig& config, Generator& gen);
  Tensor forward(const Tensor& x) const { return down_proj.forward(swiglu(gate_proj.forward(x), up_proj.forward(x))); }
  Linear gate_proj, up_proj, down_proj;
};

class LlamaDecoderLayer : public Module {
 public:
  LlamaDecoderLayer(const LlamaConfig& config, int64_t layer, Generator& gen);
  RMSNorm input_layernorm;
  LlamaAttention self_attn;
  RMSNorm post_attention_layernorm;
  LlamaMLP mlp;
};

class Llama : public CausalLM {
  LlamaConfig config_;  // declared first: the members below are built from it
  Generator init_gen_;

 public:
  explicit Llama(const LlamaConfig& config);

  std::string model_type() const override { return config_.model_type; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t max_positions() const override { return config_.max_position_embeddings; }
  Tensor logits(const Tensor& ids) override;
  // Rotary positions are the given (restarting) ones.
  Tensor packed_logits(const Tensor& ids, const Tensor& positions, const Tensor& segments) override;
  Tensor hidden_states(const Tensor& ids) override;
  Tensor head_logits(const Tensor& hidden) override;
  KVCache make_kv_cache(int64_t batch, int64_t max_len = 0) const override;
  Tensor logits_cached(const Tensor& ids, KVCache& cache, bool last_only = false) override;

  const LlamaConfig& config() const { return config_; }
  // The untied LM head, a Linear (C -> V, no bias) named "lm_head" (its weight "lm_head.weight"),
  // so that it is quantised, moved and adapted like the other Linear layers; nullptr when tied
  // (the logits are then the hidden states times embed_tokens' weight).
  Linear* lm_head() { return lm_head_.get(); }
  const Linear* lm_head() const { return lm_head_.get(); }

  Embedding embed_tokens;
  std::vector<std::unique_ptr<LlamaDecoderLayer>> layers;
  RMSNorm norm;

 private:
  // Rotary tables covering positions [0, length), grown on demand, on the weights' device.
  void ensure_rope_tables(int64_t length);
  // packed_positions/segments (B, T): a packed call (no cache), else undefined.
  Tensor forward_hidden(const Tensor& ids, int64_t start, KVCache* cache, const Tensor& packed_positions = Tensor(),
                        const Tensor& segments = Tensor());

  // Final hidden states (..., C) -> logits (..., V) through the LM head (or the tied embeddings).
  Tensor head(const Tensor& hidden) const;

  Module model_;          // the "model." prefix of HF names
  std::unique_ptr<Linear> lm_head_;  // untied only; built after the layers (its initialisation draws come last)
  Tensor cos_, sin_;      // (rope_len, head_dim / 2) f32
  std::vector<float> inv_freq_;
};

}  // namespace kotoba::nn
