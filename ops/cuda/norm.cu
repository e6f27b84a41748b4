// CUDA kernels: LayerNorm, RMSNorm, softmax and the fused softmax + cross-entropy.
// Row statistics take one warp per row (one block per row for the wide cross-entropy rows);
// weight and bias gradients are column sums made in bands and added in a fixed order, so
// they are deterministic. Parameter gradients +=; dx = unless `accumulate`.
#include "ops/cuda/common.cuh"

namespace kotoba::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// ---- LayerNorm / RMSNorm forward: x (rows, cols) -> out; mean/rstd (rows) f32 if set ----

template <typename T, bool kLayerNorm>
__global__ void norm_forward_kernel(const T* x, const T* weight, const T* bias, T* out, float* mean_out,
                                    float* rstd_out, int64_t rows, int64_t cols, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * cols;
  T* orow = out + row * cols;
  float mean = 0.0f;
  if constexpr (kLayerNorm) {
    float s = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) s += to_f32(xr[j]);
    mean = warp_sum(s) / float(cols);
  }
  float ss = 0.0f;
  for (int64_t j = lane; j < cols; j += 32) {
    const float d = to_f32(xr[j]) - mean;
    ss += d * d;
  }
  const float rstd = 1.0f / sqrtf(warp_sum(ss) / float(cols) + eps);
  for (int64_t j = lane; j < cols; j += 32) {
    float y = (to_f32(xr[j]) - mean) * rstd * to_f32(weight[j]);
    if (kLayerNorm && bias) y += to_f32(bias[j]);
    orow[j] = from_f32<T>(y);
  }
  if (lane == 0) {
    if (kLayerNorm && mean_out) mean_out[row] = mean;
    if (rstd_out) rstd_out[row] = rstd;
  }
}

// ---- backward, dx: with xhat = (x - mean) rstd and g = dout * w, the forward y = xhat w + b
// gives dx = rstd (g - mean(g) - xhat mean(g xhat)); RMSNorm drops the mean(g) term. ----

template <typename T, bool kLayerNorm>
__global__ void norm_backward_dx_kernel(const T* x, const T* weight, const float* mean_in, const float* rstd_in,
                                        const T* dout, T* dx, int64_t rows, int64_t cols, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * cols;
  const T* dr = dout + row * cols;
  T* dxr = dx + row * cols;
  const float mean = kLayerNorm ? mean_in[row] : 0.0f;
  const float rstd = rstd_in[row];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int64_t j = lane; j < cols; j += 32) {
    const float g = to_f32(dr[j]) * to_f32(weight[j]);
    const float xhat = (to_f32(xr[j]) - mean) * rstd;
    sum_g += g;
    sum_gx += g * xhat;
  }
  const float mean_g = kLayerNorm ? warp_sum(sum_g) / float(cols) : 0.0f;
  const float mean_gx = warp_sum(sum_gx) / float(cols);
  for (int64_t j = lane; j < cols; j += 32) {
    const float g = to_f32(dr[j]) * to_f32(weight[j]);
    const float xhat = (to_f32(xr[j]) - mean) * rstd;
    float v = rstd * (g - mean_g - xhat * mean_gx);
    if (accumulate) v += to_f32(dxr[j]);
    dxr[j] = from_f32<T>(v);
  }
}

// dweight[j] += sum_r dout[r][j] xhat[r][j]; dbias[j] += sum_r dout[r][j]. Pass 1 writes one
// partial per band of rows (block: 32 columns x 8 row lanes), pass 2 adds the bands in order.
template <typename T, bool kLayerNorm>
__global__ void norm_backward_dw_partial_kernel(const T* x, const float* mean_in, const float* rstd_in, const T* dout,
                                                float* dw_partial, float* db_partial, int64_t rows, int64_t cols,
                                                int64_t band_rows) {
  __shared__ float tile_w[8][33];
  __shared__ float tile_b[8][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * band_rows;
  const int64_t r1 = min(rows, r0 + band_rows);
  float aw = 0.0f, ab = 0.0f;
  if (col < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const float d = to_f32(dout[r * cols + col]);
      const float mean = kLayerNorm ? mean_in[r] : 0.0f;
      aw += d * (to_f32(x[r * cols + col]) - mean) * rstd_in[r];
      ab += d;
    }
  tile_w[threadIdx.y][threadIdx.x] = aw;
  tile_b[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float sw = 0.0f, sb = 0.0f;
    for (int k = 0; k < 8; ++k) {
      sw += tile_w[k][threadIdx.x];
      sb += tile_b[k][threadIdx.x];
    }
    dw_partial[int64_t(blockIdx.y) * cols + col] = sw;
    if (db_partial) db_partial[int64_t(blockIdx.y) * cols + col] = sb;
  }
}

template <typename T>
__global__ void norm_backward_dw_finish_kernel(const float* dw_partial, const float* db_partial, T* dweight, T* dbias,
                                               int64_t bands, int64_t cols) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < cols; j += int64_t(gridDim.x) * blockDim.x) {
    float sw = 0.0f, sb = 0.0f;
    for (int64_t b = 0; b < bands; ++b) {
      sw += dw_partial[b * cols + j];
      if (db_partial) sb += db_partial[b * cols + j];
    }
    if (dweight) dweight[j] = from_f32<T>(to_f32(dweight[j]) + sw);
    if (dbias) dbias[j] = from_f32<T>(to_f32(dbias[j]) + sb);
  }
}

