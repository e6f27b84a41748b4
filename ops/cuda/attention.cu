// CUDA kernels: fused scaled-dot-product attention, flash style. Scores exist only one tile
// at a time in shared memory; the forward keeps a running max and sum per query row (online
// softmax) and saves lse, from which the backward recomputes each probability tile.
// q (B, H, T, D), k/v (B, Hkv, S, D) with any Strides4 (D contiguous), H % Hkv == 0 (GQA);
// causal masks key s > t + (S - T), a sliding window (> 0) also s <= t + (S - T) - window;
// key_mask (B, S) i32, 1 keeps; segment_ids (B, T) i32 (self-attention, T == S) keep only keys of
// the query's own segment (packed sequences), and a tile that shares no segment with the block's
// rows is skipped after one vote (__syncthreads_or). head_dim <= 128.
// Math is f32 on f32 or bf16 storage (SIMT FMA; a tensor-core path is the next step).
// Four threads share a row: thread (row, lane4) owns columns lane4 + 4j of D and of the tile.
// The backward runs two kernels that each recompute P, so neither needs atomics:
//   dK/dV: one block per key tile, looping over the query heads of its group and all query
//   tiles; dQ: one block per query tile, looping over the key tiles. Gradients are
//   deterministic. dq/dk/dv are written (=) unless `accumulate`; any of them may be null.
#include <climits>
#include <mutex>

#include "ops/cuda/common.cuh"

