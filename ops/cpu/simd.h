// A thin SIMD vector of floats for the CPU kernels, compiled once per instruction set:
// AVX-512 (16 lanes) when KOTOBA_ISA_AVX512 is defined, else AVX2 + FMA (8 lanes).
// Kernels are written once against Vec and compiled into kotoba::cpu::avx512 / ::avx2.
// Files that include this must avoid STL templates: the two copies would collide at link time.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "core/dtype.h"

#if defined(KOTOBA_ISA_AVX512)
#define KOTOBA_ISA_NS avx512
#else
#define KOTOBA_ISA_NS avx2
#endif

namespace kotoba::cpu::KOTOBA_ISA_NS {

#if defined(KOTOBA_ISA_AVX512)
constexpr int kLanes = 16;
struct Vec {
  __m512 v;
};
inline Vec vzero() { return {_mm512_setzero_ps()}; }
inline Vec vset(float x) { return {_mm512_set1_ps(x)}; }
inline Vec vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vstore(float* p, Vec a) { _mm512_storeu_ps(p, a.v); }
inline Vec vload(const bf16* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
}
inline void vstore(bf16* p, Vec a) {
  // round to nearest even; NaNs are not produced by kernels from finite inputs
  __m512i u = _mm512_castps_si512(a.v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}
inline Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }  // a*b+c
inline Vec vmax(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
inline Vec vmin(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
inline Vec vsqrt(Vec a) { return {_mm512_sqrt_ps(a.v)}; }
inline float vsum(Vec a) { return _mm512_reduce_add_ps(a.v); }
inline float vhmax(Vec a) { return _mm512_reduce_max_ps(a.v); }
inline Vec vround(Vec a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline Vec vpow2i(Vec n) {  // 2^n for integral n in [-126, 127]
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127)), 23);
  return {_mm512_castsi512_ps(e)};
}
inline Vec vselect_gt(Vec a, Vec b, Vec if_true, Vec if_false) {  // a > b ? t : f
  __mmask16 m = _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ);
  return {_mm512_mask_blend_ps(m, if_false.v, if_true.v)};
}
#else
constexpr int kLanes = 8;
struct Vec {
  __m256 v;
};
inline Vec vzero() { return {_mm256_setzero_ps()}; }
inline Vec vset(float x) { return {_mm256_set1_ps(x)}; }
inline Vec vload(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void vstore(float* p, Vec a) { _mm256_storeu_ps(p, a.v); }
inline Vec vload(const bf16* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
}
inline void vstore(bf16* p, Vec a) {
  __m256i u = _mm256_castps_si256(a.v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  // pack the low 16 bits of each 32-bit lane
  __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(lo, hi));
}
inline Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec vmax(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
inline Vec vmin(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
inline Vec vsqrt(Vec a) { return {_mm256_sqrt_ps(a.v)}; }
inline float vsum(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float vhmax(Vec a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Vec vround(Vec a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline Vec vpow2i(Vec n) {
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23);
  return {_mm256_castsi256_ps(e)};
}
inline Vec vselect_gt(Vec a, Vec b, Vec if_true, Vec if_false) {
  __m256 m = _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ);
  return {_mm256_blendv_ps(if_false.v, if_true.v, m)};
}
#endif

// Partial loads and stores of the first n < kLanes elements (loop tails).
template <typename T>
inline Vec vload_n(const T* p, int64_t n) {
  alignas(64) T buf[kLanes];
  std::memset(buf, 0, sizeof(buf));
  std::memcpy(buf, p, size_t(n) * sizeof(T));
  return vload(buf);
}
template <typename T>
inline void vstore_n(T* p, Vec a, int64_t n) {
  alignas(64) T buf[kLanes];
  vstore(buf, a);
  std::memcpy(p, buf, size_t(n) * sizeof(T));
}

// exp(x) to about 2 ulp: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial.
// Inputs below -87.3 give 0 (flushed), above 88.7 clamp.
inline Vec vexp(Vec x) {
  x = vmin(x, vset(88.3762626647949f));
  Vec lo_mask_src = x;
  x = vmax(x, vset(-87.3f));
  Vec n = vround(x * vset(1.44269504088896341f));
  Vec r = vfma(n, vset(-0.693359375f), x);
  r = vfma(n, vset(2.12194440e-4f), r);
  Vec p = vset(1.9875691500e-4f);
  p = vfma(p, r, vset(1.3981999507e-3f));
  p = vfma(p, r, vset(8.3334519073e-3f));
  p = vfma(p, r, vset(4.1665795894e-2f));
  p = vfma(p, r, vset(1.6666665459e-1f));
  p = vfma(p, r, vset(5.0000001201e-1f));
  p = vfma(p * r, r, r) + vset(1.0f);
  Vec result = p * vpow2i(n);
  // below the clamp the true value underflows: return exactly 0
  return vselect_gt(vset(-87.3f), lo_mask_src, vzero(), result);
}

// tanh(x) = 1 - 2 / (exp(2x) + 1); for small |x| a Taylor series keeps relative accuracy.
inline Vec vtanh(Vec x) {
  Vec e = vexp(vmin(x + x, vset(88.0f)));
  Vec t = vset(1.0f) - vset(2.0f) / (e + vset(1.0f));
  Vec x2 = x * x;
  Vec small = x * vfma(x2, vfma(x2, vset(2.0f / 15.0f), vset(-1.0f / 3.0f)), vset(1.0f));
  Vec ax = vmax(x, vzero() - x);
  return vselect_gt(vset(0.01f), ax, small, t);
}

inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) { return bf16_to_f32(x); }
template <typename T> inline T from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline bf16 from_f32<bf16>(float x) { return f32_to_bf16(x); }

}  // namespace kotoba::cpu::KOTOBA_ISA_NS
