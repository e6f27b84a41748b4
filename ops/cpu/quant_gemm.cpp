// CPU kernel: x @ W^T with W quantised (quant/packed.h's layout), decoding each block of codes
// into registers and never into memory: the weights cross the memory bus at 1 or 0.5 bytes per
// element instead of 4, which is what bounds decoding speed. Each decoded vector is used for up
// to four rows of x before the next is decoded. Compiled per ISA; 4-bit codes are looked up in the
// 16-entry table with one permute (AVX-512) or two and a blend (AVX2).
#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {

namespace {

#if defined(KOTOBA_ISA_AVX512)
inline Vec load_i8(const uint8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
}
struct Table {
  __m512 t;
  explicit Table(const float* table) : t(_mm512_loadu_ps(table)) {}
  Vec lookup(__m512i idx) const { return {_mm512_permutexvar_ps(idx, t)}; }
};
// kLanes bytes: the values of their low nibbles and of their high nibbles.
inline void load_nibbles(const uint8_t* p, const Table& table, Vec& lo, Vec& hi) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  lo = table.lookup(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  hi = table.lookup(_mm512_srli_epi32(b, 4));
}
#else
inline Vec load_i8(const uint8_t* p) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
}
struct Table {
  __m256 lo8, hi8;
  explicit Table(const float* table) : lo8(_mm256_loadu_ps(table)), hi8(_mm256_loadu_ps(table + 8)) {}
  Vec lookup(__m256i idx) const {
    // Entries 0-7 and 8-15 each by the low 3 bits; bit 3 (moved to the sign) picks between them.
    const __m256 a = _mm256_permutevar8x32_ps(lo8, idx), b = _mm256_permutevar8x32_ps(hi8, idx);
    return {_mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)))};
  }
};
inline void load_nibbles(const uint8_t* p, const Table& table, Vec& lo, Vec& hi) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  lo = table.lookup(_mm256_and_si256(b, _mm256_set1_epi32(15)));
  hi = table.lookup(_mm256_srli_epi32(b, 4));
}
#endif

// Rows m0 .. m0 + MC of x against row n of W.
template <int MC>
inline void dot_rows(const QuantGemmArgs& a, const Table& table, int64_t n, int64_t m0) {
  const int64_t blocks = a.k / a.blocksize, half = a.blocksize / 2;
  const uint8_t* codes = a.codes + n * a.row_bytes;
  const float* scales = a.scales + n * blocks;
  const float* x[MC];
  Vec acc[MC];
  for (int i = 0; i < MC; ++i) {
    x[i] = a.x + (m0 + i) * a.ldx;
    acc[i] = vzero();
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const Vec s = vset(scales[b]);
    const int64_t k0 = b * a.blocksize;
    if (a.bits == 8) {
      for (int64_t c = 0; c < a.blocksize; c += kLanes) {
        const Vec w = load_i8(codes + k0 + c) * s;
        for (int i = 0; i < MC; ++i) acc[i] = vfma(w, vload(x[i] + k0 + c), acc[i]);
      }
    } else {
      const uint8_t* block = codes + b * half;
      for (int64_t c = 0; c < half; c += kLanes) {
        Vec lo, hi;
        load_nibbles(block + c, table, lo, hi);
        lo = lo * s;
        hi = hi * s;
        for (int i = 0; i < MC; ++i) {
          acc[i] = vfma(lo, vload(x[i] + k0 + c), acc[i]);
          acc[i] = vfma(hi, vload(x[i] + k0 + half + c), acc[i]);
        }
      }
    }
  }
  for (int i = 0; i < MC; ++i) {
    float* o = a.out + (m0 + i) * a.ldo + n;
    *o = (a.accumulate ? *o : 0.0f) + vsum(acc[i]);
  }
}

void quant_gemm(const QuantGemmArgs& a) {
  if (a.m == 0 || a.n == 0) return;
  float zero_table[16] = {};
  const Table table(a.table ? a.table : zero_table);
  // Enough rows of W per work item to amortise the fork: ~64k weights.
  const int64_t grain = max_i64(1, (int64_t(1) << 16) / max_i64(1, a.k));
  parallel_chunks(a.n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m0 = 0; m0 < a.m; m0 += 4) {
      const int64_t mc = min_i64(4, a.m - m0);
      for (int64_t n = begin; n < end; ++n) {
        switch (mc) {
          case 4: dot_rows<4>(a, table, n, m0); break;
          case 3: dot_rows<3>(a, table, n, m0); break;
          case 2: dot_rows<2>(a, table, n, m0); break;
          default: dot_rows<1>(a, table, n, m0); break;
        }
      }
    }
  });
}

}  // namespace

void register_quant_gemm_kernels(Backend& b) { b.quant_gemm = quant_gemm; }

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