namespace kotoba::cuda {
namespace {

constexpr int kRowThreads = 4;
constexpr int kFwdRows = 64;    // query rows per forward block (256 threads)
constexpr int kFwdKeys = 32;    // keys per forward tile
constexpr int kBwdRows = 32;    // rows (keys for dK/dV, queries for dQ) per backward block (128 threads)
constexpr int kBwdInner = 32;   // inner tile of the backward loops

struct AttnShape {
  int64_t batch, heads, kv_heads, q_len, kv_len, head_dim;
  float scale;
  bool causal;
  int64_t window;  // 0: none
  const int32_t* segment_ids;  // (B, T) i32 or null
};

// Loads rows [row0, row0 + rows) of one (b, h) slab into tile[rows][DMAX + 1] as f32; rows
// past `len` and columns past D are zero.
template <typename T, int DMAX>
__device__ __forceinline__ void load_tile(float* tile, const T* base, int64_t token_stride, int64_t row0, int rows,
                                          int64_t len, int64_t D) {
  for (int idx = threadIdx.x; idx < rows * DMAX; idx += blockDim.x) {
    const int r = idx / DMAX, d = idx % DMAX;
    const int64_t t = row0 + r;
    float v = 0.0f;
    if (t < len && d < D) v = to_f32(base[t * token_stride + d]);
    tile[r * (DMAX + 1) + d] = v;
  }
}

__device__ __forceinline__ bool key_visible(int64_t t, int64_t s, const AttnShape& sh, const int32_t* key_mask,
                                            int64_t b) {
  if (s >= sh.kv_len || t >= sh.q_len) return false;
  if (sh.causal && s > t + (sh.kv_len - sh.q_len)) return false;
  if (sh.window > 0 && s <= t + (sh.kv_len - sh.q_len) - sh.window) return false;
  if (key_mask && key_mask[b * sh.kv_len + s] == 0) return false;
  if (sh.segment_ids && sh.segment_ids[b * sh.q_len + s] != sh.segment_ids[b * sh.q_len + t]) return false;
  return true;
}

// Segment-id range [lo, hi] of rows [row0, row0 + rows) of batch b (clipped to len), reduced over
// the block through two shared ints. Every thread of the block must call it.
__device__ __forceinline__ void block_segment_range(const int32_t* segment_ids, int64_t b, int64_t len, int64_t row0,
                                                    int rows, int* shared_lo_hi, int& lo, int& hi) {
  if (threadIdx.x == 0) {
    shared_lo_hi[0] = INT_MAX;
    shared_lo_hi[1] = INT_MIN;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows; i += blockDim.x)
    if (row0 + i < len) {
      const int sid = segment_ids[b * len + row0 + i];
      atomicMin(shared_lo_hi, sid);
      atomicMax(shared_lo_hi + 1, sid);
    }
  __syncthreads();
  lo = shared_lo_hi[0];
  hi = shared_lo_hi[1];
}

// Whether any of rows [row0, row0 + rows) of batch b (below len) has a segment id in [lo, hi]:
// a block-wide vote, so every thread of the block must call it and all get the same answer.
__device__ __forceinline__ bool block_any_segment_in(const int32_t* segment_ids, int64_t b, int64_t len, int64_t row0,
                                                     int rows, int lo, int hi) {
  int hit = 0;
  for (int i = threadIdx.x; i < rows; i += blockDim.x)
    if (row0 + i < len) {
      const int sid = segment_ids[b * len + row0 + i];
      hit |= sid >= lo && sid <= hi;
    }
  return __syncthreads_or(hit) != 0;
}

__device__ __forceinline__ float dot_rows(const float* a, const float* b, int64_t D) {
  float acc = 0.0f;
  for (int64_t d = 0; d < D; ++d) acc = fmaf(a[d], b[d], acc);
  return acc;
}

// ---- forward: grid (ceil(T / 64), H, B), 256 threads ----

template <typename T, int DMAX>
__global__ void __launch_bounds__(kFwdRows * kRowThreads)
attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* out, float* lse,
                         Strides4 qs, Strides4 ks, Strides4 vs, Strides4 os, const int32_t* key_mask, AttnShape sh) {
  constexpr int LD = DMAX + 1;
  constexpr int KJ = kFwdKeys / kRowThreads;  // tile columns per thread
  constexpr int DJ = DMAX / kRowThreads;      // output columns per thread
  extern __shared__ float smem[];
  float* Qs = smem;                       // [kFwdRows][LD]
  float* Ks = Qs + kFwdRows * LD;         // [kFwdKeys][LD]
  float* Vs = Ks + kFwdKeys * LD;         // [kFwdKeys][LD]
  float* Ps = Vs + kFwdKeys * LD;         // [kFwdRows][kFwdKeys + 1]

  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = int64_t(blockIdx.x) * kFwdRows;
  const int64_t hk = h / (sh.heads / sh.kv_heads);
  const int64_t D = sh.head_dim, S = sh.kv_len;
  const int r = threadIdx.x / kRowThreads, lane4 = threadIdx.x % kRowThreads;
  const int64_t t = q0 + r;

  const T* qb = q + b * qs.batch + h * qs.head;
  const T* kb = k + b * ks.batch + hk * ks.head;
  const T* vb = v + b * vs.batch + hk * vs.head;
  load_tile<T, DMAX>(Qs, qb, qs.token, q0, kFwdRows, sh.q_len, D);

  float o[DJ];
#pragma unroll
  for (int j = 0; j < DJ; ++j) o[j] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  __shared__ int segment_lo_hi[2];
  int seg_lo = 0, seg_hi = 0;
  if (sh.segment_ids) block_segment_range(sh.segment_ids, b, sh.q_len, q0, kFwdRows, segment_lo_hi, seg_lo, seg_hi);

  int64_t kv_end = S;
  if (sh.causal) kv_end = min(S, q0 + kFwdRows + (S - sh.q_len));
  // keys below the first row's window are invisible to the whole block
  const int64_t kv_begin = sh.window > 0 ? max(int64_t(0), q0 + (S - sh.q_len) - sh.window + 1) : 0;
  for (int64_t k0 = kv_begin; k0 < kv_end; k0 += kFwdKeys) {
    // a key tile of no segment of the block's queries adds nothing (the vote is also a barrier)
    if (sh.segment_ids && !block_any_segment_in(sh.segment_ids, b, S, k0, kFwdKeys, seg_lo, seg_hi)) continue;
    __syncthreads();  // the previous tile is no longer read
    load_tile<T, DMAX>(Ks, kb, ks.token, k0, kFwdKeys, S, D);
    load_tile<T, DMAX>(Vs, vb, vs.token, k0, kFwdKeys, S, D);
    __syncthreads();

    float s[KJ];
    float tile_max = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < KJ; ++jj) s[jj] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = Qs[r * LD + d];
#pragma unroll
      for (int jj = 0; jj < KJ; ++jj) s[jj] = fmaf(qd, Ks[(lane4 + kRowThreads * jj) * LD + d], s[jj]);
    }
#pragma unroll
    for (int jj = 0; jj < KJ; ++jj) {
      const int64_t key = k0 + lane4 + kRowThreads * jj;
      s[jj] = key_visible(t, key, sh, key_mask, b) ? s[jj] * sh.scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[jj]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float m_new = fmaxf(m, tile_max);
    // A row with no visible key so far keeps m = -inf; its p are 0 and nothing rescales.
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = expf(m - m_use);
    float row_sum = 0.0f;
#pragma unroll
    for (int jj = 0; jj < KJ; ++jj) {
      const float p = expf(s[jj] - m_use);
      row_sum += p;
      Ps[r * (kFwdKeys + 1) + lane4 + kRowThreads * jj] = p;
    }
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
    l = l * alpha + row_sum;
    m = m_new;
    __syncwarp();  // the row's four threads read each other's p
#pragma unroll
    for (int j = 0; j < DJ; ++j) o[j] *= alpha;
    for (int c = 0; c < kFwdKeys; ++c) {
      const float p = Ps[r * (kFwdKeys + 1) + c];
      const float* vrow = Vs + c * LD + lane4;
#pragma unroll
      for (int j = 0; j < DJ; ++j) o[j] = fmaf(p, vrow[kRowThreads * j], o[j]);
    }
  }

