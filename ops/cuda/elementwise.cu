// CUDA kernels: embedding, element-wise arithmetic, reductions, fills, activations, SwiGLU,
// rotary embedding, dropout and AdamW. Memory-bound, so each is one grid-stride pass.
// Accumulation: parameter gradients +=; activation gradients = unless `accumulate`, then +=.
#include <cuda_bf16.h>

#include <vector>

#include "ops/cuda/common.cuh"

namespace kotoba::cuda {
namespace {

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

constexpr int kThreads = 256;

// ---- embedding: out (N, C) = weight[ids[n]]; dweight (V, C) += scatter of dout ----

template <typename T>
__global__ void embedding_forward_kernel(const int32_t* ids, const T* weight, T* out, int64_t N, int64_t C) {
  GRID_STRIDE(i, N * C) {
    const int64_t n = i / C, c = i - n * C;
    out[i] = weight[int64_t(ids[n]) * C + c];
  }
}

// Repeated ids collide, so the scatter adds atomically (order, hence rounding, may vary).
__device__ __forceinline__ void atomic_add_to(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add_to(bf16* p, float v) {
  atomicAdd(reinterpret_cast<__nv_bfloat16*>(p), __float2bfloat16_rn(v));
}

template <typename T>
__global__ void embedding_backward_kernel(const int32_t* ids, const T* dout, T* dweight, int64_t N, int64_t C) {
  GRID_STRIDE(i, N * C) {
    const int64_t n = i / C, c = i - n * C;
    atomic_add_to(dweight + int64_t(ids[n]) * C + c, to_f32(dout[i]));
  }
}

// ---- binary: out (outer, inner) = a <kind> b, b full or (inner) per row ----

template <typename T, BinaryKind K>
__global__ void binary_kernel(const T* a, const T* b, T* out, int64_t n, int64_t period) {
  GRID_STRIDE(i, n) {
    const float x = to_f32(a[i]), y = to_f32(b[period == n ? i : i % period]);
    float r;
    if constexpr (K == BinaryKind::add) r = x + y;
    else if constexpr (K == BinaryKind::sub) r = x - y;
    else if constexpr (K == BinaryKind::mul) r = x * y;
    else r = x / y;
    out[i] = from_f32<T>(r);
  }
}

// ---- axpby: out = alpha x + beta out (beta == 0 ignores out) ----

template <typename T>
__global__ void axpby_kernel(const T* x, T* out, int64_t n, float alpha, float beta) {
  GRID_STRIDE(i, n) {
    float r = alpha * to_f32(x[i]);
    if (beta != 0.0f) r = fmaf(beta, to_f32(out[i]), r);
    out[i] = from_f32<T>(r);
  }
}

// ---- sum_rows: out (inner) (=|+=) sum over rows of x (outer, inner) ----
// Pass 1: block (32 columns x 8 row lanes) sums a band of rows into partial[band][col];
// pass 2 adds the bands in order. Fixed order: the result is deterministic.

template <typename T>
__global__ void sum_rows_partial_kernel(const T* x, float* partial, int64_t outer, int64_t inner, int64_t band_rows) {
  __shared__ float tile[8][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * band_rows;
  const int64_t r1 = min(outer, r0 + band_rows);
  float acc = 0.0f;
  if (col < inner)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += to_f32(x[r * inner + col]);
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < inner) {
    float s = 0.0f;
    for (int k = 0; k < 8; ++k) s += tile[k][threadIdx.x];
    partial[int64_t(blockIdx.y) * inner + col] = s;
  }
}

template <typename T>
__global__ void sum_rows_finish_kernel(const float* partial, T* out, int64_t bands, int64_t inner, bool accumulate) {
  GRID_STRIDE(j, inner) {
    float s = 0.0f;
    for (int64_t b = 0; b < bands; ++b) s += partial[b * inner + j];
    out[j] = from_f32<T>(accumulate ? to_f32(out[j]) + s : s);
  }
}

// ---- reduce_sum: f64 sum of x or x^2, block partials then one block in order ----

constexpr int kReduceBlocks = 1024;

template <typename T>
__global__ void reduce_partial_kernel(const T* x, int64_t n, bool squares, double* partial) {
  __shared__ double shared[kThreads];
  double acc = 0.0;
  GRID_STRIDE(i, n) {
    const double v = to_f32(x[i]);
    acc += squares ? v * v : v;
  }
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

__global__ void reduce_finish_kernel(const double* partial, int blocks, double* out) {
  __shared__ double shared[kThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) acc += partial[i];
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = shared[0];
}

// ---- fill ----

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, float value) {
  const T v = from_f32<T>(value);
  GRID_STRIDE(i, n) out[i] = v;
}

// ---- activations (the same formulas as the CPU kernels, ops/cpu/elementwise.cpp) ----

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;
constexpr float kGeluClamp = 20.0f;  // beyond it the tanh form is exactly 0 or x in f32

// sigmoid without overflow; also s (1 - s) = e / (1 + e)^2 with e = exp(-|z|).
__device__ __forceinline__ float sigmoid(float z, float* s_one_minus_s = nullptr) {
  const float e = expf(-fabsf(z));
  const float r = 1.0f / (1.0f + e);
  if (s_one_minus_s) *s_one_minus_s = e * r * r;
  return z > 0.0f ? r : e * r;
}
// gelu(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = k (x + c x^3): exact in both tails.
__device__ __forceinline__ float gelu_fwd(float x) {
  const float xc = fminf(fmaxf(x, -kGeluClamp), kGeluClamp);
  const float u = kGeluK * xc * fmaf(kGeluC, xc * xc, 1.0f);
  return x * sigmoid(u + u);
}
// d/dx [x s(2u)] = s + x s (1 - s) 2 u',  u' = k (1 + 3 c x^2)
__device__ __forceinline__ float gelu_grad(float x) {
  const float xc = fminf(fmaxf(x, -kGeluClamp), kGeluClamp);
  const float x2 = xc * xc;
  const float u = kGeluK * xc * fmaf(kGeluC, x2, 1.0f);
  float ss;
  const float s = sigmoid(u + u, &ss);
  const float du = 2.0f * kGeluK * fmaf(3.0f * kGeluC, x2, 1.0f);
  return fmaf(xc * ss, du, s);
}

template <UnaryKind K>
__device__ __forceinline__ float unary_fwd(float x) {
  if constexpr (K == UnaryKind::gelu_tanh) return gelu_fwd(x);
  else if constexpr (K == UnaryKind::gelu_erf) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  else if constexpr (K == UnaryKind::silu) return x * sigmoid(x);
  else if constexpr (K == UnaryKind::relu) return fmaxf(x, 0.0f);
  else if constexpr (K == UnaryKind::exp) return expf(x);
  else return tanhf(x);
}
template <UnaryKind K>
__device__ __forceinline__ float unary_grad(float x) {
  if constexpr (K == UnaryKind::gelu_tanh) return gelu_grad(x);
  else if constexpr (K == UnaryKind::gelu_erf)
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.3989422804014327f * expf(-0.5f * x * x);
  else if constexpr (K == UnaryKind::silu) {
    float ss;
    const float s = sigmoid(x, &ss);
    return fmaf(x, ss, s);
  } else if constexpr (K == UnaryKind::relu) return x > 0.0f ? 1.0f : 0.0f;
  else if constexpr (K == UnaryKind::exp) return expf(x);
  else {
    const float t = tanhf(x);
    return 1.0f - t * t;
  }
}

template <typename T, UnaryKind K>
__global__ void unary_forward_kernel(const T* x, T* out, int64_t n) {
  GRID_STRIDE(i, n) out[i] = from_f32<T>(unary_fwd<K>(to_f32(x[i])));
}
template <typename T, UnaryKind K>
__global__ void unary_backward_kernel(const T* x, const T* dout, T* dx, int64_t n, bool accumulate) {
  GRID_STRIDE(i, n) {
    float g = to_f32(dout[i]) * unary_grad<K>(to_f32(x[i]));
    if (accumulate) g += to_f32(dx[i]);
    dx[i] = from_f32<T>(g);
  }
}

// ---- SwiGLU: out = silu(g) * u; dg = dout u silu'(g), du = dout silu(g) ----

template <typename T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, int64_t n) {
  GRID_STRIDE(i, n) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g * sigmoid(g) * to_f32(up[i]));
  }
}
template <typename T>
__global__ void swiglu_backward_kernel(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t n,
                                       bool accumulate) {
  GRID_STRIDE(i, n) {
    const float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dout[i]);
    float ss;
    const float s = sigmoid(g, &ss);
    if (dgate) {
      float r = d * u * fmaf(g, ss, s);
      if (accumulate) r += to_f32(dgate[i]);
      dgate[i] = from_f32<T>(r);
    }
    if (dup) {
      float r = d * g * s;
      if (accumulate) r += to_f32(dup[i]);
      dup[i] = from_f32<T>(r);
    }
  }
}

