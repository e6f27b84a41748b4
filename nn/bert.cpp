// BERT forward; the backward is the tape's, except for the exact GELU, whose derivative is
// written here (ops has only the tanh form, and BERT checkpoints were trained with erf).
#include "nn/bert.h"

#include <cmath>

#include "core/parallel.h"

namespace kotoba::nn {

void validate_bert_config(const BertConfig& c) {
  for (auto [name, value] :
       {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
        {"num_hidden_layers", c.num_hidden_layers}, {"num_attention_heads", c.num_attention_heads},
        {"intermediate_size", c.intermediate_size}, {"max_position_embeddings", c.max_position_embeddings},
        {"type_vocab_size", c.type_vocab_size}})
    KOTOBA_CHECK(value > 0, "BertConfig: '", name, "' must be positive, got ", value);
  KOTOBA_CHECK(c.hidden_size % c.num_attention_heads == 0, "BertConfig: hidden_size (", c.hidden_size,
               ") must be divisible by num_attention_heads (", c.num_attention_heads, ")");
  KOTOBA_CHECK(c.hidden_act == "gelu", "BertConfig: hidden_act \"", c.hidden_act,
               "\" is not supported (kotoba's BERT uses the exact erf GELU, \"gelu\")");
  KOTOBA_CHECK(c.layer_norm_eps > 0, "BertConfig: 'layer_norm_eps' must be positive, got ", c.layer_norm_eps);
  KOTOBA_CHECK(c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size, "BertConfig: 'pad_token_id' (", c.pad_token_id,
               ") must be in [0, vocab_size = ", c.vocab_size, ")");
  KOTOBA_CHECK(c.hidden_dropout_prob >= 0 && c.hidden_dropout_prob < 1,
               "BertConfig: 'hidden_dropout_prob' must be in [0, 1), got ", c.hidden_dropout_prob);
  KOTOBA_CHECK(c.attention_probs_dropout_prob >= 0 && c.attention_probs_dropout_prob < 1,
               "BertConfig: 'attention_probs_dropout_prob' must be in [0, 1), got ", c.attention_probs_dropout_prob);
}

BertLayer::BertLayer(const BertConfig& c, Generator& gen)
    : query(c.hidden_size, c.hidden_size, true, c.initializer_range, gen),
      key(c.hidden_size, c.hidden_size, true, c.initializer_range, gen),
      value(c.hidden_size, c.hidden_size, true, c.initializer_range, gen),
      attention_output_dense(c.hidden_size, c.hidden_size, true, c.initializer_range, gen),
      attention_output_norm(c.hidden_size, c.layer_norm_eps),
      intermediate_dense(c.hidden_size, c.intermediate_size, true, c.initializer_range, gen),
      output_dense(c.intermediate_size, c.hidden_size, true, c.initializer_range, gen),
      output_norm(c.hidden_size, c.layer_norm_eps),
      num_heads(c.num_attention_heads),
      dropout(c.hidden_dropout_prob) {
  self_.register_module("query", query);
  self_.register_module("key", key);
  self_.register_module("value", value);
  attention_output_.register_module("dense", attention_output_dense);
  attention_output_.register_module("LayerNorm", attention_output_norm);
  attention_.register_module("self", self_);
  attention_.register_module("output", attention_output_);
  intermediate_.register_module("dense", intermediate_dense);
  output_.register_module("dense", output_dense);
  output_.register_module("LayerNorm", output_norm);
  register_module("attention", attention_);
  register_module("intermediate", intermediate_);
  register_module("output", output_);
}

Tensor BertLayer::forward(const Tensor& x, const Tensor& key_mask, Generator& dropout_gen) const {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = num_heads, D = C / H;
  auto heads = [&](const Linear& proj) { return transpose(reshape(proj.forward(x), {B, T, H, D}), 1, 2); };
  // Bidirectional: every token sees every non-padding key. Padding queries still get outputs
  // (HF computes them too); the loss ignores them.
  Tensor y = scaled_dot_product_attention(heads(query), heads(key), heads(value), /*causal=*/false, key_mask);
  y = attention_output_dense.forward(reshape(transpose(y, 1, 2), {B, T, C}));
  // Post-LayerNorm: the residual is added before the norm, as in the original BERT.
  Tensor a = attention_output_norm.forward(add(kotoba::dropout(y, dropout, dropout_gen, training()), x));
  Tensor m = output_dense.forward(gelu_erf(intermediate_dense.forward(a)));
  return output_norm.forward(add(kotoba::dropout(m, dropout, dropout_gen, training()), a));
}

BertForMaskedLM::BertForMaskedLM(const BertConfig& config)
    : config_((validate_bert_config(config), config)),
      init_gen_(config.seed),
      word_embeddings(config.vocab_size, config.hidden_size, config.initializer_range, init_gen_),
      position_embeddings(config.max_position_embeddings, config.hidden_size, config.initializer_range, init_gen_),
      token_type_embeddings(config.type_vocab_size, config.hidden_size, config.initializer_range, init_gen_),
      embeddings_norm(config.hidden_size, config.layer_norm_eps),
      transform_dense(config.hidden_size, config.hidden_size, true, config.initializer_range, init_gen_),
      transform_norm(config.hidden_size, config.layer_norm_eps),
      dropout_gen_(config.seed ^ 0xbe27d20b0a7ull) {
  // HF zeroes the padding row of the word embeddings at initialisation.
  float* pad_row = word_embeddings.weight.data<float>() + config.pad_token_id * config.hidden_size;
  std::fill(pad_row, pad_row + config.hidden_size, 0.0f);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers.push_back(std::make_unique<BertLayer>(config_, init_gen_));
  embeddings_.register_module("word_embeddings", word_embeddings);
  embeddings_.register_module("position_embeddings", position_embeddings);
  embeddings_.register_module("token_type_embeddings", token_type_embeddings);
  embeddings_.register_module("LayerNorm", embeddings_norm);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    encoder_.register_module("layer." + std::to_string(i), *layers[size_t(i)]);
  bert_.register_module("embeddings", embeddings_);
  bert_.register_module("encoder", encoder_);
  register_module("bert", bert_);
  transform_.register_module("dense", transform_dense);
  transform_.register_module("LayerNorm", transform_norm);
  predictions_.register_module("transform", transform_);
  prediction_bias = predictions_.register_parameter("bias", Tensor::zeros({config.vocab_size}));
  cls_.register_module("predictions", predictions_);
  register_module("cls", cls_);
}

Tensor BertForMaskedLM::hidden(const Tensor& ids, const Tensor& attention_mask, const Tensor& token_type_ids) {
  KOTOBA_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "BERT: ids must be (B, T) i32, got ",
               dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  const int64_t B = ids.size(0), T = ids.size(1);
  KOTOBA_CHECK(T >= 1 && T <= config_.max_position_embeddings, "BERT: sequence length ", T,
               " is outside [1, max_position_embeddings = ", config_.max_position_embeddings, "]");
  for (auto [t, name] : {std::pair{&attention_mask, "attention_mask"}, std::pair{&token_type_ids, "token_type_ids"}})
    KOTOBA_CHECK(!t->defined() || (t->dtype() == DType::i32 && t->shape() == ids.shape()), "BERT: ", name,
                 " must be i32 of the ids' shape ", shape_str(ids.shape()), ", got ", dtype_name(t->dtype()), " ",
                 shape_str(t->shape()));
  const Device device = word_embeddings.weight.device();
  if (!positions_.defined() || positions_.numel() != T || positions_.device() != device) {
    Tensor p = Tensor::empty({T}, DType::i32);
    for (int64_t t = 0; t < T; ++t) p.data<int32_t>()[t] = int32_t(t);
    positions_ = device == Device::cpu ? p : to_device(p, device);
  }
  Tensor types = token_type_ids.defined() ? token_type_ids : Tensor::zeros({B, T}, DType::i32, device);
  // (B, T, C) + (T, C) + (B, T, C)
  Tensor x = add(add(word_embeddings.forward(ids), position_embeddings.forward(positions_)),
                 token_type_embeddings.forward(types));
  x = dropout(embeddings_norm.forward(x), config_.hidden_dropout_prob, dropout_gen_, training());
  for (auto& layer : layers) x = layer->forward(x, attention_mask, dropout_gen_);
  return x;
}

Tensor BertForMaskedLM::logits(const Tensor& ids, const Tensor& attention_mask, const Tensor& token_type_ids) {
  Tensor h = transform_norm.forward(gelu_erf(transform_dense.forward(hidden(ids, attention_mask, token_type_ids))));
  return linear(h, word_embeddings.weight, prediction_bias);  // the decoder shares the embedding matrix
}

Tensor BertForMaskedLM::loss(const Tensor& ids, const Tensor& attention_mask, const Tensor& token_type_ids,
                             const Tensor& labels) {
  KOTOBA_CHECK(labels.dtype() == DType::i32 && labels.shape() == ids.shape(), "BERT: labels must be i32 of the ids' ",
               "shape ", shape_str(ids.shape()), ", got ", dtype_name(labels.dtype()), " ", shape_str(labels.shape()));
  return cross_entropy(logits(ids, attention_mask, token_type_ids), labels, -100, /*overwrite_logits=*/true);
}

}  // namespace kotoba::nn