  if (t >= sh.q_len) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  T* ob = out + b * os.batch + h * os.head + t * os.token;
#pragma unroll
  for (int j = 0; j < DJ; ++j) {
    const int64_t d = lane4 + kRowThreads * j;
    if (d < D) ob[d] = from_f32<T>(o[j] * inv);
  }
  if (lse && lane4 == 0) lse[(b * sh.heads + h) * sh.q_len + t] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// ---- backward, D_t = sum_d dout[t][d] out[t][d] (the softmax-backward row term) ----

template <typename T>
__global__ void attention_row_dot_kernel(const T* out, const T* dout, Strides4 os, Strides4 dos, float* delta,
                                         AttnShape sh) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int64_t rows = sh.batch * sh.heads * sh.q_len;
  if (row >= rows) return;
  const int64_t t = row % sh.q_len, bh = row / sh.q_len, h = bh % sh.heads, b = bh / sh.heads;
  const T* o = out + b * os.batch + h * os.head + t * os.token;
  const T* d = dout + b * dos.batch + h * dos.head + t * dos.token;
  float acc = 0.0f;
  for (int64_t i = lane; i < sh.head_dim; i += 32) acc += to_f32(o[i]) * to_f32(d[i]);
  acc = warp_sum(acc);
  if (lane == 0) delta[row] = acc;
}

// In the forward P = softmax(scale Q K^T) and O = P V, so with dP = dO V^T,
// dS = P * (dP - D) (D = rowsum(dO * O)), dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K.

// ---- dK, dV: grid (ceil(S / 32), Hkv, B), 128 threads; thread row = key ----