// ---- rope (rotate-half): x (N, H, D), one thread per (n, h, i < D/2) pair ----
// out[i] = x[i] c - x[i+D/2] s, out[i+D/2] = x[i+D/2] c + x[i] s; inverse negates s.
// Both halves are read before either is written, so out may alias x.

template <typename T>
__global__ void rope_kernel(const T* x, T* out, const int32_t* positions, const float* cos_table,
                            const float* sin_table, int64_t N, int64_t H, int64_t D, bool inverse, bool accumulate) {
  const int64_t half = D / 2;
  GRID_STRIDE(idx, N * H * half) {
    const int64_t i = idx % half;
    const int64_t nh = idx / half;
    const int64_t n = nh / H;
    const int64_t pos = positions[n];
    const float c = cos_table[pos * half + i];
    const float s = inverse ? -sin_table[pos * half + i] : sin_table[pos * half + i];
    const int64_t base = nh * D;
    const float x1 = to_f32(x[base + i]), x2 = to_f32(x[base + i + half]);
    float o1 = x1 * c - x2 * s, o2 = x2 * c + x1 * s;
    if (accumulate) {
      o1 += to_f32(out[base + i]);
      o2 += to_f32(out[base + i + half]);
    }
    out[base + i] = from_f32<T>(o1);
    out[base + i + half] = from_f32<T>(o2);
  }
}

