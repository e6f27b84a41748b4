// The integer product of LLM.int8() (ops/quant_matmul.cpp): int8 activations times int8
// weights, accumulated exactly in int32 and rescaled per row of each. An internal CPU function
// (no backend op: quantised weights run on the CPU only), compiled once per instruction set;
// quantized_linear picks the set cpu_isa() names.
#pragma once
#include <cstdint>

namespace kotoba::cpu {

struct Int8GemmArgs {
  int64_t m = 0, n = 0, k = 0;   // k a multiple of 32
  const int8_t* a = nullptr;     // m x k activation codes, row stride k, in [-127, 127]
  const int8_t* b = nullptr;     // n x k weight codes, row stride k
  const float* a_scale = nullptr;  // m
  const float* b_scale = nullptr;  // n
  float* c = nullptr;            // m x n, row stride ldc
  int64_t ldc = 0;
};

// c[i, j] = float(sum_t a[i, t] * b[j, t]) * a_scale[i] * b_scale[j]
namespace avx2 { void int8_gemm(const Int8GemmArgs& args); }
// AVX-512BW, with VNNI's vpdpbusd where the CPU has it.
namespace avx512 { void int8_gemm(const Int8GemmArgs& args); }

}  // namespace kotoba::cpu
