// The differentiable ops: each checks its shapes (a mismatch throws kotoba::Error naming the
// op and the shapes), runs the kernel of the tensors' device and records its backward.
// Shapes and broadcast rules are written on each declaration.
#pragma once
#include <cmath>
#include <limits>
#include <memory>
#include <string_view>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "ops/autograd.h"

namespace kotoba::quant {
struct PackedWeight;
}

namespace kotoba {

// ---- shape (views where possible; gradients flow through) ----
Tensor reshape(const Tensor& x, const Shape& shape);           // -1 infers one dim
Tensor transpose(const Tensor& x, int dim0, int dim1);         // a view
Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end);  // a view
Tensor contiguous(const Tensor& x);
Tensor cast(const Tensor& x, DType dtype);                     // f32 <-> bf16; gradient cast back

// ---- element-wise: a and b broadcast numpy-style; out has the broadcast shape ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, float alpha);                    // alpha * x
Tensor sum(const Tensor& x);                                   // scalar (shape [])
Tensor mean(const Tensor& x);                                  // scalar

// ---- activations ----
Tensor gelu(const Tensor& x);   // tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
Tensor gelu_erf(const Tensor& x);  // exact: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), BERT's "gelu"
Tensor silu(const Tensor& x);   // x * sigmoid(x)
Tensor relu(const Tensor& x);
Tensor swiglu(const Tensor& gate, const Tensor& up);  // silu(gate) * up, same shapes

// ---- linear algebra ----
// a (..., M, K) @ b (..., K, N) -> (..., M, N); b may be 2-D and is then shared by every batch.
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., in) @ weight (out, in)^T + bias (out) -> (..., out); bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
// The codes (i8, as bytes) and f32 scales of a quant::PackedWeight copied to a GPU; nn::Linear
// keeps one while it lives there. make_ copies them (one upload).
struct PackedWeightOnDevice {
  Tensor codes, scales;
  static PackedWeightOnDevice make(const quant::PackedWeight& weight, Device device);
};
// x (..., in) @ W^T (+ bias) with W an (out, in) matrix held quantised (quant/packed.h), f32
// activations; the gradient flows to x (and bias), not to the frozen W. On the CPU it reads the
// PackedWeight; on a GPU x and `on_device` (the weight's copy there) must share the device, and
// LLM.int8() weights are refused (their int8 x int8 product is a CPU kernel). ops/quant_matmul.cpp.
Tensor quantized_linear(const Tensor& x, const std::shared_ptr<const quant::PackedWeight>& weight,
                        const Tensor& bias = Tensor(), const PackedWeightOnDevice* on_device = nullptr);

// ---- embeddings ----
// ids (...) i32 in [0, V), weight (V, C) -> (..., C)
Tensor embedding(const Tensor& ids, const Tensor& weight);

// ---- normalisation over the last dim ----
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps = 1e-5f);  // bias may be undefined
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps = 1e-6f);
Tensor softmax(const Tensor& x);

// ---- attention ----
// q (B, H, T, D), k/v (B, Hkv, S, D), H % Hkv == 0 -> (B, H, T, D), any strides with D
// contiguous. key_mask (B, S) i32 (1 = attend), may be undefined. scale defaults to 1/sqrt(D).
// Causal aligns the T queries with the last T keys (query t is at key position t + S - T); a
// sliding window > 0 (causal only) lets each query see only its last `window` keys, itself
// included (Mistral's sliding_window).
// segment_ids (B, T) i32, self-attention only (T == S), may be undefined: several examples
// packed into one row; query t sees key s only when both carry the same segment id (on top of
// causal, window and key_mask), so each example attends as if it were alone. A window then
// still counts packed positions, t - s < window, which within one segment is the distance in
// the example. A query that sees no key at all gets output 0 and no gradient (never NaN).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    const Tensor& key_mask = Tensor(),
                                    float scale = std::numeric_limits<float>::quiet_NaN(), int64_t window = 0,
                                    const Tensor& segment_ids = Tensor());