// ---- dropout: keep element i when uniform_at(seed, offset + i) >= p (core/rng.h) ----

__device__ __forceinline__ float uniform_at_device(uint64_t seed, uint64_t index) {
  uint64_t x = seed * 0x632be59bd9b4e019ull + index;
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x = x ^ (x >> 31);
  return float(x >> 40) * (1.0f / 16777216.0f);
}

template <typename T>
__global__ void dropout_kernel(const T* x, T* out, int64_t n, float p, float scale, uint64_t seed, uint64_t offset,
                               bool accumulate) {
  GRID_STRIDE(i, n) {
    const bool keep = uniform_at_device(seed, offset + uint64_t(i)) >= p;
    float r = keep ? to_f32(x[i]) * scale : 0.0f;
    if (accumulate) r += to_f32(out[i]);
    out[i] = from_f32<T>(r);
  }
}

// ---- AdamW, f32 master weights and moments ----

// The CPU's form (ops/cpu/adamw.cpp), as torch writes it: p = p (1 - lr wd), then
// p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with bc = 1 - beta^step.
template <typename G>
__global__ void adamw_kernel(float* param, const G* grad, float* m, float* v, int64_t n, float beta1, float beta2,
                             float eps, float grad_scale, float decay, float step_size, float inv_bc2_sqrt) {
  GRID_STRIDE(i, n) {
    const float g = to_f32(grad[i]) * grad_scale;
    const float mi = fmaf(beta1, m[i], (1.0f - beta1) * g);
    const float vi = fmaf(beta2, v[i], (1.0f - beta2) * g * g);
    m[i] = mi;
    v[i] = vi;
    const float denom = fmaf(sqrtf(vi), inv_bc2_sqrt, eps);
    param[i] = param[i] * decay - step_size * (mi / denom);
  }
}