template <typename T, int DMAX>
__global__ void __launch_bounds__(kBwdRows * kRowThreads)
attention_backward_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const float* __restrict__ lse, const float* __restrict__ delta, const T* __restrict__ dout,
                               T* dk, T* dv, Strides4 qs, Strides4 ks, Strides4 vs, Strides4 dos, Strides4 dks,
                               Strides4 dvs, const int32_t* key_mask, AttnShape sh, bool accumulate) {
  constexpr int LD = DMAX + 1;
  constexpr int PL = kBwdInner + 1;
  constexpr int QJ = kBwdInner / kRowThreads;
  constexpr int DJ = DMAX / kRowThreads;
  extern __shared__ float smem[];
  float* Ks = smem;                    // [kBwdRows][LD]
  float* Vs = Ks + kBwdRows * LD;      // [kBwdRows][LD]
  float* Qs = Vs + kBwdRows * LD;      // [kBwdInner][LD]
  float* dOs = Qs + kBwdInner * LD;    // [kBwdInner][LD]
  float* Ps = dOs + kBwdInner * LD;    // [kBwdRows][PL]
  float* dSs = Ps + kBwdRows * PL;     // [kBwdRows][PL]
  float* lse_s = dSs + kBwdRows * PL;  // [kBwdInner]
  float* delta_s = lse_s + kBwdInner;  // [kBwdInner]

  const int64_t b = blockIdx.z, hk = blockIdx.y, k0 = int64_t(blockIdx.x) * kBwdRows;
  const int64_t group = sh.heads / sh.kv_heads;
  const int64_t D = sh.head_dim, S = sh.kv_len, Tq = sh.q_len;
  const int c = threadIdx.x / kRowThreads, lane4 = threadIdx.x % kRowThreads;
  const int64_t key = k0 + c;

  load_tile<T, DMAX>(Ks, k + b * ks.batch + hk * ks.head, ks.token, k0, kBwdRows, S, D);
  load_tile<T, DMAX>(Vs, v + b * vs.batch + hk * vs.head, vs.token, k0, kBwdRows, S, D);

  float dk_acc[DJ], dv_acc[DJ];
#pragma unroll
  for (int j = 0; j < DJ; ++j) dk_acc[j] = dv_acc[j] = 0.0f;

  __shared__ int segment_lo_hi[2];
  int seg_lo = 0, seg_hi = 0;
  if (sh.segment_ids) block_segment_range(sh.segment_ids, b, S, k0, kBwdRows, segment_lo_hi, seg_lo, seg_hi);

  int64_t t_begin = 0;
  if (sh.causal) t_begin = max(int64_t(0), k0 - (S - Tq));
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const T* qb = q + b * qs.batch + h * qs.head;
    const T* db = dout + b * dos.batch + h * dos.head;
    const float* lse_bh = lse + (b * sh.heads + h) * Tq;
    const float* delta_bh = delta + (b * sh.heads + h) * Tq;
    for (int64_t t0 = t_begin; t0 < Tq; t0 += kBwdInner) {
      // a query tile of no segment of the block's keys gives them no gradient
      if (sh.segment_ids && !block_any_segment_in(sh.segment_ids, b, Tq, t0, kBwdInner, seg_lo, seg_hi)) continue;
      __syncthreads();
      load_tile<T, DMAX>(Qs, qb, qs.token, t0, kBwdInner, Tq, D);
      load_tile<T, DMAX>(dOs, db, dos.token, t0, kBwdInner, Tq, D);
      for (int i = threadIdx.x; i < kBwdInner; i += blockDim.x) {
        const bool in = t0 + i < Tq;
        lse_s[i] = in ? lse_bh[t0 + i] : -INFINITY;
        delta_s[i] = in ? delta_bh[t0 + i] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int ii = 0; ii < QJ; ++ii) {
        const int r = lane4 + kRowThreads * ii;
        const int64_t t = t0 + r;
        float p = 0.0f, ds = 0.0f;
        if (key_visible(t, key, sh, key_mask, b) && lse_s[r] != -INFINITY) {
          const float s = dot_rows(Ks + c * LD, Qs + r * LD, D) * sh.scale;
          p = expf(s - lse_s[r]);
          const float dp = dot_rows(Vs + c * LD, dOs + r * LD, D);
          ds = p * (dp - delta_s[r]);
        }
        Ps[c * PL + r] = p;
        dSs[c * PL + r] = ds;
      }
      __syncwarp();
      for (int r = 0; r < kBwdInner; ++r) {
        const float p = Ps[c * PL + r], ds = dSs[c * PL + r];
        const float* qrow = Qs + r * LD + lane4;
        const float* dorow = dOs + r * LD + lane4;
#pragma unroll
        for (int j = 0; j < DJ; ++j) {
          dv_acc[j] = fmaf(p, dorow[kRowThreads * j], dv_acc[j]);
          dk_acc[j] = fmaf(ds, qrow[kRowThreads * j], dk_acc[j]);
        }
      }
    }
  }

  if (key >= S) return;
  // Either of dk / dv may be null (that gradient is not needed).
  T* dkr = dk ? dk + b * dks.batch + hk * dks.head + key * dks.token : nullptr;
  T* dvr = dv ? dv + b * dvs.batch + hk * dvs.head + key * dvs.token : nullptr;
