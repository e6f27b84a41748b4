// LLaMA-family forward; the backward is the tape's. Activations flow as (B, T, C); q, k and v
// are rotated as (B, T, H, D) and read by the attention kernel as strided (B, H, T, D) views.
#include "nn/llama.h"

#include <algorithm>
#include <cmath>

namespace kotoba::nn {

void LlamaConfig::check(const std::string& where) const {
  for (auto [key, value] : {std::pair<const char*, int64_t>{"vocab_size", vocab_size}, {"hidden_size", hidden_size},
                            {"intermediate_size", intermediate_size}, {"num_hidden_layers", num_hidden_layers},
                            {"num_attention_heads", num_attention_heads}, {"num_key_value_heads", num_key_value_heads},
                            {"max_position_embeddings", max_position_embeddings}})
    KOTOBA_CHECK(value > 0, where, ": ", key, " must be positive, got ", value);
  KOTOBA_CHECK(num_attention_heads % num_key_value_heads == 0, where, ": num_attention_heads (", num_attention_heads,
               ") must be a multiple of num_key_value_heads (", num_key_value_heads, ")");
  KOTOBA_CHECK(head_dim > 0 || hidden_size % num_attention_heads == 0, where, ": hidden_size (", hidden_size,
               ") must be divisible by num_attention_heads (", num_attention_heads, ") when head_dim is not given");
  KOTOBA_CHECK(resolved_head_dim() % 2 == 0, where, ": the head dimension must be even for rotary embeddings, got ",
               resolved_head_dim());
  KOTOBA_CHECK(rope_theta > 0, where, ": rope_theta must be positive, got ", rope_theta);
  KOTOBA_CHECK(rms_norm_eps > 0, where, ": rms_norm_eps must be positive, got ", rms_norm_eps);
  KOTOBA_CHECK(sliding_window >= 0, where, ": sliding_window must be >= 0, got ", sliding_window);
  if (rope_scaling.type != RopeScaling::Type::none)
    KOTOBA_CHECK(rope_scaling.factor >= 1.0, where, ": rope_scaling.factor must be >= 1, got ", rope_scaling.factor);
  if (rope_scaling.type == RopeScaling::Type::llama3)
    KOTOBA_CHECK(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor &&
                     rope_scaling.original_max_position_embeddings > 0,
                 where, ": llama3 rope_scaling needs high_freq_factor > low_freq_factor and a positive "
                 "original_max_position_embeddings");
}

std::vector<float> rope_inverse_frequencies(const LlamaConfig& c) {
  const int64_t D = c.resolved_head_dim(), half = D / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const float base = float(c.rope_theta);
  for (int64_t i = 0; i < half; ++i) inv[size_t(i)] = 1.0f / std::pow(base, float(2 * i) / float(D));
  const RopeScaling& s = c.rope_scaling;
  const float factor = float(s.factor);
  if (s.type == RopeScaling::Type::linear) {
    for (float& f : inv) f /= factor;
  } else if (s.type == RopeScaling::Type::llama3) {
    // Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, and the band
    // between blends the two linearly in old_context / wavelength.
    const float old_context = float(s.original_max_position_embeddings);
    const float low = float(s.low_freq_factor), high = float(s.high_freq_factor);
    const float low_freq_wavelen = old_context / low, high_freq_wavelen = old_context / high;
    for (float& f : inv) {
      const float wavelen = 2.0f * float(M_PI) / f;
      float scaled = wavelen > low_freq_wavelen ? f / factor : f;
      if (!(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen)) {
        const float smooth = (old_context / wavelen - low) / (high - low);
        scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
      }
      f = scaled;
    }
  }
  return inv;
}

// ---- attention ----

LlamaAttention::LlamaAttention(const LlamaConfig& c, int64_t window_, Generator& gen)
    : q_proj(c.hidden_size, c.num_attention_heads * c.resolved_head_dim(), c.attention_bias || c.qkv_bias,
             c.initializer_range, gen),
      k_proj(c.hidden_size, c.num_key_value_heads * c.resolved_head_dim(), c.attention_bias || c.qkv_bias,
             c.initializer_range, gen),
      v_proj(c.hidden_size, c.num_key_value_heads * c.resolved_head_dim(), c.attention_bias || c.qkv_bias,
             c.initializer_range, gen),
      o_proj(c.num_attention_heads * c.resolved_head_dim(), c.hidden_size, c.attention_bias, c.initializer_range, gen),
      n_head(c.num_attention_heads),
      n_kv_head(c.num_key_value_heads),
      head_dim(c.resolved_head_dim()),
      window(window_) {
  register_module("q_proj", q_proj);
  register_module("k_proj", k_proj);
  register_module("v_proj", v_proj);
  register_module("o_proj", o_proj);
}

void LlamaAttention::project(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin,
                             Tensor& q, Tensor& k, Tensor& v) const {
  const int64_t B = x.size(0), T = x.size(1);
  q = rope(reshape(q_proj.forward(x), {B, T, n_head, head_dim}), positions, cos, sin);
  k = rope(reshape(k_proj.forward(x), {B, T, n_kv_head, head_dim}), positions, cos, sin);
  v = reshape(v_proj.forward(x), {B, T, n_kv_head, head_dim});
}

Tensor LlamaAttention::forward(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin,
                               const Tensor& segments) const {
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q, k, v;
  project(x, positions, cos, sin, q, k, v);
  Tensor y = scaled_dot_product_attention(transpose(q, 1, 2), transpose(k, 1, 2), transpose(v, 1, 2),
                                          /*causal=*/true, Tensor(), std::numeric_limits<float>::quiet_NaN(), window,
                                          segments);
  return o_proj.forward(reshape(transpose(y, 1, 2), {B, T, n_head * head_dim}));  // (B, H, T, D) -> (B, T, C)
}

Tensor LlamaAttention::forward_cached(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin,
                                      const Tensor& k_cache, const Tensor& v_cache, int64_t start,
                                      const Tensor& key_mask) const {
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q, k, v;
  project(x, positions, cos, sin, q, k, v);
  write_kv_rows(k_cache, k.transpose_view(1, 2), start);
  write_kv_rows(v_cache, v.transpose_view(1, 2), start);
  Tensor keys = k_cache.slice_view(2, 0, start + T), values = v_cache.slice_view(2, 0, start + T);
  Tensor y = scaled_dot_product_attention(q.transpose_view(1, 2), keys, values, /*causal=*/true, key_mask,
                                          std::numeric_limits<float>::quiet_NaN(), window);
  return o_proj.forward(y.transpose_view(1, 2).contiguous().view_as_shape({B, T, n_head * head_dim}));
}

// ---- MLP and layer ----

LlamaMLP::LlamaMLP(const LlamaConfig& c, Generator& gen)
    : gate_proj(c.hidden_size, c.intermediate_size, c.mlp_bias, c.initializer_range, gen),
      up_proj(c.hidden_size, c.intermediate_size, c.mlp_bias, c.initializer_range, gen),
      down_proj(c.intermediate_size, c.hidden_size, c.mlp_bias, c.initializer_range, gen) {
  register_module("gate_proj", gate_proj);
  register_module("up_proj", up_proj);
  register_module("down_proj", down_proj);
}

namespace {
int64_t layer_window(const LlamaConfig& c, int64_t layer) {
  return c.sliding_window > 0 && layer >= c.sliding_window_from_layer ? c.sliding_window : 0;
}
}  // namespace

LlamaDecoderLayer::LlamaDecoderLayer(const LlamaConfig& c, int64_t layer, Generator& gen)
    : input_layernorm(c.hidden_size, c.rms_norm_eps),
      self_attn(c, layer_window(c, layer), gen),
      post_attention_layernorm(c.hidden_size, c.rms_norm_eps),
      mlp(c, gen) {
  register_module("self_attn", self_attn);
  register_module("mlp", mlp);
  register_module("input_layernorm", input_layernorm);
  register_module("post_attention_layernorm", post_attention_layernorm);
}

// ---- model ----

namespace {
LlamaConfig checked(const LlamaConfig& c) {
  c.check("LlamaConfig");
  return c;
}
}  // namespace

Llama::Llama(const LlamaConfig& config)
    : CausalLM(config.seed ^ 0x11a3a5eedull),
      config_(checked(config)),
      init_gen_(config.seed),
      embed_tokens(config.vocab_size, config.hidden_size, config.initializer_range, init_gen_),
      norm(config.hidden_size, config.rms_norm_eps),
      inv_freq_(rope_inverse_frequencies(config)) {
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers.push_back(std::make_unique<LlamaDecoderLayer>(config_, i, init_gen_));
  model_.register_module("embed_tokens", embed_tokens);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    model_.register_module("layers." + std::to_string(i), *layers[size_t(i)]);
  model_.register_module("norm", norm);
  register_module("model", model_);
  if (!config_.tie_word_embeddings) {
    lm_head_ = std::make_unique<Linear>(config.hidden_size, config.vocab_size, /*bias=*/false,
                                        config.initializer_range, init_gen_);
    register_module("lm_head", *lm_head_);
  }
}

void Llama::ensure_rope_tables(int64_t length) {
  const Device device = embed_tokens.weight.device();
  if (cos_.defined() && cos_.size(0) >= length && cos_.device() == device) return;
  int64_t rows = cos_.defined() ? std::max(length, cos_.size(0)) : length;
  rows = std::min(config_.max_position_embeddings, std::max<int64_t>(rows, std::min<int64_t>(2 * rows, 4096)));
  rope_tables_from_frequencies(rows, inv_freq_, cos_, sin_);
  if (device != Device::cpu) {
    cos_ = to_device(cos_, device);
    sin_ = to_device(sin_, device);
  }
}

Tensor Llama::forward_hidden(const Tensor& ids, int64_t start, KVCache* cache, const Tensor& packed_positions,
                             const Tensor& segments) {
  const int64_t T = ids.size(1);
  ensure_rope_tables(start + T);  // (packed_logits has made the tables cover its positions)
  const Device device = embed_tokens.weight.device();
  const bool padded = cache && !cache->pad.empty();
  // Padded rows (batched prompts of different lengths): per-row positions (B, T) and a key mask.
  Tensor positions = packed_positions.defined() ? packed_positions
                     : padded                   ? padded_position_ids(*cache, T, device)
                                                : position_ids(start, T, device);
  Tensor key_mask = padded ? padded_key_mask(*cache, T, device) : Tensor();
  Tensor x = embed_tokens.forward(ids);
  for (size_t i = 0; i < layers.size(); ++i) {
    const LlamaDecoderLayer& layer = *layers[i];
    Tensor h = layer.input_layernorm.forward(x);
    Tensor a = cache ? layer.self_attn.forward_cached(h, positions, cos_, sin_, cache->k[i], cache->v[i], start, key_mask)
                     : layer.self_attn.forward(h, positions, cos_, sin_, segments);
    x = add(x, a);
    x = add(x, layer.mlp.forward(layer.post_attention_layernorm.forward(x)));
  }
  return x;
}

Tensor Llama::head(const Tensor& hidden) const {
  return lm_head_ ? lm_head_->forward(hidden) : linear(hidden, embed_tokens.weight);
}

Tensor Llama::logits(const Tensor& ids) { return head(hidden_states(ids)); }

Tensor Llama::head_logits(const Tensor& hidden) { return head(hidden); }

Tensor Llama::hidden_states(const Tensor& ids) {
  KOTOBA_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, config_.model_type, ": ids must be (B, T) i32, got ",
               dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  const int64_t T = ids.size(1);
  KOTOBA_CHECK(T >= 1 && T <= config_.max_position_embeddings, config_.model_type, ": sequence length ", T,
               " is outside [1, max_position_embeddings = ", config_.max_position_embeddings, "]");
  return norm.forward(forward_hidden(ids, 0, nullptr));
}

Tensor Llama::packed_logits(const Tensor& ids, const Tensor& positions, const Tensor& segments) {
  const int64_t largest = check_packed_call(ids, positions, segments);
  ensure_rope_tables(largest + 1);  // positions need not restart: a caller may pass any in range
  return head(norm.forward(forward_hidden(ids, 0, nullptr, positions, segments)));
}

KVCache Llama::make_kv_cache(int64_t batch, int64_t max_len) const {
  if (max_len == 0) max_len = config_.max_position_embeddings;
  KOTOBA_CHECK(batch > 0 && max_len > 0 && max_len <= config_.max_position_embeddings, config_.model_type,
               ": a KV cache needs batch > 0 and max_len in [1, max_position_embeddings = ",
               config_.max_position_embeddings, "], got batch ", batch, ", max_len ", max_len);
  return allocate_kv_cache(config_.num_hidden_layers, batch, config_.num_key_value_heads, max_len,
                           config_.resolved_head_dim(), embed_tokens.weight);
}

Tensor Llama::logits_cached(const Tensor& ids, KVCache& cache, bool last_only) {
  NoGradGuard no_grad;
  check_cached_call(ids, cache, config_.num_hidden_layers, config_.model_type.c_str());
  const int64_t T = ids.size(1), start = cache.length;
  Tensor x = forward_hidden(ids, start, &cache);
  if (last_only) x = x.slice_view(1, T - 1, T).contiguous();
  Tensor out = head(norm.forward(x));
  cache.length = start + T;
  return out;
}

}  // namespace kotoba::nn