// ---- softmax over the last dim, warp per row ----

template <typename T>
__global__ void softmax_forward_kernel(const T* x, T* out, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * cols;
  T* orow = out + row * cols;
  float m = -INFINITY;
  for (int64_t j = lane; j < cols; j += 32) m = fmaxf(m, to_f32(xr[j]));
  m = warp_max(m);
  float s = 0.0f;
  for (int64_t j = lane; j < cols; j += 32) s += expf(to_f32(xr[j]) - m);
  const float inv = 1.0f / warp_sum(s);
  for (int64_t j = lane; j < cols; j += 32) orow[j] = from_f32<T>(expf(to_f32(xr[j]) - m) * inv);
}

// Attention probabilities from f32 scores, warp per row, causal rows stopping at their last key.
template <typename T>
__global__ void attention_softmax_kernel(const float* scores, T* probs, int64_t rows, int64_t cols, int64_t queries,
                                         bool causal) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* xr = scores + row * cols;
  T* pr = probs + row * cols;
  int64_t visible = cols;
  if (causal) visible = min(cols, max(int64_t(0), row % queries + (cols - queries) + 1));
  float m = -INFINITY;
  for (int64_t j = lane; j < visible; j += 32) m = fmaxf(m, xr[j]);
  m = warp_max(m);
  float s = 0.0f;
  for (int64_t j = lane; j < visible; j += 32) s += expf(xr[j] - m);
  s = warp_sum(s);
  const float inv = visible > 0 ? 1.0f / s : 0.0f;
  for (int64_t j = lane; j < cols; j += 32) pr[j] = from_f32<T>(j < visible ? expf(xr[j] - m) * inv : 0.0f);
}

// y = softmax(x) gives dx = y (dout - sum(dout y)).
template <typename T>
__global__ void softmax_backward_kernel(const T* out, const T* dout, T* dx, int64_t rows, int64_t cols,
                                        bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* yr = out + row * cols;
  const T* dr = dout + row * cols;
  T* dxr = dx + row * cols;
  float dot = 0.0f;
  for (int64_t j = lane; j < cols; j += 32) dot += to_f32(yr[j]) * to_f32(dr[j]);
  dot = warp_sum(dot);
  for (int64_t j = lane; j < cols; j += 32) {
    float v = to_f32(yr[j]) * (to_f32(dr[j]) - dot);
    if (accumulate) v += to_f32(dxr[j]);
    dxr[j] = from_f32<T>(v);
  }
}

// ---- cross-entropy, block per row: loss = logsumexp(x) - x[target];
// dlogits = grad_scale (softmax(x) - onehot(target)). Every read of the row happens before the
// block's last barrier and every write after it, so dlogits may alias logits. ----

constexpr int kCeThreads = 256;

template <typename T>
__global__ void cross_entropy_kernel(const T* logits, const int32_t* targets, float* losses, T* dlogits, int64_t V,
                                     int32_t ignore_index, float grad_scale, const float* row_scale) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const T* xr = logits + row * V;
  const int32_t target = targets[row];
  // A target outside [0, V) (the op rejects these) gives a NaN loss and no onehot term, as on
  // the CPU, without reading out of bounds.
  const bool ignored = target == ignore_index;
  const bool valid = target >= 0 && int64_t(target) < V;
  const float x_target = valid ? to_f32(xr[target]) : NAN;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, to_f32(xr[j]));
  m = block_max(m, shared);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += expf(to_f32(xr[j]) - m);
  s = block_sum(s, shared);  // ends with a barrier: all reads of the row are done
  const float lse = m + logf(s);
  if (threadIdx.x == 0 && losses) losses[row] = ignored ? 0.0f : lse - x_target;
  if (!dlogits) return;
  T* dr = dlogits + row * V;
  if (ignored) {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dr[j] = from_f32<T>(0.0f);
    return;
  }
  if (row_scale) grad_scale *= row_scale[row];
  // Each thread rereads only the elements it then overwrites.
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float p = expf(to_f32(xr[j]) - lse);
    dr[j] = from_f32<T>(grad_scale * (p - (valid && j == target ? 1.0f : 0.0f)));
  }
}

unsigned row_blocks(int64_t rows) { return unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

template <bool kLayerNorm>
void norm_forward(const NormForwardArgs& a, const char* op) {
  if (a.rows == 0 || a.cols == 0) return;
  dispatch_float(a.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    norm_forward_kernel<T, kLayerNorm><<<row_blocks(a.rows), 32 * kWarpsPerBlock, 0, stream()>>>(
        static_cast<const T*>(a.x), static_cast<const T*>(a.weight), static_cast<const T*>(a.bias),
        static_cast<T*>(a.out), a.mean, a.rstd, a.rows, a.cols, a.eps);
  });
  KOTOBA_CUDA_LAUNCHED();
}