#pragma unroll
  for (int j = 0; j < DJ; ++j) {
    const int64_t d = lane4 + kRowThreads * j;
    if (d >= D) continue;
    if (dkr) {
      const float gk = dk_acc[j] * sh.scale;
      dkr[d] = from_f32<T>(accumulate ? gk + to_f32(dkr[d]) : gk);
    }
    if (dvr) dvr[d] = from_f32<T>(accumulate ? dv_acc[j] + to_f32(dvr[d]) : dv_acc[j]);
  }
}

// ---- dQ: grid (ceil(T / 32), H, B), 128 threads; thread row = query ----

template <typename T, int DMAX>
__global__ void __launch_bounds__(kBwdRows * kRowThreads)
attention_backward_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             const float* __restrict__ lse, const float* __restrict__ delta, const T* __restrict__ dout,
                             T* dq, Strides4 qs, Strides4 ks, Strides4 vs, Strides4 dos, Strides4 dqs,
                             const int32_t* key_mask, AttnShape sh, bool accumulate) {
  constexpr int LD = DMAX + 1;
  constexpr int PL = kBwdInner + 1;
  constexpr int KJ = kBwdInner / kRowThreads;
  constexpr int DJ = DMAX / kRowThreads;
  extern __shared__ float smem[];
  float* Qs = smem;                    // [kBwdRows][LD]
  float* dOs = Qs + kBwdRows * LD;     // [kBwdRows][LD]
  float* Ks = dOs + kBwdRows * LD;     // [kBwdInner][LD]
  float* Vs = Ks + kBwdInner * LD;     // [kBwdInner][LD]
  float* dSs = Vs + kBwdInner * LD;    // [kBwdRows][PL]

  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = int64_t(blockIdx.x) * kBwdRows;
  const int64_t hk = h / (sh.heads / sh.kv_heads);
  const int64_t D = sh.head_dim, S = sh.kv_len, Tq = sh.q_len;
  const int r = threadIdx.x / kRowThreads, lane4 = threadIdx.x % kRowThreads;
  const int64_t t = q0 + r;

  load_tile<T, DMAX>(Qs, q + b * qs.batch + h * qs.head, qs.token, q0, kBwdRows, Tq, D);
  load_tile<T, DMAX>(dOs, dout + b * dos.batch + h * dos.head, dos.token, q0, kBwdRows, Tq, D);
  const float row_lse = t < Tq ? lse[(b * sh.heads + h) * Tq + t] : -INFINITY;
  const float row_delta = t < Tq ? delta[(b * sh.heads + h) * Tq + t] : 0.0f;
  const T* kb = k + b * ks.batch + hk * ks.head;
  const T* vb = v + b * vs.batch + hk * vs.head;

  float dq_acc[DJ];
#pragma unroll
  for (int j = 0; j < DJ; ++j) dq_acc[j] = 0.0f;
  __shared__ int segment_lo_hi[2];
  int seg_lo = 0, seg_hi = 0;
  if (sh.segment_ids) block_segment_range(sh.segment_ids, b, Tq, q0, kBwdRows, segment_lo_hi, seg_lo, seg_hi);

  int64_t kv_end = S;
  if (sh.causal) kv_end = min(S, q0 + kBwdRows + (S - Tq));
  for (int64_t k0 = 0; k0 < kv_end; k0 += kBwdInner) {
    if (sh.segment_ids && !block_any_segment_in(sh.segment_ids, b, S, k0, kBwdInner, seg_lo, seg_hi)) continue;
    __syncthreads();
    load_tile<T, DMAX>(Ks, kb, ks.token, k0, kBwdInner, S, D);
    load_tile<T, DMAX>(Vs, vb, vs.token, k0, kBwdInner, S, D);
    __syncthreads();
#pragma unroll
    for (int jj = 0; jj < KJ; ++jj) {
      const int c = lane4 + kRowThreads * jj;
      float ds = 0.0f;
      if (key_visible(t, k0 + c, sh, key_mask, b) && row_lse != -INFINITY) {
        const float s = dot_rows(Qs + r * LD, Ks + c * LD, D) * sh.scale;
        const float p = expf(s - row_lse);
        const float dp = dot_rows(dOs + r * LD, Vs + c * LD, D);
        ds = p * (dp - row_delta);
      }
      dSs[r * PL + c] = ds;
    }
    __syncwarp();
    for (int c = 0; c < kBwdInner; ++c) {
      const float ds = dSs[r * PL + c];
      const float* krow = Ks + c * LD + lane4;
#pragma unroll
      for (int j = 0; j < DJ; ++j) dq_acc[j] = fmaf(ds, krow[kRowThreads * j], dq_acc[j]);
    }
  }

  if (t >= Tq) return;
  T* dqr = dq + b * dqs.batch + h * dqs.head + t * dqs.token;
#pragma unroll
  for (int j = 0; j < DJ; ++j) {
    const int64_t d = lane4 + kRowThreads * j;
    if (d >= D) continue;
    float g = dq_acc[j] * sh.scale;
    if (accumulate) g += to_f32(dqr[d]);
    dqr[d] = from_f32<T>(g);
  }
}

