// CPU kernel: x @ W^T with W quantised (quant/packed.h's layout), decoding each block of codes
// into registers and never into memory: the weights cross the memory bus at 1 or 0.5 bytes per
// element instead of 4, which is what bounds decoding speed. A register tile of up to four rows
// of W by four (AVX2: two) rows of x shares each decoded vector and each x vector, and the codes
// are prefetched well ahead. Compiled per ISA; 4-bit codes are looked up in the 16-entry table
// with one permute (AVX-512), or on AVX2 with byte shuffles (see ByteTable) against a copy of x
// reordered to the order they decode in.
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

// AVX2, 4-bit: the 16 table entries' bytes as four 16-byte planes (byte j of every entry), each
// broadcast to both lanes. A code picks its entry's byte from each plane with one pshufb, and
// interleaving the four planes (bytes, then 16-bit pairs) rebuilds the floats: 32 weights per 16
// shuffle-class instructions instead of 64 permutes and 32 blends. The interleave works within
// 128-bit lanes, so 16 code bytes (low nibbles A0..15 in lane 0, high nibbles B0..15 in lane 1)
// come out as [A0..3 B0..3] [A4..7 B4..7] [A8..11 B8..11] [A12..15 B12..15]; x is copied once per
// call into that order (reorder_x), so the dot products need no further shuffling.
struct ByteTable {
  __m256i plane[4];
  explicit ByteTable(const float* table) {
    alignas(16) uint8_t bytes[4][16];
    for (int e = 0; e < 16; ++e) {
      uint32_t bits;
      __builtin_memcpy(&bits, table + e, sizeof bits);
      for (int j = 0; j < 4; ++j) bytes[j][e] = uint8_t(bits >> (8 * j));
    }
    for (int j = 0; j < 4; ++j)
      plane[j] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(bytes[j])));
  }
};

// 16 code bytes -> 32 values (unscaled) in the order above.
inline void decode32(const uint8_t* p, const ByteTable& t, Vec w[4]) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), mask = _mm_set1_epi8(15);
  const __m256i idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
  const __m256i b0 = _mm256_shuffle_epi8(t.plane[0], idx), b1 = _mm256_shuffle_epi8(t.plane[1], idx);
  const __m256i b2 = _mm256_shuffle_epi8(t.plane[2], idx), b3 = _mm256_shuffle_epi8(t.plane[3], idx);
  const __m256i lo01 = _mm256_unpacklo_epi8(b0, b1), hi01 = _mm256_unpackhi_epi8(b0, b1);
  const __m256i lo23 = _mm256_unpacklo_epi8(b2, b3), hi23 = _mm256_unpackhi_epi8(b2, b3);
  w[0] = {_mm256_castsi256_ps(_mm256_unpacklo_epi16(lo01, lo23))};
  w[1] = {_mm256_castsi256_ps(_mm256_unpackhi_epi16(lo01, lo23))};
  w[2] = {_mm256_castsi256_ps(_mm256_unpacklo_epi16(hi01, hi23))};
  w[3] = {_mm256_castsi256_ps(_mm256_unpackhi_epi16(hi01, hi23))};
}

// The byte-shuffle path needs whole 16-byte groups in each half-block.
inline bool shuffle_path(const QuantGemmArgs& a) { return a.bits == 4 && a.blocksize % 32 == 0; }

// x row (k) -> xr (k): per block and per 16 code bytes at offset c of its half, the 32 values
// A = x[k0 + c ..], B = x[k0 + half + c ..] as decode32 lays them out, at xr[k0 + 2c ..].
inline void reorder_x(const float* x, int64_t k, int64_t blocksize, float* xr) {
  const int64_t half = blocksize / 2;
  for (int64_t k0 = 0; k0 < k; k0 += blocksize)
    for (int64_t c = 0; c < half; c += 16) {
      const float* A = x + k0 + c;
      const float* B = x + k0 + half + c;
      float* o = xr + k0 + 2 * c;
      for (int g = 0; g < 4; ++g)
        for (int j = 0; j < 4; ++j) {
          o[8 * g + j] = A[4 * g + j];
          o[8 * g + 4 + j] = B[4 * g + j];
        }
    }
}

