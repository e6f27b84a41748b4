// GPT-2 forward; the backward is the tape's.
#include "nn/gpt2.h"

#include <cmath>
#include <cstring>

namespace kotoba::nn {


GPT2Attention::GPT2Attention(const GPT2Config& c, Generator& gen)
    : c_attn(c.n_embd, 3 * c.n_embd, true, c.initializer_range, gen),
      c_proj(c.n_embd, c.n_embd, true, c.initializer_range / std::sqrt(2.0f * float(c.n_layer)), gen),
      n_head(c.n_head),
      dropout(c.dropout) {
  register_module("c_attn", c_attn);
  register_module("c_proj", c_proj);
}

Tensor GPT2Attention::forward(const Tensor& x, Generator& dropout_gen, const Tensor& segments) const {
  Tensor qkv = c_attn.forward(x);                                                      // (B, T, 3C)
  Tensor y = attention_packed_qkv(qkv, n_head, /*causal=*/true, Tensor(), segments);  // (B, T, C)
  return kotoba::dropout(c_proj.forward(y), dropout, dropout_gen, training());
}

Tensor GPT2Attention::forward_cached(const Tensor& x, const Tensor& k_cache, const Tensor& v_cache, int64_t start,
                                     const Tensor& key_mask) const {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = n_head, D = C / H;
  // qkv (B, T, 3C) seen as (B, T, 3H, D): q, k and v are (B, H, T, D) strided views of it.
  Tensor heads = c_attn.forward(x).contiguous().view_as_shape({B, T, 3 * H, D});
  auto part = [&](int64_t i) { return heads.slice_view(2, i * H, (i + 1) * H).transpose_view(1, 2); };
  write_kv_rows(k_cache, part(1), start);
  write_kv_rows(v_cache, part(2), start);
  // Keys [0, start + T); the kernel aligns the T queries with the last T keys (causal offset).
  Tensor k = k_cache.slice_view(2, 0, start + T), v = v_cache.slice_view(2, 0, start + T);
  Tensor y = scaled_dot_product_attention(part(0), k, v, /*causal=*/true, key_mask);  // (B, H, T, D)
  return c_proj.forward(y.transpose_view(1, 2).contiguous().view_as_shape({B, T, C}));
}

GPT2MLP::GPT2MLP(const GPT2Config& c, Generator& gen)
    : c_fc(c.n_embd, 4 * c.n_embd, true, c.initializer_range, gen),
      c_proj(4 * c.n_embd, c.n_embd, true, c.initializer_range / std::sqrt(2.0f * float(c.n_layer)), gen),
      dropout(c.dropout) {
  register_module("c_fc", c_fc);
  register_module("c_proj", c_proj);
}

Tensor GPT2MLP::forward(const Tensor& x, Generator& dropout_gen) const {
  return kotoba::dropout(c_proj.forward(gelu(c_fc.forward(x))), dropout, dropout_gen, training());
}

GPT2Block::GPT2Block(const GPT2Config& c, Generator& gen)
    : ln_1(c.n_embd, c.layer_norm_epsilon), attn(c, gen), ln_2(c.n_embd, c.layer_norm_epsilon), mlp(c, gen) {
  register_module("ln_1", ln_1);
  register_module("attn", attn);
  register_module("ln_2", ln_2);
  register_module("mlp", mlp);
}

Tensor GPT2Block::forward(const Tensor& x, Generator& dropout_gen, const Tensor& segments) const {
  Tensor r = add(x, attn.forward(ln_1.forward(x), dropout_gen, segments));
  return add(r, mlp.forward(ln_2.forward(r), dropout_gen));
}

Tensor GPT2Block::forward_cached(const Tensor& x, const Tensor& k_cache, const Tensor& v_cache, int64_t start,
                                 const Tensor& key_mask) const {
  Tensor r = add(x, attn.forward_cached(ln_1.forward(x), k_cache, v_cache, start, key_mask));
  return add(r, mlp.c_proj.forward(gelu(mlp.c_fc.forward(ln_2.forward(r)))));  // the MLP without dropout
}

namespace {
GPT2Config checked(const GPT2Config& c) {
  KOTOBA_CHECK(c.vocab_size > 0 && c.n_positions > 0 && c.n_embd > 0 && c.n_layer > 0 && c.n_head > 0,
               "GPT2Config: vocab_size, n_positions, n_embd, n_layer and n_head must be positive");
  KOTOBA_CHECK(c.n_embd % c.n_head == 0, "GPT2Config: n_embd (", c.n_embd, ") must be divisible by n_head (",
               c.n_head, ")");
  KOTOBA_CHECK(c.dropout >= 0.0f && c.dropout < 1.0f, "GPT2Config: dropout must be in [0, 1), got ", c.dropout);
  return c;
}
}  // namespace

GPT2::GPT2(const GPT2Config& config)
    : CausalLM(config.seed ^ 0x5eedd20b0a7ull),
      config_(checked(config)),
      init_gen_(config.seed),
      wte(config.vocab_size, config.n_embd, config.initializer_range, init_gen_),
      wpe(config.n_positions, config.n_embd, config.initializer_range, init_gen_),
      ln_f(config.n_embd, config.layer_norm_epsilon) {
  for (int64_t i = 0; i < config.n_layer; ++i) h.push_back(std::make_unique<GPT2Block>(config_, init_gen_));
  transformer_.register_module("wte", wte);
  transformer_.register_module("wpe", wpe);
  for (int64_t i = 0; i < config.n_layer; ++i) transformer_.register_module("h." + std::to_string(i), *h[size_t(i)]);
  transformer_.register_module("ln_f", ln_f);
  register_module("transformer", transformer_);
}

Tensor GPT2::hidden(const Tensor& ids, const Tensor& positions, const Tensor& segments) {
  KOTOBA_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "GPT2: ids must be (B, T) i32, got ",
               dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  int64_t T = ids.size(1);
  KOTOBA_CHECK(T >= 1 && T <= config_.n_positions, "GPT2: sequence length ", T, " is outside [1, n_positions = ",
               config_.n_positions, "]");
  Tensor x;
  if (positions.defined()) {
    x = add(wte.forward(ids), wpe.forward(positions));  // (B, T, C) + (B, T, C)
  } else {
    if (!positions_.defined() || positions_.numel() != T || positions_.device() != wpe.weight.device())
      positions_ = position_ids(0, T, wpe.weight.device());
    x = add(wte.forward(ids), wpe.forward(positions_));  // (B, T, C) + (T, C)
  }
  x = dropout(x, config_.dropout, dropout_gen_, training());
  for (auto& block : h) x = block->forward(x, dropout_gen_, segments);
  return ln_f.forward(x);
}

Tensor GPT2::logits(const Tensor& ids) { return linear(hidden(ids), wte.weight); }

Tensor GPT2::head_logits(const Tensor& hidden) { return linear(hidden, wte.weight); }

Tensor GPT2::packed_logits(const Tensor& ids, const Tensor& positions, const Tensor& segments) {
  check_packed_call(ids, positions, segments);
  return linear(hidden(ids, positions, segments), wte.weight);
}

KVCache GPT2::make_kv_cache(int64_t batch, int64_t max_len) const {
  if (max_len == 0) max_len = config_.n_positions;
  KOTOBA_CHECK(batch > 0 && max_len > 0 && max_len <= config_.n_positions, "GPT2: a KV cache needs batch > 0 and ",
               "max_len in [1, n_positions = ", config_.n_positions, "], got batch ", batch, ", max_len ", max_len);
  return allocate_kv_cache(config_.n_layer, batch, config_.n_head, max_len, config_.n_embd / config_.n_head,
                           wte.weight);
}

Tensor GPT2::logits_cached(const Tensor& ids, KVCache& cache, bool last_only) {
  NoGradGuard no_grad;
  check_cached_call(ids, cache, config_.n_layer, "GPT2");
  const int64_t T = ids.size(1), start = cache.length;
  const Device device = wpe.weight.device();
  const bool padded = !cache.pad.empty();
  // Padded rows: per-row positions (B, T) and a key mask; otherwise one shared (T) range.
  Tensor positions = padded ? padded_position_ids(cache, T, device) : position_ids(start, T, device);
  Tensor key_mask = padded ? padded_key_mask(cache, T, device) : Tensor();
  Tensor x = add(wte.forward(ids), wpe.forward(positions));  // (B, T, C) + (T, C) or (B, T, C)
  for (size_t i = 0; i < h.size(); ++i) x = h[i]->forward_cached(x, cache.k[i], cache.v[i], start, key_mask);
  if (last_only) x = x.slice_view(1, T - 1, T).contiguous();
  Tensor out = linear(ln_f.forward(x), wte.weight);
  cache.length = start + T;
  return out;
}

}  // namespace kotoba::nn