// Raises a kernel's dynamic shared-memory limit once (above 48 KB needs the opt-in).
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  KOTOBA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

AttnShape shape_of(int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t head_dim,
                   float scale, bool causal, int64_t window, const int32_t* segment_ids, const char* op) {
  if (head_dim > 128 || head_dim < 1)
    fail(op, "head_dim must be in [1, 128] for the CUDA attention kernels", __FILE__, __LINE__);
  if (kv_heads < 1 || heads % kv_heads != 0)
    fail(op, "heads must be a multiple of kv_heads", __FILE__, __LINE__);
  if (segment_ids && q_len != kv_len) fail(op, "segment_ids need q_len == kv_len", __FILE__, __LINE__);
  return AttnShape{batch, heads, kv_heads, q_len, kv_len, head_dim, scale, causal, window, segment_ids};
}

template <typename T, int DMAX>
void launch_forward(const AttentionForwardArgs& a, const AttnShape& sh) {
  constexpr int LD = DMAX + 1;
  const size_t shared = sizeof(float) * size_t(kFwdRows * LD + 2 * kFwdKeys * LD + kFwdRows * (kFwdKeys + 1));
  static std::once_flag once;
  std::call_once(once, [&] { allow_shared(attention_forward_kernel<T, DMAX>, shared); });
  const dim3 grid(unsigned((a.q_len + kFwdRows - 1) / kFwdRows), unsigned(a.heads), unsigned(a.batch));
  attention_forward_kernel<T, DMAX><<<grid, kFwdRows * kRowThreads, shared, stream()>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k), static_cast<const T*>(a.v), static_cast<T*>(a.out),
      a.lse, a.q_strides, a.k_strides, a.v_strides, a.out_strides, a.key_mask, sh);
  KOTOBA_CUDA_LAUNCHED();
}

