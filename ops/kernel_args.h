// The argument block of every kernel, one struct per op. Backends implement kernels against
// these; ops/*.cpp fill them after checking shapes. Shapes are written on every field.
//
// Conventions, for every kernel:
// - pointers are to contiguous memory unless a stride field says otherwise;
// - all tensor pointers of one op share `dtype` (f32 or bf16) unless the field says f32/i32;
// - math is done in f32 whatever the storage type;
// - parameter gradients are always accumulated (+=); activation gradients are written (=)
//   unless `accumulate` is set, in which case they are added (+=).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace kotoba {

// out (N, C) = weight[ids[n]]           ids (N) i32 in [0, V), weight (V, C)
struct EmbeddingForwardArgs {
  const int32_t* ids; const void* weight; void* out;
  int64_t n_tokens, vocab, dim; DType dtype;
};
// dweight (V, C) += scatter of dout (N, C) by ids
struct EmbeddingBackwardArgs {
  const int32_t* ids; const void* dout; void* dweight;
  int64_t n_tokens, vocab, dim; DType dtype;
};

// Row-major, strided-batched: for each b < batch,
//   C_b (M, N) = alpha * op(A_b) (M, K) @ op(B_b) (K, N) + beta * C_b
// op(X) = X^T when trans_X. lda/ldb/ldc are the row strides of A, B, C as stored.
// A and B share dtype_ab (f32 or bf16); C has dtype_c.
struct GemmArgs {
  bool trans_a, trans_b;
  int64_t m, n, k;
  float alpha;
  const void* a; int64_t lda, stride_a;
  const void* b; int64_t ldb, stride_b;
  float beta;
  void* c; int64_t ldc, stride_c;
  int64_t batch;
  DType dtype_ab, dtype_c;
};

enum class BinaryKind : uint8_t { add, sub, mul, div };
// out (outer, inner) = a (outer, inner) <kind> b, where b is (outer, inner) when b_period ==
// outer*inner, or (inner) repeated over rows when b_period == inner. out may alias a.
struct BinaryArgs {
  BinaryKind kind; const void* a; const void* b; void* out;
  int64_t n, b_period; DType dtype;
};

// out (n) = alpha * x (n) + beta * out (n); beta == 0 ignores the old contents of out.
struct AxpbyArgs {
  const void* x; void* out; int64_t n; float alpha, beta; DType dtype;
};

// out (inner) = sum over rows of x (outer, inner), added to out when accumulate.
struct SumRowsArgs {
  const void* x; void* out; int64_t outer, inner; bool accumulate; DType dtype;
};

// *out (f64) = sum of x (n), or of x^2 when squares.
struct ReduceSumArgs {
  const void* x; double* out; int64_t n; bool squares; DType dtype;
};

// dst (n) (=|+=) src (n) converted from src_dtype to dst_dtype (f32 <-> bf16, or a copy of one
// dtype): casts for mixed precision, e.g. a bf16 gradient added into its f32 master's.
struct ConvertArgs {
  const void* src; DType src_dtype; void* dst; DType dst_dtype; int64_t n; bool accumulate;
};

// out[i] (f64, host memory) = sum of xs[i] (ns[i] elements) or of its squares, for `count`
// tensors of one dtype: the global gradient norm with one wait for the device instead of one
// per parameter.
struct ReduceSumManyArgs {
  const void* const* xs; const int64_t* ns; int64_t count; double* out; bool squares; DType dtype;
};

// out (n) = value
struct FillArgs {
  void* out; int64_t n; float value; DType dtype;
};

// gelu_tanh: GPT-2's tanh approximation; gelu_erf: the exact x Phi(x) (BERT's "gelu").
enum class UnaryKind : uint8_t { gelu_tanh, silu, relu, exp, tanh, gelu_erf };
// out (n) = f(x)
struct UnaryForwardArgs {
  UnaryKind kind; const void* x; void* out; int64_t n; DType dtype;
};
// dx (n) (=|+=) dout * f'(x)
struct UnaryBackwardArgs {
  UnaryKind kind; const void* x; const void* dout; void* dx; int64_t n; bool accumulate; DType dtype;
};

// out (n) = silu(gate) * up
struct SwigluForwardArgs {
  const void* gate; const void* up; void* out; int64_t n; DType dtype;
};
struct SwigluBackwardArgs {
  const void* gate; const void* up; const void* dout; void* dgate; void* dup;
  int64_t n; bool accumulate; DType dtype;
};

// LayerNorm over the last dim: x (rows, cols), weight/bias (cols) (bias may be null),
// mean/rstd (rows) f32 saved for the backward. RMSNorm uses the same block with mean/bias null.
struct NormForwardArgs {
  const void* x; const void* weight; const void* bias; void* out;
  float* mean; float* rstd; int64_t rows, cols; float eps; DType dtype;
};
struct NormBackwardArgs {
  const void* x; const void* weight; const float* mean; const float* rstd; const void* dout;
  void* dx; void* dweight; void* dbias;  // dweight/dbias accumulate; dbias may be null
  int64_t rows, cols; bool accumulate; DType dtype;
};

// Softmax over the last dim of x (rows, cols).
struct SoftmaxForwardArgs {
  const void* x; void* out; int64_t rows, cols; DType dtype;
};
// dx = out * (dout - sum(dout * out))
struct SoftmaxBackwardArgs {
  const void* out; const void* dout; void* dx; int64_t rows, cols; bool accumulate; DType dtype;
};

