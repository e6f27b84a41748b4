// The CPU kernel families, each compiled once per instruction set (see ops/cpu/simd.h), and
// the function that fills a Backend table with them.
#pragma once
#include "ops/backend.h"
#include "ops/cpu/simd.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_embedding_kernels(Backend& b);
void register_gemm_kernels(Backend& b);
void register_elementwise_kernels(Backend& b);
void register_norm_kernels(Backend& b);
void register_softmax_kernels(Backend& b);
void register_attention_kernels(Backend& b);
void register_rope_kernels(Backend& b);
void register_loss_kernels(Backend& b);
void register_dropout_kernels(Backend& b);
void register_adamw_kernels(Backend& b);
void register_quant_gemm_kernels(Backend& b);

inline void register_all_kernels(Backend& b) {
  register_embedding_kernels(b);
  register_gemm_kernels(b);
  register_elementwise_kernels(b);
  register_norm_kernels(b);
  register_softmax_kernels(b);
  register_attention_kernels(b);
  register_rope_kernels(b);
  register_loss_kernels(b);
  register_dropout_kernels(b);
  register_adamw_kernels(b);
  register_quant_gemm_kernels(b);
}
// Defined in ops/cpu/register.cpp, compiled per ISA.
void fill_backend(Backend& b);
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