template <bool kLayerNorm>
void norm_backward(const NormBackwardArgs& a, const char* op) {
  if (a.rows == 0 || a.cols == 0) return;
  dispatch_float(a.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    if (a.dx) {
      norm_backward_dx_kernel<T, kLayerNorm><<<row_blocks(a.rows), 32 * kWarpsPerBlock, 0, stream()>>>(
          static_cast<const T*>(a.x), static_cast<const T*>(a.weight), a.mean, a.rstd, static_cast<const T*>(a.dout),
          static_cast<T*>(a.dx), a.rows, a.cols, a.accumulate);
      KOTOBA_CUDA_LAUNCHED();
    }
    const bool want_bias = kLayerNorm && a.dbias != nullptr;
    if (!a.dweight && !want_bias) return;
    const int64_t col_blocks = (a.cols + 31) / 32;
    int64_t bands = (a.rows + 127) / 128;
    const int64_t max_bands = (1024 + col_blocks - 1) / col_blocks;
    if (bands > max_bands) bands = max_bands;
    if (bands < 1) bands = 1;
    const int64_t band_rows = (a.rows + bands - 1) / bands;
    Scratch partial(sizeof(float) * size_t(bands) * size_t(a.cols) * (want_bias ? 2 : 1));
    float* dw_partial = partial.as<float>();
    float* db_partial = want_bias ? dw_partial + bands * a.cols : nullptr;
    norm_backward_dw_partial_kernel<T, kLayerNorm><<<dim3(unsigned(col_blocks), unsigned(bands)), dim3(32, 8), 0,
                                                     stream()>>>(
        static_cast<const T*>(a.x), a.mean, a.rstd, static_cast<const T*>(a.dout), dw_partial, db_partial, a.rows,
        a.cols, band_rows);
    KOTOBA_CUDA_LAUNCHED();
    norm_backward_dw_finish_kernel<T><<<blocks_for(a.cols, 256), 256, 0, stream()>>>(
        dw_partial, db_partial, static_cast<T*>(a.dweight), want_bias ? static_cast<T*>(a.dbias) : nullptr, bands,
        a.cols);
    KOTOBA_CUDA_LAUNCHED();
  });
}

}  // namespace

void layernorm_forward(const NormForwardArgs& a) { norm_forward<true>(a, "layernorm_forward"); }
void rmsnorm_forward(const NormForwardArgs& a) { norm_forward<false>(a, "rmsnorm_forward"); }
void layernorm_backward(const NormBackwardArgs& a) { norm_backward<true>(a, "layernorm_backward"); }
void rmsnorm_backward(const NormBackwardArgs& a) { norm_backward<false>(a, "rmsnorm_backward"); }

void softmax_forward(const SoftmaxForwardArgs& a) {
  if (a.rows == 0 || a.cols == 0) return;
  dispatch_float(a.dtype, "softmax_forward", [&](auto tag) {
    using T = decltype(tag);
    softmax_forward_kernel<T><<<row_blocks(a.rows), 32 * kWarpsPerBlock, 0, stream()>>>(
        static_cast<const T*>(a.x), static_cast<T*>(a.out), a.rows, a.cols);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void attention_softmax(const AttentionSoftmaxArgs& a) {
  if (a.rows == 0 || a.cols == 0) return;
  dispatch_float(a.dtype, "attention_softmax", [&](auto tag) {
    using T = decltype(tag);
    attention_softmax_kernel<T><<<row_blocks(a.rows), 32 * kWarpsPerBlock, 0, stream()>>>(
        a.scores, static_cast<T*>(a.probs), a.rows, a.cols, a.queries, a.causal);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void softmax_backward(const SoftmaxBackwardArgs& a) {
  if (a.rows == 0 || a.cols == 0) return;
  dispatch_float(a.dtype, "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    softmax_backward_kernel<T><<<row_blocks(a.rows), 32 * kWarpsPerBlock, 0, stream()>>>(
        static_cast<const T*>(a.out), static_cast<const T*>(a.dout), static_cast<T*>(a.dx), a.rows, a.cols,
        a.accumulate);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void cross_entropy(const CrossEntropyArgs& a) {
  if (a.rows == 0) return;
  dispatch_float(a.dtype, "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    // blocks one per row; rows beyond 2^31 would need a loop, far beyond any batch.
    cross_entropy_kernel<T><<<unsigned(a.rows), kCeThreads, 0, stream()>>>(
        static_cast<const T*>(a.logits), a.targets, a.losses, static_cast<T*>(a.dlogits), a.vocab, a.ignore_index,
        a.grad_scale, a.row_scale);
  });
  KOTOBA_CUDA_LAUNCHED();
}

}  // namespace kotoba::cuda