// Rows m0 .. m0 + MC of the reordered x (row stride k) against row n of W, 4-bit codes.
template <int MC>
inline void dot_rows_shuffled(const QuantGemmArgs& a, const ByteTable& table, const float* xr, int64_t n,
                              int64_t m0) {
  // Two accumulators per row, alternating over the four vectors of a decode: on one, a row alone
  // (batch 1) chains four FMAs per 16 code bytes and waits out their latency. Their use does not
  // depend on how many rows share a decode, so a row's result has the same bits alone or in a batch.
  const int64_t blocks = a.k / a.blocksize, half = a.blocksize / 2;
  const uint8_t* codes = a.codes + n * a.row_bytes;
  const float* scales = a.scales + n * blocks;
  const float* x[MC];
  Vec acc[MC][2];
  for (int i = 0; i < MC; ++i) {
    x[i] = xr + (m0 + i) * a.k;
    acc[i][0] = acc[i][1] = vzero();
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const Vec s = vset(scales[b]);
    const int64_t k0 = b * a.blocksize;
    const uint8_t* block = codes + b * half;
    for (int64_t c = 0; c < half; c += 16) {
      if (((b * half + c) & 63) == 0) prefetch_stream(block + c);
      Vec w[4];
      decode32(block + c, table, w);
      for (int g = 0; g < 4; ++g) {
        w[g] = w[g] * s;
        for (int i = 0; i < MC; ++i) acc[i][g & 1] = vfma(w[g], vload(x[i] + k0 + 2 * c + 8 * g), acc[i][g & 1]);
      }
    }
  }
  for (int i = 0; i < MC; ++i) {
    float* o = a.out + (m0 + i) * a.ldo + n;
    *o = (a.accumulate ? *o : 0.0f) + vsum(acc[i][0] + acc[i][1]);
  }
}
#endif

// The three code layouts the register-tile kernel is specialised for.
enum class Codes {
  int8_row,    // 8-bit, one block (scale) per row: applied to the finished sums
  int8_block,  // 8-bit, blocks of a multiple of 32 columns: each decoded vector scaled
  nibble,      // 4-bit through the 16-entry table, each decoded vector scaled
};

// Rows n0 .. n0 + NR of W against rows m0 .. m0 + MC of x: NR x MC accumulators, one per pair,
// so that a batch-1 call still has NR independent FMA chains and each x vector is loaded once per
// NR rows of W. Every pair is accumulated in the same order whatever the tile, so a row's result
// has the same bits alone or in a batch. Rows of W are consecutive in memory, so the prefetches
// run ahead into the tiles that follow.
template <Codes C, int NR, int MC>
inline void dot_tile(const QuantGemmArgs& a, const Table& table, int64_t n0, int64_t m0) {
  const int64_t blocks = a.k / a.blocksize;
  const uint8_t* codes[NR];
  const float* scales[NR];
  for (int r = 0; r < NR; ++r) {
    codes[r] = a.codes + (n0 + r) * a.row_bytes;
    scales[r] = a.scales + (n0 + r) * blocks;
  }
  const float* x[MC];
  Vec acc[NR][MC];
  for (int i = 0; i < MC; ++i) x[i] = a.x + (m0 + i) * a.ldx;
  for (int r = 0; r < NR; ++r)
    for (int i = 0; i < MC; ++i) acc[r][i] = vzero();
  if constexpr (C != Codes::nibble) {
    // 32 columns (one or two cache lines' worth of codes) per step: k and the blocks are
    // multiples of 32. int8_row is one block of k columns, scaled at the end.
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * a.blocksize;
      [[maybe_unused]] Vec s[NR];
      if constexpr (C == Codes::int8_block)
        for (int r = 0; r < NR; ++r) s[r] = vset(scales[r][b]);
      for (int64_t c = k0; c < k0 + a.blocksize; c += 32) {
        if ((c & 63) == 0)
          for (int r = 0; r < NR; ++r) prefetch_stream(codes[r] + c);
        for (int v = 0; v < 32; v += kLanes) {
          Vec xv[MC];
          for (int i = 0; i < MC; ++i) xv[i] = vload(x[i] + c + v);
          for (int r = 0; r < NR; ++r) {
            Vec w = load_i8(codes[r] + c + v);
            if constexpr (C == Codes::int8_block) w = w * s[r];
            for (int i = 0; i < MC; ++i) acc[r][i] = vfma(w, xv[i], acc[r][i]);
          }
        }
      }
    }
  } else {
    const int64_t half = a.blocksize / 2;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * a.blocksize;
      Vec s[NR];
      for (int r = 0; r < NR; ++r) s[r] = vset(scales[r][b]);
      for (int64_t c = 0; c < half; c += kLanes) {
        if (((b * half + c) & 63) == 0)
          for (int r = 0; r < NR; ++r) prefetch_stream(codes[r] + b * half + c);
        Vec xlo[MC], xhi[MC];
        for (int i = 0; i < MC; ++i) {
          xlo[i] = vload(x[i] + k0 + c);
          xhi[i] = vload(x[i] + k0 + half + c);
        }
        for (int r = 0; r < NR; ++r) {
          Vec lo, hi;
          load_nibbles(codes[r] + b * half + c, table, lo, hi);
          lo = lo * s[r];
          hi = hi * s[r];
          for (int i = 0; i < MC; ++i) acc[r][i] = vfma(hi, xhi[i], vfma(lo, xlo[i], acc[r][i]));
        }
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int i = 0; i < MC; ++i) {
      float* o = a.out + (m0 + i) * a.ldo + n0 + r;
      const float sum = C == Codes::int8_row ? vsum(acc[r][i]) * scales[r][0] : vsum(acc[r][i]);
      *o = (a.accumulate ? *o : 0.0f) + sum;
    }
}

// Register tile: rows of W x rows of x, within the 32 (AVX-512) or 16 (AVX2) vector registers.
#if defined(KOTOBA_ISA_AVX512)
constexpr int kTileW = 4, kTileX = 4;
#else
constexpr int kTileW = 4, kTileX = 2;
#endif

