// GPT-2 forward; the backward is the tape's.
#include "nn/gpt2.h"

#include <cmath>

namespace kotoba::nn {

GPT2Attention::GPT2Attention(const GPT2Config& c, Generator& gen)
    : c_attn(c.n_embd, 3 * c.n_embd, true, c.initializer_range, gen),
      c_proj(c.n_embd, c.n_embd, true, c.initializer_range / std::sqrt(2.0f * float(c.n_layer)), gen),
      n_head(c.n_head),
      dropout(c.dropout) {
  register_module("c_attn", c_attn);
  register_module("c_proj", c_proj);
}

Tensor GPT2Attention::forward(const Tensor& x, Generator& dropout_gen) const {
  Tensor qkv = c_attn.forward(x);                                  // (B, T, 3C)
  Tensor y = attention_packed_qkv(qkv, n_head, /*causal=*/true);   // (B, T, C)
  return kotoba::dropout(c_proj.forward(y), dropout, dropout_gen, training());
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

Tensor GPT2Block::forward(const Tensor& x, Generator& dropout_gen) const {
  Tensor r = add(x, attn.forward(ln_1.forward(x), dropout_gen));
  return add(r, mlp.forward(ln_2.forward(r), dropout_gen));
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
    : config_(checked(config)),
      init_gen_(config.seed),
      wte(config.vocab_size, config.n_embd, config.initializer_range, init_gen_),
      wpe(config.n_positions, config.n_embd, config.initializer_range, init_gen_),
      ln_f(config.n_embd, config.layer_norm_epsilon),
      dropout_gen_(config.seed ^ 0x5eedd20b0a7ull) {
  for (int64_t i = 0; i < config.n_layer; ++i) h.push_back(std::make_unique<GPT2Block>(config_, init_gen_));
  transformer_.register_module("wte", wte);
  transformer_.register_module("wpe", wpe);
  for (int64_t i = 0; i < config.n_layer; ++i) transformer_.register_module("h." + std::to_string(i), *h[size_t(i)]);
  transformer_.register_module("ln_f", ln_f);
  register_module("transformer", transformer_);
}

Tensor GPT2::hidden(const Tensor& ids) {
  KOTOBA_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "GPT2: ids must be (B, T) i32, got ",
               dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  int64_t T = ids.size(1);
  KOTOBA_CHECK(T >= 1 && T <= config_.n_positions, "GPT2: sequence length ", T, " is outside [1, n_positions = ",
               config_.n_positions, "]");
  if (!positions_.defined() || positions_.numel() != T) {
    positions_ = Tensor::empty({T}, DType::i32);
    for (int64_t t = 0; t < T; ++t) positions_.data<int32_t>()[t] = int32_t(t);
  }
  Tensor x = add(wte.forward(ids), wpe.forward(positions_));  // (B, T, C) + (T, C)
  x = dropout(x, config_.dropout, dropout_gen_, training());
  for (auto& block : h) x = block->forward(x, dropout_gen_);
  return ln_f.forward(x);
}

Tensor GPT2::logits(const Tensor& ids) { return linear(hidden(ids), wte.weight); }

Tensor GPT2::loss(const Tensor& ids, const Tensor& targets) {
  KOTOBA_CHECK(targets.shape() == ids.shape(), "GPT2: targets shape ", shape_str(targets.shape()),
               " does not match ids shape ", shape_str(ids.shape()));
  return cross_entropy(logits(ids), targets, -100, /*overwrite_logits=*/true);
}

}  // namespace kotoba::nn
