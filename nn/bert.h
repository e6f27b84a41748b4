// BERT encoder with its masked-LM head (HF BertForMaskedLM): learned word, position and
// token-type embeddings, post-LayerNorm blocks of bidirectional attention and an exact-erf GELU
// MLP, and the prediction head whose decoder is tied to the word embeddings. Parameter names are
// transformers' (bert.encoder.layer.0.attention.self.query.weight, cls.predictions.bias, ...),
// so import/export (io/bert_config.h) is a mechanical map.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "nn/layers.h"

namespace kotoba::nn {

struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";     // the exact (erf) GELU; the only one kotoba builds
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;         // segment ids (sentence A / B)
  float layer_norm_eps = 1e-12f;
  int64_t pad_token_id = 0;
  float hidden_dropout_prob = 0.1f;    // on embeddings and each sub-layer's output
  // Kept for config.json; kotoba's attention has no dropout on its probabilities, so this only
  // differs from HF in training (kotoba pretrain writes 0).
  float attention_probs_dropout_prob = 0.1f;
  float initializer_range = 0.02f;
  uint64_t seed = 1337;  // initialisation and dropout
};

// Range checks; errors name the field.
void validate_bert_config(const BertConfig& config);

class BertLayer : public Module {
 public:
  BertLayer(const BertConfig& config, Generator& gen);
  // x (B, T, C), key_mask (B, T) i32 (1 = attend; may be undefined) -> (B, T, C)
  Tensor forward(const Tensor& x, const Tensor& key_mask, Generator& dropout_gen) const;
  Linear query, key, value, attention_output_dense;
  LayerNorm attention_output_norm;
  Linear intermediate_dense, output_dense;
  LayerNorm output_norm;
  int64_t num_heads;
  float dropout;

 private:
  // HF's nesting: attention.self.*, attention.output.*, intermediate.*, output.*
  Module attention_, self_, attention_output_, intermediate_, output_;
};

class BertForMaskedLM : public Module {
  BertConfig config_;
  Generator init_gen_;

 public:
  explicit BertForMaskedLM(const BertConfig& config);

  // ids (B, T) i32; attention_mask (B, T) i32 of 1 (token) / 0 (padding), undefined = all ones;
  // token_type_ids (B, T) i32 in [0, type_vocab_size), undefined = all zeros -> logits (B, T, V).
  Tensor logits(const Tensor& ids, const Tensor& attention_mask = Tensor(), const Tensor& token_type_ids = Tensor());
  // Mean cross-entropy of the logits over labels != -100 (labels (B, T) i32), as HF's loss.
  Tensor loss(const Tensor& ids, const Tensor& attention_mask, const Tensor& token_type_ids, const Tensor& labels);
  // The encoder's last hidden states (B, T, C), before the prediction head.
  Tensor hidden(const Tensor& ids, const Tensor& attention_mask = Tensor(), const Tensor& token_type_ids = Tensor());

  const BertConfig& config() const { return config_; }
  int64_t vocab_size() const { return config_.vocab_size; }
  int64_t max_positions() const { return config_.max_position_embeddings; }
  Generator& dropout_generator() { return dropout_gen_; }

  Embedding word_embeddings, position_embeddings, token_type_embeddings;
  LayerNorm embeddings_norm;
  std::vector<std::unique_ptr<BertLayer>> layers;
  Linear transform_dense;  // cls.predictions.transform.dense
  LayerNorm transform_norm;
  Tensor prediction_bias;  // cls.predictions.bias (V); the decoder weight is word_embeddings.weight

 private:
  Module bert_, embeddings_, encoder_, cls_, predictions_, transform_;
  Generator dropout_gen_;
  Tensor positions_;  // (T) i32 0..T-1, cached for the last T
};

}  // namespace kotoba::nn