// How the two attention ops compute. fused: the flash-style kernel (no T x S matrix in memory).
// matmul: scores = scale q k^T and out = P v as strided-batched gemms (tensor cores on a GPU)
// with the probabilities P (B, H, T, S) kept for the backward, for plain causal or full attention
// only (no key_mask, window or segment_ids: those always run fused). automatic, the default,
// takes matmul on a GPU for >= 128 queries whose scores and probabilities fit in 4 GiB, and fused
// otherwise. KOTOBA_ATTENTION=fused|matmul in the environment sets it at start-up.
enum class AttentionAlgorithm { automatic, fused, matmul };
void set_attention_algorithm(AttentionAlgorithm algorithm);
AttentionAlgorithm attention_algorithm();

// GPT-style packed projections: qkv (B, T, 3C) laid out [q | k | v], n_head heads of C/n_head
// -> (B, T, C). Reads q, k, v in place and writes its gradient into one (B, T, 3C) buffer.
// segment_ids (B, T) i32 as in scaled_dot_product_attention.
Tensor attention_packed_qkv(const Tensor& qkv, int64_t n_head, bool causal, const Tensor& key_mask = Tensor(),
                            const Tensor& segment_ids = Tensor());

// Rotary position embedding (rotate-half, as HF LLaMA): x (B, T, H, D), positions (T) or
// (B, T) i32; cos/sin tables (max_pos, D/2) f32 from rope_tables().
Tensor rope(const Tensor& x, const Tensor& positions, const Tensor& cos, const Tensor& sin);
void rope_tables(int64_t max_pos, int64_t head_dim, float theta, Tensor& cos, Tensor& sin);
// The same tables from given inverse frequencies (head_dim / 2 of them; e.g. scaled ones).
void rope_tables_from_frequencies(int64_t max_pos, const std::vector<float>& inv_freq, Tensor& cos, Tensor& sin);

// ---- losses ----
// logits (N, V) (or (B, T, V)), targets (N) (or (B, T)) i32; mean over targets != ignore_index.
// When overwrite_logits, the gradient is computed into the logits buffer during the forward
// (saving a (N, V) buffer); the logits must not be used afterwards.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index = -100,
                     bool overwrite_logits = false);

// ---- regularisation ----
// Inverted dropout; identity when !training or p == 0. Draws from `gen`.
Tensor dropout(const Tensor& x, float p, Generator& gen, bool training = true);

// ---- mixed precision ----
// While an AutocastScope(DType::bf16) is open on this thread, linear() and matmul() compute in
// bf16 with f32 accumulation (torch.autocast's rule for matrix products): f32 inputs are cast
// to bf16 (the gradient is cast back), and an f32 weight is read through a bf16 copy while its
// gradient is written in f32 straight into the f32 master's. Their outputs are bf16. Element-
// wise ops promote an f32/bf16 pair to f32 (always, as torch does), so a residual stream that
// starts f32 stays f32, and so do the norms that read it. AutocastScope(DType::f32) turns it
// off inside an outer scope.
class AutocastScope {
 public:
  explicit AutocastScope(DType compute);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  DType previous_;
};
DType autocast_dtype();  // f32 when no scope is open
// "f32" or "bf16" (a --precision flag or config field named by `what`) as the compute dtype.
DType parse_precision(std::string_view name, std::string_view what);

// ---- devices ----
// A copy of x on `device` (CPU -> CUDA, CUDA -> CPU, or a clone on the same device),
// contiguous, same dtype, no autograd history. Brings up the CUDA backend on first use;
// throws when the device has no backend (no CUDA build or no GPU). ops/device_copy.cpp.
Tensor to_device(const Tensor& x, Device device);
// x itself when it is undefined or already on `device`, else to_device(x, device): for inputs
// built on the host for a model that may live on a GPU.
Tensor on_device(const Tensor& x, Device device);

}  // namespace kotoba
