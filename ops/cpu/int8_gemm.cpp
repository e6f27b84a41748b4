// CPU kernel of int8_gemm (ops/cpu/int8_gemm.h). The x86 byte multiply-adds take one unsigned
// and one signed operand, so each dot product is rewritten as sum |b| * (a * sign(b)): |b| fits
// an unsigned byte even for b = -128, and a * sign(b) stays in [-127, 127] because the
// activation codes never hold -128. AVX2: vpmaddubsw (pairs into int16; at most 2 * 128 * 127,
// no saturation) then vpmaddwd against ones into int32. AVX-512: the same on 64 bytes, or with
// VNNI one vpdpbusd (four products straight into int32). Each weight row is loaded once per group
// of four activation rows; the threads split the weight rows.
#include "ops/cpu/kernel_util.h"  // first: its pragmas must precede <immintrin.h>

#include "ops/cpu/int8_gemm.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {

namespace {

#if defined(KOTOBA_ISA_AVX512)
inline int32_t hsum(__m512i v) { return _mm512_reduce_add_epi32(v); }

// acc += the four-byte dot products of u (unsigned) and s (signed), VNNI's vpdpbusd. Written in
// assembly so the rest of this file need not be compiled for VNNI; only called where the CPU has it.
inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}

template <int M, bool Vnni>
inline void dot_rows(const Int8GemmArgs& g, int64_t j, int64_t i0) {
  __m512i acc[M];
  for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_si512();
  const int8_t* b = g.b + j * g.k;
  const __m512i ones = _mm512_set1_epi16(1);
  for (int64_t t = 0; t < g.k; t += 64) {
    prefetch_stream(b + t);
    const int64_t left = g.k - t;
    const __mmask64 valid = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    const __m512i vb = _mm512_maskz_loadu_epi8(valid, b + t);
    const __m512i ub = _mm512_abs_epi8(vb);
    const __mmask64 neg = _mm512_movepi8_mask(vb);
    for (int r = 0; r < M; ++r) {
      const __m512i va = _mm512_maskz_loadu_epi8(valid, g.a + (i0 + r) * g.k + t);
      const __m512i sa = _mm512_mask_sub_epi8(va, neg, _mm512_setzero_si512(), va);
      if constexpr (Vnni) {
        acc[r] = dpbusd(acc[r], ub, sa);
      } else {
        acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(ub, sa), ones));
      }
    }
  }
  for (int r = 0; r < M; ++r)
    g.c[(i0 + r) * g.ldc + j] = float(hsum(acc[r])) * g.a_scale[i0 + r] * g.b_scale[j];
}
#else
inline int32_t hsum(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
}

template <int M, bool Vnni>
inline void dot_rows(const Int8GemmArgs& g, int64_t j, int64_t i0) {
  __m256i acc[M];
  for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_si256();
  const int8_t* b = g.b + j * g.k;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t t = 0; t < g.k; t += 32) {  // k is a multiple of 32
    if ((t & 63) == 0) prefetch_stream(b + t);
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + t));
    const __m256i ub = _mm256_abs_epi8(vb);
    for (int r = 0; r < M; ++r) {
      const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.a + (i0 + r) * g.k + t));
      const __m256i sa = _mm256_sign_epi8(va, vb);
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(ub, sa), ones));
    }
  }
  for (int r = 0; r < M; ++r)
    g.c[(i0 + r) * g.ldc + j] = float(hsum(acc[r])) * g.a_scale[i0 + r] * g.b_scale[j];
}
#endif

template <bool Vnni>
void run(const Int8GemmArgs& g) {
  // ~64k weight bytes per work item.
  const int64_t grain = max_i64(1, (int64_t(1) << 16) / max_i64(1, g.k));
  parallel_chunks(g.n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t i0 = 0; i0 < g.m; i0 += 4) {
        switch (min_i64(4, g.m - i0)) {
          case 4: dot_rows<4, Vnni>(g, j, i0); break;
          case 3: dot_rows<3, Vnni>(g, j, i0); break;
          case 2: dot_rows<2, Vnni>(g, j, i0); break;
          default: dot_rows<1, Vnni>(g, j, i0); break;
        }
      }
    }
  });
}

}  // namespace

void int8_gemm(const Int8GemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
#if defined(KOTOBA_ISA_AVX512)
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  if (vnni) return run<true>(g);
#endif
  run<false>(g);
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
