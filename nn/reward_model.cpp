// The reward model's forward: the backbone's final hidden states, one row per sequence picked at
// its last real token (an embedding lookup into the flattened states, so the gradient flows back
// to exactly those positions), and the score head.
#include "nn/reward_model.h"

#include "nn/gpt2.h"
#include "nn/llama.h"
#include "ops/ops.h"

namespace kotoba::nn {

int64_t hidden_size_of(const CausalLM& model) {
  if (auto* g = dynamic_cast<const GPT2*>(&model)) return g->config().n_embd;
  if (auto* l = dynamic_cast<const Llama*>(&model)) return l->config().hidden_size;
  throw Error(detail::concat("reward model: no hidden size for model type ", model.model_type()));
}

float initializer_range_of(const CausalLM& model) {
  if (auto* g = dynamic_cast<const GPT2*>(&model)) return g->config().initializer_range;
  if (auto* l = dynamic_cast<const Llama*>(&model)) return l->config().initializer_range;
  return 0.02f;
}

RewardModel::RewardModel(std::unique_ptr<CausalLM> backbone, std::optional<int64_t> pad_token_id, float init_std,
                         uint64_t seed)
    : init_gen_(seed),
      score(backbone ? hidden_size_of(*backbone) : 1, 1, /*bias=*/false, init_std, init_gen_),
      backbone_(std::move(backbone)),
      pad_token_id_(pad_token_id) {
  KOTOBA_CHECK(backbone_, "reward model: no backbone");
  // The backbone's top-level modules ("transformer" or "model") keep their HF names; the LM head
  // of an untied LLaMA is not part of a sequence classifier.
  backbone_->unregister_module("lm_head");
  for (auto& [name, module] : backbone_->named_modules())
    if (name.find('.') == std::string::npos) register_module(name, *module);
  register_module("score", score);
}

void RewardModel::set_training(bool on) {
  backbone_->train(on);
  train(on);
}

std::vector<int64_t> RewardModel::lengths_of(const Tensor& ids) const {
  KOTOBA_CHECK(ids.defined() && ids.ndim() == 2 && ids.dtype() == DType::i32, "reward model: ids must be (B, T) i32");
  const int64_t B = ids.size(0), T = ids.size(1);
  Tensor host = ids.device() == Device::cpu ? ids.contiguous() : to_device(ids, Device::cpu);
  const int32_t* p = host.data<int32_t>();
  std::vector<int64_t> lengths(size_t(B), T);
  if (!pad_token_id_) return lengths;
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = T;
    while (n > 0 && p[b * T + n - 1] == *pad_token_id_) --n;
    KOTOBA_CHECK(n > 0, "reward model: row ", b, " holds padding (id ", *pad_token_id_, ") only");
    lengths[size_t(b)] = n;
  }
  return lengths;
}

Tensor RewardModel::rewards(const Tensor& ids, const std::vector<int64_t>& lengths) {
  KOTOBA_CHECK(ids.defined() && ids.ndim() == 2 && ids.dtype() == DType::i32, "reward model: ids must be (B, T) i32");
  const int64_t B = ids.size(0), T = ids.size(1);
  KOTOBA_CHECK(int64_t(lengths.size()) == B, "reward model: ", lengths.size(), " lengths for ", B, " rows");
  std::vector<int32_t> rows(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lengths[size_t(b)];
    KOTOBA_CHECK(n >= 1 && n <= T, "reward model: row ", b, " length ", n, " is outside [1, ", T, "]");
    rows[size_t(b)] = int32_t(b * T + n - 1);
  }
  Tensor hidden = backbone_->hidden_states(ids);                      // (B, T, C)
  Tensor flat = reshape(hidden, {B * T, hidden.size(2)});             // (B T, C)
  Tensor index = Tensor::from_vector_i32(rows, {B});
  if (flat.device() != Device::cpu) index = to_device(index, flat.device());
  Tensor last = embedding(index, flat);                               // (B, C)
  return score.forward(last);                                         // (B, 1)
}

}  // namespace kotoba::nn