// ---- strided matrices for gemm's edge cases: C = beta C, and dtype conversion ----

template <typename T>
__global__ void scale_matrix_kernel(T* c, int64_t m, int64_t n, int64_t ldc, int64_t stride_c, int64_t batch,
                                    float beta) {
  GRID_STRIDE(i, batch * m * n) {
    const int64_t b = i / (m * n), r = (i / n) % m, col = i % n;
    T* p = c + b * stride_c + r * ldc + col;
    *p = from_f32<T>(beta == 0.0f ? 0.0f : beta * to_f32(*p));
  }
}

template <typename S, typename D>
__global__ void convert_matrix_kernel(const S* src, int64_t src_ld, int64_t src_stride, D* dst, int64_t dst_ld,
                                      int64_t dst_stride, int64_t m, int64_t n, int64_t batch) {
  GRID_STRIDE(i, batch * m * n) {
    const int64_t b = i / (m * n), r = (i / n) % m, col = i % n;
    dst[b * dst_stride + r * dst_ld + col] = from_f32<D>(to_f32(src[b * src_stride + r * src_ld + col]));
  }
}

template <typename S, typename D>
__global__ void convert_kernel(const S* src, D* dst, int64_t n, bool accumulate) {
  GRID_STRIDE(i, n) {
    const float v = to_f32(src[i]);
    dst[i] = from_f32<D>(accumulate ? to_f32(dst[i]) + v : v);
  }
}

}  // namespace