template <typename T, int DMAX>
void launch_backward(const AttentionBackwardArgs& a, const AttnShape& sh, const float* delta) {
  constexpr int LD = DMAX + 1;
  constexpr int PL = kBwdInner + 1;
  const size_t shared_kv =
      sizeof(float) * size_t(2 * kBwdRows * LD + 2 * kBwdInner * LD + 2 * kBwdRows * PL + 2 * kBwdInner);
  const size_t shared_q = sizeof(float) * size_t(2 * kBwdRows * LD + 2 * kBwdInner * LD + kBwdRows * PL);
  static std::once_flag once;
  std::call_once(once, [&] {
    allow_shared(attention_backward_dkdv_kernel<T, DMAX>, shared_kv);
    allow_shared(attention_backward_dq_kernel<T, DMAX>, shared_q);
  });
  const auto* q = static_cast<const T*>(a.q);
  const auto* k = static_cast<const T*>(a.k);
  const auto* v = static_cast<const T*>(a.v);
  const auto* dout = static_cast<const T*>(a.dout);
  if (a.dk || a.dv) {
    const dim3 grid(unsigned((a.kv_len + kBwdRows - 1) / kBwdRows), unsigned(a.kv_heads), unsigned(a.batch));
    attention_backward_dkdv_kernel<T, DMAX><<<grid, kBwdRows * kRowThreads, shared_kv, stream()>>>(
        q, k, v, a.lse, delta, dout, static_cast<T*>(a.dk), static_cast<T*>(a.dv), a.q_strides, a.k_strides,
        a.v_strides, a.dout_strides, a.dk_strides, a.dv_strides, a.key_mask, sh, a.accumulate);
    KOTOBA_CUDA_LAUNCHED();
  }
  if (a.dq) {
    const dim3 grid(unsigned((a.q_len + kBwdRows - 1) / kBwdRows), unsigned(a.heads), unsigned(a.batch));
    attention_backward_dq_kernel<T, DMAX><<<grid, kBwdRows * kRowThreads, shared_q, stream()>>>(
        q, k, v, a.lse, delta, dout, static_cast<T*>(a.dq), a.q_strides, a.k_strides, a.v_strides, a.dout_strides,
        a.dq_strides, a.key_mask, sh, a.accumulate);
    KOTOBA_CUDA_LAUNCHED();
  }
}

}  // namespace

void attention_forward(const AttentionForwardArgs& a) {
  if (a.batch == 0 || a.heads == 0 || a.q_len == 0) return;
  const AttnShape sh = shape_of(a.batch, a.heads, a.kv_heads, a.q_len, a.kv_len, a.head_dim, a.scale, a.causal,
                                a.window, a.segment_ids, "attention_forward");
  dispatch_float(a.dtype, "attention_forward", [&](auto tag) {
    using T = decltype(tag);
    if (a.head_dim <= 64) launch_forward<T, 64>(a, sh);
    else launch_forward<T, 128>(a, sh);
  });
}

void attention_backward(const AttentionBackwardArgs& a) {
  if (a.batch == 0 || a.heads == 0 || a.q_len == 0 || a.kv_len == 0) return;
  const AttnShape sh = shape_of(a.batch, a.heads, a.kv_heads, a.q_len, a.kv_len, a.head_dim, a.scale, a.causal,
                                a.window, a.segment_ids, "attention_backward");
  const int64_t rows = a.batch * a.heads * a.q_len;
  Scratch delta(sizeof(float) * size_t(rows));
  dispatch_float(a.dtype, "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    attention_row_dot_kernel<T><<<unsigned((rows + 7) / 8), 256, 0, stream()>>>(
        static_cast<const T*>(a.out), static_cast<const T*>(a.dout), a.out_strides, a.dout_strides,
        delta.as<float>(), sh);
    KOTOBA_CUDA_LAUNCHED();
    if (a.head_dim <= 64) launch_backward<T, 64>(a, sh, delta.as<float>());
    else launch_backward<T, 128>(a, sh, delta.as<float>());
  });
}

}  // namespace kotoba::cuda
