// CPU kernels: fused scaled-dot-product attention, flash style. Each thread holds one tile of
// scores (keys x queries) at a time with an online softmax, so no T x S matrix ever exists.
//
// Layout trick: scores are kept transposed, S^T (keys, queries), so the softmax statistics of
// a query are vector lanes (no horizontal reductions) and every tile product below is
// "C (M, N) += A (M, K) @ B (K, N)" with B rows contiguous; A is read by scalar broadcasts
// and may have any strides, so q/k/v/dout are read in place (f32) from e.g. a packed QKV.
// Gradients: dq/dk/dv are written (=), or added (+=) when `accumulate`; each may be null.
// Packed sequences (segment_ids): a (keys, queries) tile whose key and query segment-id ranges
// do not overlap is skipped whole; one that mixes segments is masked entry by entry.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 AVX-512 intrinsics (PR 105593)
#include <math.h>
#include <omp.h>

#include <cstdlib>
#include <new>
#include <vector>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
namespace {

constexpr float kInf = __builtin_inff();
constexpr int64_t kBq = 64;  // queries per tile
constexpr int64_t kBk = 64;  // keys per tile
#if defined(KOTOBA_ISA_AVX512)
constexpr int kMr = 6, kNvMax = 4;  // 24 accumulators of 32 registers
#else
constexpr int kMr = 4, kNvMax = 2;  // 8 accumulators of 16 registers
#endif

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

thread_local Scratch t_scratch;

// C (MR, NV*kLanes) (+)= A (MR, K) @ B (K, NV*kLanes). A[r][k] = A[r*rsa + k*csa].
template <int MR, int NV>
inline void micro(int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B, int64_t ldb, float* C,
                  int64_t ldc, bool acc) {
  Vec c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = acc ? vload(C + r * ldc + v * kLanes) : vzero();
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + k * ldb + v * kLanes);
    const float* ak = A + k * csa;
    for (int r = 0; r < MR; ++r) {
      Vec av = vset(ak[r * rsa]);
      for (int v = 0; v < NV; ++v) c[r][v] = vfma(av, b[v], c[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * kLanes, c[r][v]);
}

template <int MR>
inline void micro_nv(int nv, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B, int64_t ldb,
                     float* C, int64_t ldc, bool acc) {
  switch (nv) {
    case 1: micro<MR, 1>(K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 2: micro<MR, 2>(K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 3: if constexpr (kNvMax >= 3) micro<MR, 3>(K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 4: if constexpr (kNvMax >= 4) micro<MR, 4>(K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    default: break;
  }
}

// Row blocks of MR rows, any MR <= kMr.
inline void micro_mr(int mr, int nv, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B, int64_t ldb,
                     float* C, int64_t ldc, bool acc) {
  switch (mr) {
    case 1: micro_nv<1>(nv, K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 2: micro_nv<2>(nv, K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 3: micro_nv<3>(nv, K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 4: micro_nv<4>(nv, K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 5: if constexpr (kMr >= 5) micro_nv<5>(nv, K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    case 6: if constexpr (kMr >= 6) micro_nv<6>(nv, K, A, rsa, csa, B, ldb, C, ldc, acc); break;
    default: break;
  }
}

// On a tile that the causal diagonal crosses, entry (key r, query c) is live only when
// c >= r + delta (delta = s0 - t0 - offset). The products skip the dead parts per row block:
//   cols_from_row: C rows are keys, columns queries: columns below the first live one;
//   k_from_row:    C rows are keys, K runs over queries: the dead leading K range;
//   k_to_row:      C rows are queries, K runs over keys: the dead trailing K range.
// Skipped score entries are left unwritten; the callers mask them to -inf / zero before use.
enum class Tri { none, cols_from_row, k_from_row, k_to_row };

// C (M, N) (+)= A (M, K) @ B (K, N), N a multiple of kLanes; A[i][k] = A[i*rsa + k*csa],
// B and C row-major with row strides ldb, ldc.
void tile_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B,
               int64_t ldb, float* C, int64_t ldc, bool acc, Tri tri = Tri::none, int64_t delta = 0) {
  const int64_t vectors = N / kLanes;
  for (int64_t i = 0; i < M; i += kMr) {
    const int mr = int(min64(kMr, M - i));
    int64_t k0 = 0, k1 = K, v_first = 0;
    if (tri == Tri::cols_from_row) v_first = min64(vectors, max64(0, i + delta) / kLanes);
    else if (tri == Tri::k_from_row) k0 = min64(K, max64(0, i + delta));
    else if (tri == Tri::k_to_row) k1 = max64(0, min64(K, i + mr - delta));
    if (k1 < k0) k1 = k0;
    for (int64_t v0 = v_first; v0 < vectors; v0 += kNvMax) {
      const int nv = int(min64(kNvMax, vectors - v0));
      micro_mr(mr, nv, k1 - k0, A + i * rsa + k0 * csa, rsa, csa, B + k0 * ldb + v0 * kLanes, ldb,
               C + i * ldc + v0 * kLanes, ldc, acc);
    }
  }
}

// dst (rows, Dp) = mul * src rows (row stride `stride`, D used), zero-padded to Dp columns.
template <typename T>
void pack_rows(const T* src, int64_t stride, int64_t rows, int64_t D, int64_t Dp, float* dst, float mul) {
  const Vec vm = vset(mul);
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * stride;
    float* d = dst + r * Dp;
    int64_t j = 0;
    for (; j + kLanes <= D; j += kLanes) vstore(d + j, vload(s + j) * vm);
    for (; j < D; ++j) d[j] = mul * to_f32(s[j]);
    for (; j < Dp; ++j) d[j] = 0.0f;
  }
}

// dst (D, cols) with row stride ld: dst[d][r] = mul * src[r][d] for r < rows, 0 up to cols.
template <typename T>
void pack_transposed(const T* src, int64_t stride, int64_t rows, int64_t D, float* dst, int64_t ld, int64_t cols,
                     float mul) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * stride;
    for (int64_t d = 0; d < D; ++d) dst[d * ld + r] = mul * to_f32(s[d]);
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t r = rows; r < cols; ++r) dst[d * ld + r] = 0.0f;
}

// dst row (D) (=|+=) mul * src row.
template <typename T>
void store_row(T* dst, const float* src, int64_t D, float mul, bool accumulate) {
  const Vec vm = vset(mul);
  int64_t j = 0;
  if (accumulate) {
    for (; j + kLanes <= D; j += kLanes) vstore(dst + j, vfma(vload(src + j), vm, vload(dst + j)));
    for (; j < D; ++j) dst[j] = from_f32<T>(to_f32(dst[j]) + mul * src[j]);
  } else {
    for (; j + kLanes <= D; j += kLanes) vstore(dst + j, vload(src + j) * vm);
    for (; j < D; ++j) dst[j] = from_f32<T>(mul * src[j]);
  }
}

// Lowest and highest segment id of positions [begin, end) of one row of segment_ids.
inline void segment_range(const int32_t* segment_row, int64_t begin, int64_t end, int32_t& lo, int32_t& hi) {
  lo = hi = segment_row[begin];
  for (int64_t i = begin + 1; i < end; ++i) {
    lo = segment_row[i] < lo ? segment_row[i] : lo;
    hi = segment_row[i] > hi ? segment_row[i] : hi;
  }
}

// Whether a tile of keys with segment ids in [k_lo, k_hi] against queries in [q_lo, q_hi] needs
// masking entry by entry: false when every key and every query share one segment.
inline bool segments_mixed(int32_t k_lo, int32_t k_hi, int32_t q_lo, int32_t q_hi) {
  return !(k_lo == k_hi && q_lo == q_hi && k_lo == q_lo);
}

// Sets masked scores of a transposed tile st (bk keys, nq queries, bq of them real; row stride
// ld) to -inf: keys dropped by key_mask (row of B's mask at s0), under `causal` keys
// s > t + offset, with a sliding window keys s <= t + offset - window, and with segment ids
// (row of B's, self-attention) keys of another segment than the query's.
void mask_tile(float* st, int64_t ld, int64_t s0, int64_t bk, int64_t t0, int64_t bq, int64_t nq,
               const int32_t* key_mask_row, bool causal, int64_t offset, int64_t window,
               const int32_t* segment_row) {
  for (int64_t r = 0; r < bk; ++r) {
    float* row = st + r * ld;
    int64_t masked_queries = 0;  // queries [t0, t0 + masked_queries) cannot see key s0 + r
    if (key_mask_row && key_mask_row[s0 + r] == 0) masked_queries = nq;
    else if (causal) masked_queries = min64(nq, max64(0, s0 + r - offset - t0));
    for (int64_t c = 0; c < masked_queries; ++c) row[c] = -kInf;
    // queries t >= s + window - offset have moved past key s
    if (window > 0)
      for (int64_t c = max64(masked_queries, s0 + r + window - offset - t0); c < nq; ++c) row[c] = -kInf;
    if (segment_row) {
      const int32_t key_segment = segment_row[s0 + r];
      for (int64_t c = 0; c < bq; ++c)
        if (segment_row[t0 + c] != key_segment) row[c] = -kInf;
    }
  }
}

// q (B, H, T, D), k/v (B, Hkv, S, D), out (B, H, T, D), lse (B, H, T) f32; see kernel_args.h.
// One work item is (batch, head, block of kBq queries): Q^T of the block is packed once
// (pre-scaled), then key tiles stream by: S^T = K Q^T, online softmax per query lane,
// O = O * alpha + P V.
template <typename T>
void attention_forward_impl(const AttentionForwardArgs& a) {
  constexpr bool kF32 = sizeof(T) == sizeof(float);
  const int64_t B = a.batch, H = a.heads, T_ = a.q_len, S = a.kv_len, D = a.head_dim;
  const int64_t group = H / a.kv_heads, offset = S - T_;
  const int64_t Dp = round_up(D, kLanes);
  const int64_t n_qblocks = (T_ + kBq - 1) / kBq;
  const bool v_in_place = kF32 && D == Dp;  // V rows usable directly as a B operand
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* out = static_cast<T*>(a.out);

#pragma omp parallel for collapse(3) schedule(dynamic, 1)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t qb = 0; qb < n_qblocks; ++qb) {
        const int64_t hk = h / group;
        const int64_t t0 = qb * kBq, bq = min64(kBq, T_ - t0), nq = round_up(bq, kLanes);
        const T* qh = q + b * a.q_strides.batch + h * a.q_strides.head;
        const T* kh = k + b * a.k_strides.batch + hk * a.k_strides.head;
        const T* vh = v + b * a.v_strides.batch + hk * a.v_strides.head;
        const int32_t* mask_row = a.key_mask ? a.key_mask + b * S : nullptr;
        const int32_t* segment_row = a.segment_ids ? a.segment_ids + b * T_ : nullptr;
        int32_t q_lo = 0, q_hi = 0;
        if (segment_row) segment_range(segment_row, t0, t0 + bq, q_lo, q_hi);

        // qt (D, kBq) | o (kBq, Dp) | st (kBk, kBq) | m, l, alpha (kBq) | kbuf, vbuf (kBk, Dp)
        float* base = t_scratch.get(size_t(D * kBq + kBq * Dp + kBk * kBq + 3 * kBq + 2 * kBk * Dp));
        float* qt = base;
        float* o = qt + D * kBq;
        float* st = o + kBq * Dp;
        float* m = st + kBk * kBq;
        float* l = m + kBq;
        float* alpha = l + kBq;
        float* kbuf = alpha + kBq;
        float* vbuf = kbuf + kBk * Dp;

        pack_transposed(qh + t0 * a.q_strides.token, a.q_strides.token, bq, D, qt, kBq, nq, a.scale);
        for (int64_t i = 0; i < bq * Dp; ++i) o[i] = 0.0f;
        for (int64_t c = 0; c < nq; ++c) {
          m[c] = -kInf;
          l[c] = 0.0f;
        }
        // keys visible to the last query of the block: s <= t0 + bq - 1 + offset; with a window,
        // to the first query: s > t0 + offset - window
        const int64_t s_end = a.causal ? min64(S, t0 + bq + offset) : S;
        const int64_t s_begin = a.window > 0 ? max64(0, t0 + offset - a.window + 1) : 0;
        for (int64_t s0 = s_begin; s0 < s_end; s0 += kBk) {
          const int64_t bk = min64(kBk, s_end - s0);
          bool segment_edge = false;
          if (segment_row) {
            int32_t k_lo, k_hi;
            segment_range(segment_row, s0, s0 + bk, k_lo, k_hi);
            if (k_hi < q_lo || k_lo > q_hi) continue;  // no query of the block shares a key's segment
            segment_edge = segments_mixed(k_lo, k_hi, q_lo, q_hi);
          }
          const float* k_rows;
          int64_t k_stride;
          if constexpr (kF32) {
            k_rows = reinterpret_cast<const float*>(kh + s0 * a.k_strides.token);
            k_stride = a.k_strides.token;
          } else {
            pack_rows(kh + s0 * a.k_strides.token, a.k_strides.token, bk, D, Dp, kbuf, 1.0f);
            k_rows = kbuf;
            k_stride = Dp;
          }
          const bool diagonal = a.causal && s0 + bk - 1 > t0 + offset;
          const Tri tri_keys = diagonal ? Tri::cols_from_row : Tri::none;
          const Tri tri_queries = diagonal ? Tri::k_to_row : Tri::none;
          const int64_t delta = s0 - t0 - offset;
          // S^T (bk, nq) = K (bk, D) @ (scale Q)^T (D, nq)
          tile_gemm(bk, nq, D, k_rows, k_stride, 1, qt, kBq, st, kBq, false, tri_keys, delta);
          // the window's lower edge crosses the tile when its first key is outside the last query's window
          const bool window_edge = a.window > 0 && s0 <= t0 + bq - 1 + offset - a.window;
          if (mask_row || diagonal || window_edge || segment_edge)
            mask_tile(st, kBq, s0, bk, t0, bq, nq, mask_row, a.causal, offset, a.window, segment_row);
          // online softmax, one query per lane: m' = max(m, max_s S), l' = l e^(m-m') + sum_s e^(S-m')
          for (int64_t c = 0; c < nq; c += kLanes) {
            Vec m_old = vload(m + c), m_new = m_old;
            for (int64_t r = 0; r < bk; ++r) m_new = vmax(m_new, vload(st + r * kBq + c));
            // a query with every key so far masked keeps m = -inf; subtract 0 so exp gives 0, not NaN
            Vec m_use = vselect_gt(m_new, vset(-kInf), m_new, vzero());
            Vec sum = vzero();
            for (int64_t r = 0; r < bk; ++r) {
              Vec p = vexp(vload(st + r * kBq + c) - m_use);
              vstore(st + r * kBq + c, p);
              sum = sum + p;
            }
            Vec scale_old = vexp(m_old - m_use);
            vstore(l + c, vfma(vload(l + c), scale_old, sum));
            vstore(m + c, m_new);
            vstore(alpha + c, scale_old);
          }
          for (int64_t t = 0; t < bq; ++t) {
            if (alpha[t] == 1.0f) continue;
            const Vec av = vset(alpha[t]);
            for (int64_t j = 0; j < Dp; j += kLanes) vstore(o + t * Dp + j, vload(o + t * Dp + j) * av);
          }
          const float* v_rows;
          int64_t v_stride;
          if (v_in_place) {
            v_rows = reinterpret_cast<const float*>(vh + s0 * a.v_strides.token);
            v_stride = a.v_strides.token;
          } else {
            pack_rows(vh + s0 * a.v_strides.token, a.v_strides.token, bk, D, Dp, vbuf, 1.0f);
            v_rows = vbuf;
            v_stride = Dp;
          }
          // O (bq, Dp) += P (bq, bk) @ V (bk, Dp), P read from S^T
          tile_gemm(bq, Dp, bk, st, 1, kBq, v_rows, v_stride, o, Dp, true, tri_queries, delta);
        }
        float* lse_row = a.lse + (b * H + h) * T_ + t0;
        T* out_rows = out + b * a.out_strides.batch + h * a.out_strides.head + t0 * a.out_strides.token;
        for (int64_t t = 0; t < bq; ++t) {
          // a fully masked query: output 0, lse = -inf (the backward then gives it no gradient)
          const bool empty = l[t] == 0.0f;
          lse_row[t] = empty ? -kInf : m[t] + logf(l[t]);
          store_row(out_rows + t * a.out_strides.token, o + t * Dp, D, empty ? 0.0f : 1.0f / l[t], false);
        }
      }
}

// Backward, per (batch, kv head): every query block of every head of the group runs in the
// same thread, so dK/dV of the kv head have one writer and need no atomics.
// With P = softmax(scale Q K^T) row-wise and O = P V:
//   dV = P^T dO;  dP = dO V^T;  dS = P * (dP - D) with D_t = sum_j dO_tj O_tj = sum_s P_ts dP_ts;
//   dQ = scale dS K;  dK = scale dS^T Q.
// P is recomputed per tile as exp(scale q.k - lse); a fully masked query (lse = -inf) gets P = 0.
template <typename T>
void attention_backward_impl(const AttentionBackwardArgs& a) {
  constexpr bool kF32 = sizeof(T) == sizeof(float);
  const int64_t B = a.batch, H = a.heads, Hkv = a.kv_heads, T_ = a.q_len, S = a.kv_len, D = a.head_dim;
  const int64_t group = H / Hkv, offset = S - T_;
  const int64_t Dp = round_up(D, kLanes);
  const int64_t n_qblocks = (T_ + kBq - 1) / kBq, Tq = n_qblocks * kBq;
  // Rows are read in place only when each head's rows are contiguous: from a packed QKV
  // (token stride 3C) a contiguous copy per head is measurably faster in the backward.
  const bool rows_in_place = kF32 && D == Dp && a.q_strides.token == D && a.k_strides.token == D &&
                             a.v_strides.token == D && a.dout_strides.token == D;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* out = static_cast<const T*>(a.out);
  const T* dout = static_cast<const T*>(a.dout);
  T* dq = static_cast<T*>(a.dq);
  T* dk = static_cast<T*>(a.dk);
  T* dv = static_cast<T*>(a.dv);

#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      const T* kh = k + b * a.k_strides.batch + hk * a.k_strides.head;
      const T* vh = v + b * a.v_strides.batch + hk * a.v_strides.head;
      const int32_t* mask_row = a.key_mask ? a.key_mask + b * S : nullptr;
      const int32_t* segment_row = a.segment_ids ? a.segment_ids + b * T_ : nullptr;
      // segment-id range of each query block, for skipping tiles that share no segment
      std::vector<int32_t> q_lo, q_hi;
      if (segment_row) {
        q_lo.resize(size_t(n_qblocks));
        q_hi.resize(size_t(n_qblocks));
        for (int64_t qb = 0; qb < n_qblocks; ++qb)
          segment_range(segment_row, qb * kBq, min64(T_, (qb + 1) * kBq), q_lo[size_t(qb)], q_hi[size_t(qb)]);
      }
      const size_t rows_q = rows_in_place ? 0 : size_t(T_ * Dp), rows_k = rows_in_place ? 0 : size_t(S * Dp);
      // qt, dot (D, Tq) | dq_acc (Tq, Dp) | dk_acc, dv_acc (S, Dp) | st, dpt (kBk, kBq) |
      // lse_adj, dsum (Tq) | packed rows of q, dout (T, Dp) and k, v (S, Dp) when needed
      float* base = t_scratch.get(size_t(2 * D * Tq + Tq * Dp + 2 * S * Dp + 2 * kBk * kBq + 2 * Tq) +
                                  2 * rows_q + 2 * rows_k);
      float* qt = base;
      float* dot = qt + D * Tq;
      float* dq_acc = dot + D * Tq;
      float* dk_acc = dq_acc + Tq * Dp;
      float* dv_acc = dk_acc + S * Dp;
      float* st = dv_acc + S * Dp;
      float* dpt = st + kBk * kBq;
      float* lse_adj = dpt + kBk * kBq;
      float* dsum = lse_adj + Tq;
      float* q_pack = dsum + Tq;
      float* do_pack = q_pack + rows_q;
      float* k_pack = do_pack + rows_q;
      float* v_pack = k_pack + rows_k;

      const float *k_rows, *v_rows;
      int64_t k_stride, v_stride;
      if (rows_in_place) {
        k_rows = reinterpret_cast<const float*>(kh);
        v_rows = reinterpret_cast<const float*>(vh);
        k_stride = a.k_strides.token;
        v_stride = a.v_strides.token;
      } else {
        pack_rows(kh, a.k_strides.token, S, D, Dp, k_pack, 1.0f);
        pack_rows(vh, a.v_strides.token, S, D, Dp, v_pack, 1.0f);
        k_rows = k_pack;
        v_rows = v_pack;
        k_stride = v_stride = Dp;
      }
      for (int64_t i = 0; i < 2 * S * Dp; ++i) dk_acc[i] = 0.0f;

      for (int64_t g = 0; g < group; ++g) {
        const int64_t h = hk * group + g;
        const T* qh = q + b * a.q_strides.batch + h * a.q_strides.head;
        const T* oh = out + b * a.out_strides.batch + h * a.out_strides.head;
        const T* doh = dout + b * a.dout_strides.batch + h * a.dout_strides.head;
        const float* lse_h = a.lse + (b * H + h) * T_;
        pack_transposed(qh, a.q_strides.token, T_, D, qt, Tq, Tq, a.scale);
        pack_transposed(doh, a.dout_strides.token, T_, D, dot, Tq, Tq, 1.0f);
        const float *q_rows, *do_rows;
        int64_t q_stride, do_stride;
        if (rows_in_place) {
          q_rows = reinterpret_cast<const float*>(qh);
          do_rows = reinterpret_cast<const float*>(doh);
          q_stride = a.q_strides.token;
          do_stride = a.dout_strides.token;
        } else {
          pack_rows(qh, a.q_strides.token, T_, D, Dp, q_pack, 1.0f);
          pack_rows(doh, a.dout_strides.token, T_, D, Dp, do_pack, 1.0f);
          q_rows = q_pack;
          do_rows = do_pack;
          q_stride = do_stride = Dp;
        }
        for (int64_t t = 0; t < T_; ++t) {
          const T* o_row = oh + t * a.out_strides.token;
          const T* do_row = doh + t * a.dout_strides.token;
          Vec acc = vzero();
          int64_t j = 0;
          for (; j + kLanes <= D; j += kLanes) acc = vfma(vload(o_row + j), vload(do_row + j), acc);
          float s = vsum(acc);
          for (; j < D; ++j) s += to_f32(o_row[j]) * to_f32(do_row[j]);
          dsum[t] = s;
          lse_adj[t] = lse_h[t] == -kInf ? kInf : lse_h[t];  // exp(x - inf) = 0: no gradient
        }
        for (int64_t t = T_; t < Tq; ++t) {
          dsum[t] = 0.0f;
          lse_adj[t] = kInf;
        }
        for (int64_t i = 0; i < Tq * Dp; ++i) dq_acc[i] = 0.0f;

        for (int64_t s0 = 0; s0 < S; s0 += kBk) {
          const int64_t bk = min64(kBk, S - s0);
          // the first query that sees key s0 is t = s0 - offset
          const int64_t first_block = a.causal ? max64(0, s0 - offset) / kBq : 0;
          // and the last that sees key s0 + bk - 1 within a window is t = s0 + bk - 2 + window - offset
          const int64_t end_block =
              a.window > 0 ? min64(n_qblocks, max64(0, s0 + bk - 1 + a.window - offset) / kBq + 1) : n_qblocks;
          int32_t k_lo = 0, k_hi = 0;
          if (segment_row) segment_range(segment_row, s0, s0 + bk, k_lo, k_hi);
          for (int64_t qb = first_block; qb < end_block; ++qb) {
            const int64_t t0 = qb * kBq, bq = min64(kBq, T_ - t0), nq = round_up(bq, kLanes);
            bool segment_edge = false;
            if (segment_row) {
              const int32_t lo = q_lo[size_t(qb)], hi = q_hi[size_t(qb)];
              if (k_hi < lo || k_lo > hi) continue;  // no query of the block shares a key's segment
              segment_edge = segments_mixed(k_lo, k_hi, lo, hi);
            }
            // S^T (bk, nq) = K (scale Q)^T;  dP^T (bk, nq) = V dO^T
            const bool diagonal = a.causal && s0 + bk - 1 > t0 + offset;
            const Tri tri_cols = diagonal ? Tri::cols_from_row : Tri::none;
            const Tri tri_k_queries = diagonal ? Tri::k_from_row : Tri::none;
            const Tri tri_k_keys = diagonal ? Tri::k_to_row : Tri::none;
            const int64_t delta = s0 - t0 - offset;
            tile_gemm(bk, nq, D, k_rows + s0 * k_stride, k_stride, 1, qt + t0, Tq, st, kBq, false, tri_cols, delta);
            tile_gemm(bk, nq, D, v_rows + s0 * v_stride, v_stride, 1, dot + t0, Tq, dpt, kBq, false, tri_cols, delta);
            const bool window_edge = a.window > 0 && s0 <= t0 + bq - 1 + offset - a.window;
            if (mask_row || diagonal || window_edge || segment_edge)
              mask_tile(st, kBq, s0, bk, t0, bq, nq, mask_row, a.causal, offset, a.window, segment_row);
            for (int64_t r = 0; r < bk; ++r) {
              float* p_row = st + r * kBq;
              float* ds_row = dpt + r * kBq;
              for (int64_t c = 0; c < nq; c += kLanes) {
                Vec p = vexp(vload(p_row + c) - vload(lse_adj + t0 + c));
                vstore(p_row + c, p);
                // p == 0 where masked; dP may be unwritten there (Tri), so select rather than multiply
                vstore(ds_row + c, vselect_gt(p, vzero(), p * (vload(ds_row + c) - vload(dsum + t0 + c)), vzero()));
              }
            }
            // dV (bk, Dp) += P^T dO;  dK += dS^T Q (scaled at the end);  dQ (bq, Dp) += dS K
            tile_gemm(bk, Dp, bq, st, kBq, 1, do_rows + t0 * do_stride, do_stride, dv_acc + s0 * Dp, Dp, true,
                      tri_k_queries, delta);
            tile_gemm(bk, Dp, bq, dpt, kBq, 1, q_rows + t0 * q_stride, q_stride, dk_acc + s0 * Dp, Dp, true,
                      tri_k_queries, delta);
            tile_gemm(bq, Dp, bk, dpt, 1, kBq, k_rows + s0 * k_stride, k_stride, dq_acc + t0 * Dp, Dp, true,
                      tri_k_keys, delta);
          }
        }
        if (dq) {
          T* dq_h = dq + b * a.dq_strides.batch + h * a.dq_strides.head;
          for (int64_t t = 0; t < T_; ++t)
            store_row(dq_h + t * a.dq_strides.token, dq_acc + t * Dp, D, a.scale, a.accumulate);
        }
      }
      if (dk) {
        T* dk_h = dk + b * a.dk_strides.batch + hk * a.dk_strides.head;
        for (int64_t s = 0; s < S; ++s) store_row(dk_h + s * a.dk_strides.token, dk_acc + s * Dp, D, a.scale, a.accumulate);
      }
      if (dv) {
        T* dv_h = dv + b * a.dv_strides.batch + hk * a.dv_strides.head;
        for (int64_t s = 0; s < S; ++s) store_row(dv_h + s * a.dv_strides.token, dv_acc + s * Dp, D, 1.0f, a.accumulate);
      }
    }
}

void attention_forward(const AttentionForwardArgs& a) {
  if (a.batch <= 0 || a.heads <= 0 || a.q_len <= 0 || a.head_dim <= 0) return;
  if (a.dtype == DType::bf16) attention_forward_impl<bf16>(a);
  else attention_forward_impl<float>(a);
}

void attention_backward(const AttentionBackwardArgs& a) {
  if (a.batch <= 0 || a.heads <= 0 || a.q_len <= 0 || a.head_dim <= 0) return;
  if (a.dtype == DType::bf16) attention_backward_impl<bf16>(a);
  else attention_backward_impl<float>(a);
}

}  // namespace

void register_attention_kernels(Backend& b) {
  b.attention_forward = attention_forward;
  b.attention_backward = attention_backward;
}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