void scale_matrix(void* c, int64_t m, int64_t n, int64_t ldc, int64_t stride_c, int64_t batch, float beta, DType t) {
  const int64_t total = batch * m * n;
  if (total == 0) return;
  dispatch_float(t, "gemm", [&](auto tag) {
    using T = decltype(tag);
    scale_matrix_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(static_cast<T*>(c), m, n, ldc,
                                                                                   stride_c, batch, beta);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void convert_matrix(const void* src, DType src_t, int64_t src_ld, int64_t src_stride, void* dst, DType dst_t,
                    int64_t dst_ld, int64_t dst_stride, int64_t m, int64_t n, int64_t batch) {
  const int64_t total = batch * m * n;
  if (total == 0) return;
  dispatch_float(src_t, "gemm", [&](auto stag) {
    using S = decltype(stag);
    dispatch_float(dst_t, "gemm", [&](auto dtag) {
      using D = decltype(dtag);
      convert_matrix_kernel<S, D><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(
          static_cast<const S*>(src), src_ld, src_stride, static_cast<D*>(dst), dst_ld, dst_stride, m, n, batch);
    });
  });
  KOTOBA_CUDA_LAUNCHED();
}

// ---- entry points ----

void embedding_forward(const EmbeddingForwardArgs& a) {
  const int64_t total = a.n_tokens * a.dim;
  if (total == 0) return;
  dispatch_float(a.dtype, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    embedding_forward_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(
        a.ids, static_cast<const T*>(a.weight), static_cast<T*>(a.out), a.n_tokens, a.dim);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void embedding_backward(const EmbeddingBackwardArgs& a) {
  const int64_t total = a.n_tokens * a.dim;
  if (total == 0) return;
  dispatch_float(a.dtype, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    embedding_backward_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(
        a.ids, static_cast<const T*>(a.dout), static_cast<T*>(a.dweight), a.n_tokens, a.dim);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void binary(const BinaryArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.dtype, "binary", [&](auto tag) {
    using T = decltype(tag);
    auto x = static_cast<const T*>(a.a);
    auto y = static_cast<const T*>(a.b);
    auto o = static_cast<T*>(a.out);
    const unsigned g = blocks_for(a.n, kThreads);
    switch (a.kind) {
      case BinaryKind::add: binary_kernel<T, BinaryKind::add><<<g, kThreads, 0, stream()>>>(x, y, o, a.n, a.b_period); break;
      case BinaryKind::sub: binary_kernel<T, BinaryKind::sub><<<g, kThreads, 0, stream()>>>(x, y, o, a.n, a.b_period); break;
      case BinaryKind::mul: binary_kernel<T, BinaryKind::mul><<<g, kThreads, 0, stream()>>>(x, y, o, a.n, a.b_period); break;
      case BinaryKind::div: binary_kernel<T, BinaryKind::div><<<g, kThreads, 0, stream()>>>(x, y, o, a.n, a.b_period); break;
    }
  });
  KOTOBA_CUDA_LAUNCHED();
}

void axpby(const AxpbyArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.dtype, "axpby", [&](auto tag) {
    using T = decltype(tag);
    axpby_kernel<T><<<blocks_for(a.n, kThreads), kThreads, 0, stream()>>>(static_cast<const T*>(a.x),
                                                                          static_cast<T*>(a.out), a.n, a.alpha, a.beta);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void sum_rows(const SumRowsArgs& a) {
  if (a.inner == 0) return;
  // Bands of rows: enough blocks to fill the GPU, each band long enough to amortise pass 2.
  const int64_t col_blocks = (a.inner + 31) / 32;
  int64_t bands = (a.outer + 255) / 256;
  const int64_t max_bands = (1024 + col_blocks - 1) / col_blocks;
  if (bands > max_bands) bands = max_bands;
  if (bands < 1) bands = 1;
  const int64_t band_rows = (a.outer + bands - 1) / bands;
  Scratch partial(sizeof(float) * size_t(bands) * size_t(a.inner));
  dispatch_float(a.dtype, "sum_rows", [&](auto tag) {
    using T = decltype(tag);
    sum_rows_partial_kernel<T><<<dim3(unsigned(col_blocks), unsigned(bands)), dim3(32, 8), 0, stream()>>>(
        static_cast<const T*>(a.x), partial.as<float>(), a.outer, a.inner, band_rows > 0 ? band_rows : 1);
    KOTOBA_CUDA_LAUNCHED();
    sum_rows_finish_kernel<T><<<blocks_for(a.inner, kThreads), kThreads, 0, stream()>>>(
        partial.as<float>(), static_cast<T*>(a.out), bands, a.inner, a.accumulate);
  });
  KOTOBA_CUDA_LAUNCHED();
}

// `out` is a HOST pointer (the op layer reads the scalar on the host): the sum is made on the
// device, then copied back, which waits for the stream.
void reduce_sum(const ReduceSumArgs& a) {
  if (a.n == 0) {
    *a.out = 0.0;
    return;
  }
  const int blocks = int(blocks_for(a.n, kThreads, kReduceBlocks));
  Scratch partial(sizeof(double) * size_t(blocks + 1));
  double* d = partial.as<double>();
  dispatch_float(a.dtype, "reduce_sum", [&](auto tag) {
    using T = decltype(tag);
    reduce_partial_kernel<T><<<blocks, kThreads, 0, stream()>>>(static_cast<const T*>(a.x), a.n, a.squares, d + 1);
  });
  KOTOBA_CUDA_LAUNCHED();
  reduce_finish_kernel<<<1, kThreads, 0, stream()>>>(d + 1, blocks, d);
  KOTOBA_CUDA_LAUNCHED();
  KOTOBA_CUDA_CHECK(cudaMemcpyAsync(a.out, d, sizeof(double), cudaMemcpyDeviceToHost, stream()));
  KOTOBA_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

// One partial pass and one finishing block per tensor, all queued before a single copy back.
void reduce_sum_many(const ReduceSumManyArgs& a) {
  if (a.count == 0) return;
  std::vector<int> blocks(size_t(a.count));
  size_t total_blocks = 0;
  for (int64_t i = 0; i < a.count; ++i) {
    blocks[size_t(i)] = a.ns[i] > 0 ? int(blocks_for(a.ns[i], kThreads, kReduceBlocks)) : 0;
    total_blocks += size_t(blocks[size_t(i)]);
  }
  Scratch scratch(sizeof(double) * (size_t(a.count) + total_blocks));
  double* sums = scratch.as<double>();
  double* partial = sums + a.count;
  KOTOBA_CUDA_CHECK(cudaMemsetAsync(sums, 0, sizeof(double) * size_t(a.count), stream()));
  dispatch_float(a.dtype, "reduce_sum_many", [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < a.count; ++i) {
      const int b = blocks[size_t(i)];
      if (b == 0) continue;
      reduce_partial_kernel<T><<<b, kThreads, 0, stream()>>>(static_cast<const T*>(a.xs[i]), a.ns[i], a.squares,
                                                             partial);
      KOTOBA_CUDA_LAUNCHED();
      reduce_finish_kernel<<<1, kThreads, 0, stream()>>>(partial, b, sums + i);
      KOTOBA_CUDA_LAUNCHED();
      partial += b;
    }
  });
  KOTOBA_CUDA_CHECK(cudaMemcpyAsync(a.out, sums, sizeof(double) * size_t(a.count), cudaMemcpyDeviceToHost, stream()));
  KOTOBA_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void convert(const ConvertArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.src_dtype, "convert", [&](auto stag) {
    using S = decltype(stag);
    dispatch_float(a.dst_dtype, "convert", [&](auto dtag) {
      using D = decltype(dtag);
      convert_kernel<S, D><<<blocks_for(a.n, kThreads), kThreads, 0, stream()>>>(
          static_cast<const S*>(a.src), static_cast<D*>(a.dst), a.n, a.accumulate);
    });
  });
  KOTOBA_CUDA_LAUNCHED();
}

void fill(const FillArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.dtype, "fill", [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<blocks_for(a.n, kThreads), kThreads, 0, stream()>>>(static_cast<T*>(a.out), a.n, a.value);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void unary_forward(const UnaryForwardArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.dtype, "unary_forward", [&](auto tag) {
    using T = decltype(tag);
    auto x = static_cast<const T*>(a.x);
    auto o = static_cast<T*>(a.out);
    const unsigned g = blocks_for(a.n, kThreads);
    switch (a.kind) {
      case UnaryKind::gelu_tanh: unary_forward_kernel<T, UnaryKind::gelu_tanh><<<g, kThreads, 0, stream()>>>(x, o, a.n); break;
      case UnaryKind::silu: unary_forward_kernel<T, UnaryKind::silu><<<g, kThreads, 0, stream()>>>(x, o, a.n); break;
      case UnaryKind::relu: unary_forward_kernel<T, UnaryKind::relu><<<g, kThreads, 0, stream()>>>(x, o, a.n); break;
      case UnaryKind::exp: unary_forward_kernel<T, UnaryKind::exp><<<g, kThreads, 0, stream()>>>(x, o, a.n); break;
      case UnaryKind::tanh: unary_forward_kernel<T, UnaryKind::tanh><<<g, kThreads, 0, stream()>>>(x, o, a.n); break;
      case UnaryKind::gelu_erf:
        unary_forward_kernel<T, UnaryKind::gelu_erf><<<g, kThreads, 0, stream()>>>(x, o, a.n);
        break;
    }
  });
  KOTOBA_CUDA_LAUNCHED();
}

void unary_backward(const UnaryBackwardArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.dtype, "unary_backward", [&](auto tag) {
    using T = decltype(tag);
    auto x = static_cast<const T*>(a.x);
    auto d = static_cast<const T*>(a.dout);
    auto o = static_cast<T*>(a.dx);
    const unsigned g = blocks_for(a.n, kThreads);
    const bool acc = a.accumulate;
    switch (a.kind) {
      case UnaryKind::gelu_tanh: unary_backward_kernel<T, UnaryKind::gelu_tanh><<<g, kThreads, 0, stream()>>>(x, d, o, a.n, acc); break;
      case UnaryKind::silu: unary_backward_kernel<T, UnaryKind::silu><<<g, kThreads, 0, stream()>>>(x, d, o, a.n, acc); break;
      case UnaryKind::relu: unary_backward_kernel<T, UnaryKind::relu><<<g, kThreads, 0, stream()>>>(x, d, o, a.n, acc); break;
      case UnaryKind::exp: unary_backward_kernel<T, UnaryKind::exp><<<g, kThreads, 0, stream()>>>(x, d, o, a.n, acc); break;
      case UnaryKind::tanh: unary_backward_kernel<T, UnaryKind::tanh><<<g, kThreads, 0, stream()>>>(x, d, o, a.n, acc); break;
      case UnaryKind::gelu_erf:
        unary_backward_kernel<T, UnaryKind::gelu_erf><<<g, kThreads, 0, stream()>>>(x, d, o, a.n, acc);
        break;
    }
  });
  KOTOBA_CUDA_LAUNCHED();
}

void swiglu_forward(const SwigluForwardArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.dtype, "swiglu_forward", [&](auto tag) {
    using T = decltype(tag);
    swiglu_forward_kernel<T><<<blocks_for(a.n, kThreads), kThreads, 0, stream()>>>(
        static_cast<const T*>(a.gate), static_cast<const T*>(a.up), static_cast<T*>(a.out), a.n);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void swiglu_backward(const SwigluBackwardArgs& a) {
  if (a.n == 0) return;
  dispatch_float(a.dtype, "swiglu_backward", [&](auto tag) {
    using T = decltype(tag);
    swiglu_backward_kernel<T><<<blocks_for(a.n, kThreads), kThreads, 0, stream()>>>(
        static_cast<const T*>(a.gate), static_cast<const T*>(a.up), static_cast<const T*>(a.dout),
        static_cast<T*>(a.dgate), static_cast<T*>(a.dup), a.n, a.accumulate);
  });
  KOTOBA_CUDA_LAUNCHED();
}

void rope(const RopeArgs& a) {
  const int64_t pairs = a.n_tokens * a.heads * (a.head_dim / 2);
  if (pairs == 0) return;
  dispatch_float(a.dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<blocks_for(pairs, kThreads), kThreads, 0, stream()>>>(
        static_cast<const T*>(a.x), static_cast<T*>(a.out), a.positions, a.cos, a.sin, a.n_tokens, a.heads,
        a.head_dim, a.inverse, a.accumulate);
  });
  KOTOBA_CUDA_LAUNCHED();
}

// The backward is the same masked scaling applied to dout (x) into dx (out).
static void dropout_apply(const DropoutArgs& a, const char* op) {
  if (a.n == 0) return;
  const float scale = a.p < 1.0f ? 1.0f / (1.0f - a.p) : 0.0f;
  dispatch_float(a.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    dropout_kernel<T><<<blocks_for(a.n, kThreads), kThreads, 0, stream()>>>(
        static_cast<const T*>(a.x), static_cast<T*>(a.out), a.n, a.p, scale, a.seed, a.offset, a.accumulate);
  });
  KOTOBA_CUDA_LAUNCHED();
}
void dropout_forward(const DropoutArgs& a) { dropout_apply(a, "dropout_forward"); }
void dropout_backward(const DropoutArgs& a) { dropout_apply(a, "dropout_backward"); }

void adamw_step(const AdamWArgs& a) {
  if (a.n == 0) return;
  const double t = double(a.step < 1 ? 1 : a.step);
  const double bc1 = 1.0 - std::pow(double(a.beta1), t);
  const double bc2 = 1.0 - std::pow(double(a.beta2), t);
  const float decay = float(1.0 - double(a.lr) * double(a.weight_decay));
  const float step_size = float(double(a.lr) / bc1);
  const float inv_bc2_sqrt = float(1.0 / std::sqrt(bc2));
  dispatch_float(a.grad_dtype, "adamw_step", [&](auto tag) {
    using G = decltype(tag);
    adamw_kernel<G><<<blocks_for(a.n, kThreads), kThreads, 0, stream()>>>(
        a.param, static_cast<const G*>(a.grad), a.m, a.v, a.n, a.beta1, a.beta2, a.eps, a.grad_scale, decay,
        step_size, inv_bc2_sqrt);
  });
  KOTOBA_CUDA_LAUNCHED();
}

}  // namespace kotoba::cuda
