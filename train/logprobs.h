// Log-probabilities of given continuations under a causal LM, token by token and summed per
// sequence: what preference optimisation (DPO) and RL (GRPO) score replies with. A batch is the
// padded layout of train/sft.h (SftBatch): ids (B, T) and next-token targets (B, T), -100 where
// nothing is scored (prompt, padding). With grad mode on the values carry autograd (the policy);
// under a NoGradGuard they are plain numbers (the reference model).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace kotoba::nn {
class CausalLM;
}

namespace kotoba::train {

// logits (B, T, V) f32 or bf16, targets (B, T) i32 -> (B, T) f32: log softmax(logits[b, t])
// at targets[b, t], and 0 where the target is -100. Computed in float64 on the host (the logits
// are copied there when they live on a device); differentiable in the logits. A target outside
// [0, V) is an error naming it.
Tensor token_logprobs(const Tensor& logits, const Tensor& targets);

// x (B, T) f32 -> (B): the sum of each row; differentiable.
Tensor row_sums(const Tensor& x);

struct SequenceLogprobs {
  Tensor tokens;                // (B, T): log p of each scored next token, 0 elsewhere
  Tensor sums;                  // (B): their sum per row (the sequence's log-probability)
  std::vector<int64_t> counts;  // scored tokens per row
};

// The model's log-probabilities of the batch's targets (one forward over ids).
SequenceLogprobs sequence_logprobs(nn::CausalLM& model, const Tensor& ids, const Tensor& targets);

}  // namespace kotoba::train