// The softmax of attention through matrix products: probs (rows, cols) in `dtype` from scores
// (rows, cols) f32, where every `queries` consecutive rows are the queries of one (batch, head)
// and row r is query t = r % queries. When causal, query t sees keys s <= t + (cols - queries)
// (the fused kernel's alignment) and the other probabilities are 0; a row that sees no key is all 0.
struct AttentionSoftmaxArgs {
  const float* scores; void* probs; int64_t rows, cols, queries; bool causal; DType dtype;
};

// Strides of a (B, H, T, D) tensor, in elements; D is contiguous.
struct Strides4 {
  int64_t batch, head, token;
};

// Fused scaled-dot-product attention, flash style: no T x S score matrix is held beyond a
// tile per thread. q (B, H, T, D), k/v (B, Hkv, S, D) with H % Hkv == 0 (grouped-query),
// out (B, H, T, D); lse (B, H, T) f32 is the log-sum-exp of each score row, kept for the
// backward. Causal masks key s > query t + (S - T); a sliding window (window > 0, causal only)
// also masks keys s <= t + (S - T) - window, so each query sees its last `window` keys (itself
// included), as Mistral's. key_mask (B, S) i32, 1 keeps, may be null. segment_ids (B, T) i32,
// only for self-attention (T == S): query t sees key s only when segment_ids[b][t] ==
// segment_ids[b][s] (packed sequences; on top of causal, window and key_mask); may be null.
struct AttentionForwardArgs {
  const void* q; const void* k; const void* v; void* out; float* lse;
  Strides4 q_strides, k_strides, v_strides, out_strides;
  const int32_t* key_mask;
  int64_t batch, heads, kv_heads, q_len, kv_len, head_dim;
  float scale; bool causal; DType dtype;
  int64_t window = 0;
  const int32_t* segment_ids = nullptr;
};
// Recomputes the scores tile by tile from q, k and lse. dq/dk/dv are written (=) with the
// strides of q/k/v unless accumulate. Any of dq/dk/dv may be null (that gradient is not needed).
struct AttentionBackwardArgs {
  const void* q; const void* k; const void* v; const void* out; const float* lse; const void* dout;
  void* dq; void* dk; void* dv;
  Strides4 q_strides, k_strides, v_strides, out_strides, dout_strides, dq_strides, dk_strides, dv_strides;
  const int32_t* key_mask;
  int64_t batch, heads, kv_heads, q_len, kv_len, head_dim;
  float scale; bool causal; bool accumulate; DType dtype;
  int64_t window = 0;                    // as in AttentionForwardArgs
  const int32_t* segment_ids = nullptr;  // as in AttentionForwardArgs
};

// Rotary embedding, rotate-half convention (HF LLaMA): x (N, H, D) with token n at position
// positions[n] (i32); cos/sin (max_pos, D/2) f32. inverse rotates backwards (the backward).
struct RopeArgs {
  const void* x; void* out; const int32_t* positions; const float* cos; const float* sin;
  int64_t n_tokens, heads, head_dim, max_pos; bool inverse; bool accumulate; DType dtype;
};

// Fused softmax + cross-entropy over logits (N, V) with targets (N) i32; ignore_index rows
// give loss 0. losses (N) f32. If dlogits is set it receives grad_scale * (softmax - onehot)
// (0 for ignored rows), times row_scale[n] per row when row_scale (N) f32 is set (per-token
// upstream gradients, e.g. of log-probabilities); it may alias logits, which then are overwritten.
struct CrossEntropyArgs {
  const void* logits; const int32_t* targets; float* losses; void* dlogits;
  int64_t rows, vocab; int32_t ignore_index; float grad_scale; DType dtype;
  const float* row_scale = nullptr;
};

// Inverted dropout with a counter-based mask: element i is kept when
// uniform(seed, offset + i) >= p, and then scaled by 1 / (1 - p). The backward recomputes the
// mask from the same seed and offset, so no mask is stored. Both add into out when accumulate.
struct DropoutArgs {
  const void* x; void* out; int64_t n; float p; uint64_t seed, offset; bool accumulate; DType dtype;
};

// Fused AdamW (decoupled weight decay), f32 master parameters and moments:
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (mhat / (sqrt(vhat) + eps) + wd p)
// grad may be f32 or bf16 (grad_dtype); grad_scale multiplies g first (clipping).
struct AdamWArgs {
  float* param; const void* grad; float* m; float* v; int64_t n;
  float lr, beta1, beta2, eps, weight_decay, grad_scale; int64_t step; DType grad_dtype;
};

// out (m, n) = x (m, k) @ W^T, or out += that when accumulate, with W an (n, k) matrix held
// quantised in quant/packed.h's layout: per block of `blocksize` columns, f32 scale s and codes
// (8-bit: int8 c, value s c; 4-bit: two per byte, value s table[c]). Rows of W are row_bytes
// apart, their scales k / blocksize apart. f32 x and out on the kernel's device; `table` (16
// floats) is host memory, which the CUDA kernel copies into its launch.
struct QuantGemmArgs {
  int64_t m, n, k;
  const float* x; int64_t ldx;
  const uint8_t* codes; int64_t row_bytes; const float* scales; int64_t blocksize; int bits; const float* table;
  float* out; int64_t ldo; bool accumulate;
};

// out (rows, cols) f32 = rows of such a quantised W decoded (value s c, or s table[c]), in the
// layout of QuantGemmArgs; `table` (16 floats) is host memory. The GPU's many-row products
// decode a tile of W this way and multiply it with the f32 gemm.
struct DequantizeArgs {
  const uint8_t* codes; int64_t row_bytes; const float* scales; int64_t blocksize; int bits; const float* table;
  int64_t rows, cols; float* out;
};

}  // namespace kotoba
