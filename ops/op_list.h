// The one list of kernels. It generates the Op enum, the names and each backend's table, so
// a kernel a backend lacks shows up as "not supported" rather than as a silent fallback.
#pragma once
#include "ops/kernel_args.h"

// X(name, ArgsType)
#define KOTOBA_KERNELS(X)                           \
  X(embedding_forward, EmbeddingForwardArgs)        \
  X(embedding_backward, EmbeddingBackwardArgs)      \
  X(gemm, GemmArgs)                                 \
  X(binary, BinaryArgs)                             \
  X(axpby, AxpbyArgs)                               \
  X(sum_rows, SumRowsArgs)                          \
  X(reduce_sum, ReduceSumArgs)                      \
  X(reduce_sum_many, ReduceSumManyArgs)             \
  X(convert, ConvertArgs)                           \
  X(fill, FillArgs)                                 \
  X(unary_forward, UnaryForwardArgs)                \
  X(unary_backward, UnaryBackwardArgs)              \
  X(swiglu_forward, SwigluForwardArgs)              \
  X(swiglu_backward, SwigluBackwardArgs)            \
  X(layernorm_forward, NormForwardArgs)             \
  X(layernorm_backward, NormBackwardArgs)           \
  X(rmsnorm_forward, NormForwardArgs)               \
  X(rmsnorm_backward, NormBackwardArgs)             \
  X(softmax_forward, SoftmaxForwardArgs)            \
  X(softmax_backward, SoftmaxBackwardArgs)          \
  X(attention_forward, AttentionForwardArgs)        \
  X(attention_backward, AttentionBackwardArgs)      \
  X(attention_softmax, AttentionSoftmaxArgs)        \
  X(rope, RopeArgs)                                 \
  X(cross_entropy, CrossEntropyArgs)                \
  X(dropout_forward, DropoutArgs)                   \
  X(dropout_backward, DropoutArgs)                  \
  X(adamw_step, AdamWArgs)                          \
  X(quant_gemm, QuantGemmArgs)                      \
  X(dequantize, DequantizeArgs)