template <Codes C, int NR>
inline void dot_tile_x(const QuantGemmArgs& a, const Table& table, int64_t n0, int64_t m0, int64_t mc) {
  switch (mc) {
    case 1: return dot_tile<C, NR, 1>(a, table, n0, m0);
    case 2: return dot_tile<C, NR, 2>(a, table, n0, m0);
    case 3: if constexpr (kTileX >= 3) return dot_tile<C, NR, 3>(a, table, n0, m0); break;
    case 4: if constexpr (kTileX >= 4) return dot_tile<C, NR, 4>(a, table, n0, m0); break;
    default: break;
  }
}

// out rows [0, m) x columns [begin, end): tiles of kTileX rows of x by kTileW rows of W.
template <Codes C>
inline void dot_tiles(const QuantGemmArgs& a, const Table& table, int64_t begin, int64_t end) {
  for (int64_t m0 = 0; m0 < a.m; m0 += kTileX) {
    const int64_t mc = min_i64(kTileX, a.m - m0);
    for (int64_t n0 = begin; n0 < end; n0 += kTileW) {
      switch (min_i64(kTileW, end - n0)) {
        case 4: dot_tile_x<C, 4>(a, table, n0, m0, mc); break;
        case 3: dot_tile_x<C, 3>(a, table, n0, m0, mc); break;
        case 2: dot_tile_x<C, 2>(a, table, n0, m0, mc); break;
        default: dot_tile_x<C, 1>(a, table, n0, m0, mc); break;
      }
    }
  }
}

void quant_gemm(const QuantGemmArgs& a) {
  if (a.m == 0 || a.n == 0) return;
  float zero_table[16] = {};
  const Table table(a.table ? a.table : zero_table);
  // Enough rows of W per work item to amortise the fork: ~64k weights, whole register tiles.
  const int64_t grain = max_i64(1, (int64_t(1) << 16) / max_i64(1, a.k) / kTileW) * kTileW;
#if !defined(KOTOBA_ISA_AVX512)
  if (shuffle_path(a)) {
    const ByteTable bytes(a.table ? a.table : zero_table);
    // The calling thread's scratch, read by every thread of the parallel region below.
    float* xr = static_cast<float*>(thread_scratch(size_t(a.m * a.k) * sizeof(float)));
    for (int64_t i = 0; i < a.m; ++i) reorder_x(a.x + i * a.ldx, a.k, a.blocksize, xr + i * a.k);
    parallel_chunks(a.n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t m0 = 0; m0 < a.m; m0 += 4) {
        const int64_t mc = min_i64(4, a.m - m0);
        for (int64_t n = begin; n < end; ++n) {
          switch (mc) {
            case 4: dot_rows_shuffled<4>(a, bytes, xr, n, m0); break;
            case 3: dot_rows_shuffled<3>(a, bytes, xr, n, m0); break;
            case 2: dot_rows_shuffled<2>(a, bytes, xr, n, m0); break;
            default: dot_rows_shuffled<1>(a, bytes, xr, n, m0); break;
          }
        }
      }
    });
    return;
  }
#endif
  const Codes codes = a.bits == 4 ? Codes::nibble : a.blocksize == a.k ? Codes::int8_row : Codes::int8_block;
  parallel_chunks(a.n, grain, [&](int64_t begin, int64_t end) {
    switch (codes) {
      case Codes::int8_row: return dot_tiles<Codes::int8_row>(a, table, begin, end);
      case Codes::int8_block: return dot_tiles<Codes::int8_block>(a, table, begin, end);
      case Codes::nibble: return dot_tiles<Codes::nibble>(a, table, begin, end);
    }
  });
}

}  // namespace

void dequantize(const DequantizeArgs& a) {
  const int64_t blocks = a.cols / a.blocksize, half = a.blocksize / 2;
#pragma omp parallel for schedule(static) if (a.rows * a.cols > (int64_t(1) << 16))
  for (int64_t r = 0; r < a.rows; ++r) {
    const uint8_t* code_row = a.codes + r * a.row_bytes;
    const float* scale_row = a.scales + r * blocks;
    float* o = a.out + r * a.cols;
    for (int64_t b = 0; b < blocks; ++b) {
      const float s = scale_row[b];
      float* ob = o + b * a.blocksize;
      if (a.bits == 8) {
        const int8_t* c = reinterpret_cast<const int8_t*>(code_row) + b * a.blocksize;
        for (int64_t j = 0; j < a.blocksize; ++j) ob[j] = float(c[j]) * s;
      } else {
        const uint8_t* c = code_row + b * half;
        for (int64_t j = 0; j < half; ++j) {
          ob[j] = a.table[c[j] & 15] * s;
          ob[half + j] = a.table[c[j] >> 4] * s;
        }
      }
    }
  }
}

void register_quant_gemm_kernels(Backend& b) {
  b.quant_gemm = quant_gemm;
  b.dequantize = dequantize;
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
