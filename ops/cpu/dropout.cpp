// CPU kernels: inverted dropout with a counter-based mask (core/rng.h, vectorised here), so
// the backward recomputes the mask instead of storing it.
// Accumulation: the backward writes dx (=) unless `accumulate`, then adds (+=).
#include <cmath>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

// The mask, vectorised: u(i) = (mix64(seed * K + offset + i) >> 40) / 2^24 as in core/rng.h,
// and since both sides are exact, u >= p is the integer test (mix >> 40) >= ceil(p 2^24).
// Returns the keep mask of lanes [0, kLanes) of counters base + i, as all-ones / zero floats.
#if defined(KOTOBA_ISA_AVX512)
inline __m512i mix64_x8(__m512i x) {
  x = _mm512_add_epi64(x, _mm512_set1_epi64(int64_t(0x9e3779b97f4a7c15ull)));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)),
                         _mm512_set1_epi64(int64_t(0xbf58476d1ce4e5b9ull)));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 27)),
                         _mm512_set1_epi64(int64_t(0x94d049bb133111ebull)));
  return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}
inline __m256i bits24_x8(uint64_t base) {
  __m512i idx = _mm512_add_epi64(_mm512_set1_epi64(int64_t(base)), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  return _mm512_cvtepi64_epi32(_mm512_srli_epi64(mix64_x8(idx), 40));
}
inline Vec keep_mask(uint64_t base, int32_t threshold) {
  __m512i bits = _mm512_inserti64x4(_mm512_castsi256_si512(bits24_x8(base)), bits24_x8(base + 8), 1);
  __mmask16 keep = _mm512_cmpge_epi32_mask(bits, _mm512_set1_epi32(threshold));
  return {_mm512_castsi512_ps(_mm512_maskz_mov_epi32(keep, _mm512_set1_epi32(-1)))};
}
inline Vec masked(Vec mask, Vec v) {
  return {_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(mask.v), _mm512_castps_si512(v.v)))};
}
#else
// 64-bit multiply from 32-bit halves: lo*lo + ((hi*lo + lo*hi) << 32)
inline __m256i mullo_epi64(__m256i a, uint64_t c) {
  const __m256i b = _mm256_set1_epi64x(int64_t(c)), b_hi = _mm256_set1_epi64x(int64_t(c >> 32));
  __m256i lo = _mm256_mul_epu32(a, b);
  __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b), _mm256_mul_epu32(a, b_hi));
  return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}
inline __m256i mix64_x4(__m256i x) {
  x = _mm256_add_epi64(x, _mm256_set1_epi64x(int64_t(0x9e3779b97f4a7c15ull)));
  x = mullo_epi64(_mm256_xor_si256(x, _mm256_srli_epi64(x, 30)), 0xbf58476d1ce4e5b9ull);
  x = mullo_epi64(_mm256_xor_si256(x, _mm256_srli_epi64(x, 27)), 0x94d049bb133111ebull);
  return _mm256_xor_si256(x, _mm256_srli_epi64(x, 31));
}
inline __m128i bits24_x4(uint64_t base) {
  __m256i idx = _mm256_add_epi64(_mm256_set1_epi64x(int64_t(base)), _mm256_set_epi64x(3, 2, 1, 0));
  __m256i bits = _mm256_srli_epi64(mix64_x4(idx), 40);  // < 2^24: the low 32-bit halves carry it
  return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(bits, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
}
inline Vec keep_mask(uint64_t base, int32_t threshold) {
  __m256i bits = _mm256_inserti128_si256(_mm256_castsi128_si256(bits24_x4(base)), bits24_x4(base + 4), 1);
  __m256i drop = _mm256_cmpgt_epi32(_mm256_set1_epi32(threshold), bits);
  return {_mm256_castsi256_ps(_mm256_xor_si256(drop, _mm256_set1_epi32(-1)))};
}
inline Vec masked(Vec mask, Vec v) { return {_mm256_and_ps(mask.v, v.v)}; }
#endif

// x, out (n): out[i] = keep(i) ? x[i] / (1 - p) : 0, keep(i) = uniform_at(seed, offset + i) >= p.
// The backward has the same form with x = dout and out = dx, since dy/dx is the same mask
// and scale. Dropped lanes are zeroed by a bit mask, so p = 1 or an inf input gives 0, not NaN.
template <typename T>
void dropout_typed(const DropoutArgs& args, bool accumulate) {
  const T* x = static_cast<const T*>(args.x);
  T* out = static_cast<T*>(args.out);
  const float p = args.p;
  const Vec scale = vset(p < 1.0f ? 1.0f / (1.0f - p) : 0.0f);
  // uniform >= p  <=>  bits >= p 2^24 (exact); p = 1 keeps nothing since bits < 2^24
  const int32_t threshold = int32_t(std::ceil(double(p) * 16777216.0));
  const uint64_t base = args.seed * 0x632be59bd9b4e019ull + args.offset;  // as uniform_at
  parallel_chunks(args.n, kGrain / 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += kLanes) {
      const int64_t m = min_i64(kLanes, end - i);
      const Vec keep = keep_mask(base + uint64_t(i), threshold);
      Vec r = masked(keep, (m == kLanes ? vload(x + i) : vload_n(x + i, m)) * scale);
      if (accumulate) r = r + (m == kLanes ? vload(out + i) : vload_n(out + i, m));
      if (m == kLanes)
        vstore(out + i, r);
      else
        vstore_n(out + i, r, m);
    }
  });
}

// Forward and backward apply the same mask and scale; both honour `accumulate`.
void dropout_apply(const DropoutArgs& args) {
  if (args.dtype == DType::bf16)
    dropout_typed<bf16>(args, args.accumulate);
  else
    dropout_typed<float>(args, args.accumulate);
}

}  // namespace

void register_dropout_kernels(Backend& b) {
  b.dropout_forward = dropout_apply;
  b.dropout_backward = dropout_apply;
}

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
