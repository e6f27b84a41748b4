// Fused scaled-dot-product attention ops: the general (B, H, T, D) form and the GPT-style
// packed-QKV form that reads q/k/v in place and writes its gradient into one (B, T, 3C) buffer.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>

#include "ops/backend.h"
#include "ops/ops.h"

namespace kotoba {
namespace {

Strides4 strides4(const Tensor& t) { return Strides4{t.strides()[0], t.strides()[1], t.strides()[2]}; }

// `elements` elements of `dt` past p (and past a tensor's data, at).
inline char* offset(void* p, int64_t elements, DType dt) {
  return static_cast<char*>(p) + int64_t(dtype_bytes(dt, 1)) * elements;
}
inline const char* offset(const void* p, int64_t elements, DType dt) {
  return static_cast<const char*>(p) + int64_t(dtype_bytes(dt, 1)) * elements;
}
inline void* at(const Tensor& t, int64_t elements) { return offset(t.raw(), elements, t.dtype()); }

// `t` with a contiguous last dim (a copy only when needed).
Tensor last_dim_contiguous(const Tensor& t) {
  return (t.strides().back() == 1 || t.shape().back() <= 1) ? t : t.contiguous();
}

void check_attention_input(const Tensor& t, const char* op, const char* name, int ndim) {
  KOTOBA_CHECK(t.defined(), op, ": ", name, " is undefined");
  KOTOBA_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op, ": ", name, " must be f32 or bf16, got ",
               dtype_name(t.dtype()));
  KOTOBA_CHECK(t.ndim() == ndim, op, ": ", name, " must be ", ndim, "-d, got shape ", shape_str(t.shape()));
}

Tensor checked_key_mask(const Tensor& key_mask, int64_t B, int64_t S, const char* op) {
  if (!key_mask.defined()) return key_mask;
  KOTOBA_CHECK(key_mask.dtype() == DType::i32 && key_mask.shape() == Shape({B, S}), op,
               ": key_mask must be i32 of shape ", shape_str({B, S}), ", got ", dtype_name(key_mask.dtype()), " ",
               shape_str(key_mask.shape()));
  return key_mask.contiguous();
}

// segment_ids (B, T) i32 for self-attention over packed sequences (T == S), or undefined.
Tensor checked_segment_ids(const Tensor& segment_ids, int64_t B, int64_t T, int64_t S, const char* op) {
  if (!segment_ids.defined()) return segment_ids;
  KOTOBA_CHECK(T == S, op, ": segment_ids are for self-attention over packed sequences (q_len == kv_len), got ",
               T, " queries against ", S, " keys");
  KOTOBA_CHECK(segment_ids.dtype() == DType::i32 && segment_ids.shape() == Shape({B, T}), op,
               ": segment_ids must be i32 of shape ", shape_str({B, T}), ", got ", dtype_name(segment_ids.dtype()),
               " ", shape_str(segment_ids.shape()));
  return segment_ids.contiguous();
}

const int32_t* i32_or_null(const Tensor& t) { return t.defined() ? static_cast<const int32_t*>(t.raw()) : nullptr; }

// ---- attention through matrix products ----

std::atomic<int> g_algorithm{-1};  // -1: not read from the environment yet

AttentionAlgorithm algorithm_from_environment() {
  const char* env = std::getenv("KOTOBA_ATTENTION");
  if (!env || !*env) return AttentionAlgorithm::automatic;
  const std::string name(env);
  if (name == "fused") return AttentionAlgorithm::fused;
  if (name == "matmul") return AttentionAlgorithm::matmul;
  if (name == "automatic") return AttentionAlgorithm::automatic;
  throw Error(detail::concat("KOTOBA_ATTENTION: expected fused, matmul or automatic, got \"", name, "\""));
}

// Whether this call runs as matrix products (see AttentionAlgorithm in ops/ops.h).
bool use_matmul(const AttentionForwardArgs& a, Device device) {
  if (a.key_mask || a.window > 0 || a.segment_ids) return false;
  const AttentionAlgorithm algorithm = attention_algorithm();
  if (algorithm != AttentionAlgorithm::automatic) return algorithm == AttentionAlgorithm::matmul;
  const double bytes = double(a.batch * a.heads) * double(a.q_len * a.kv_len) * double(4 + dtype_bytes(a.dtype, 1));
  return device != Device::cpu && a.q_len >= 128 && bytes <= double(int64_t(4) << 30);
}

// Calls body(b, kv_head, first query head, heads) once per gemm: per batch entry one batched
// call over all heads when every query head has its own kv head, else one per kv-head group.
template <typename Body>
void for_head_groups(int64_t B, int64_t H, int64_t Hkv, Body body) {
  const int64_t G = H / Hkv;
  for (int64_t b = 0; b < B; ++b) {
    if (G == 1) {
      body(b, int64_t(0), int64_t(0), H);
    } else {
      for (int64_t g = 0; g < Hkv; ++g) body(b, g, g * G, G);
    }
  }
}

// scores (B, H, T, S) f32 = scale q k^T; P = the masked softmax in the operands' dtype; out = P v.
// Returns P for the backward.
Tensor matmul_attention_forward(const AttentionForwardArgs& a, Device device) {
  const int64_t B = a.batch, H = a.heads, Hkv = a.kv_heads, T = a.q_len, S = a.kv_len, D = a.head_dim;
  const bool shared_kv = H != Hkv;  // a group's query heads read one kv head: stride 0 over the batch
  const DType dt = a.dtype;
  Tensor probs = Tensor::empty({B, H, T, S}, dt, device);
  if (probs.numel() == 0) return probs;
  {
    Tensor scores = Tensor::empty({B, H, T, S}, DType::f32, device);
    for_head_groups(B, H, Hkv, [&](int64_t b, int64_t g, int64_t h0, int64_t heads) {
      GemmArgs qk{false, true, T, S, D, a.scale, offset(a.q, b * a.q_strides.batch + h0 * a.q_strides.head, dt),
                              a.q_strides.token, a.q_strides.head,
                              offset(a.k, b * a.k_strides.batch + g * a.k_strides.head, dt), a.k_strides.token,
                              shared_kv ? 0 : a.k_strides.head, 0.0f, scores.data<float>() + (b * H + h0) * T * S, S,
                              T * S, heads, dt, DType::f32};
      KOTOBA_DISPATCH(device, gemm, qk);
    });
    AttentionSoftmaxArgs sm{scores.data<float>(), probs.raw(), B * H * T, S, T, a.causal, dt};
    KOTOBA_DISPATCH(device, attention_softmax, sm);
  }
  for_head_groups(B, H, Hkv, [&](int64_t b, int64_t g, int64_t h0, int64_t heads) {
    GemmArgs pv{false, false, T, D, S, 1.0f, offset(probs.raw(), (b * H + h0) * T * S, dt), S, T * S,
                            offset(a.v, b * a.v_strides.batch + g * a.v_strides.head, dt), a.v_strides.token,
                            shared_kv ? 0 : a.v_strides.head, 0.0f,
                            offset(a.out, b * a.out_strides.batch + h0 * a.out_strides.head, dt), a.out_strides.token,
                            a.out_strides.head, heads, dt, dt};
    KOTOBA_DISPATCH(device, gemm, pv);
  });
  return probs;
}

// From P: dV = P^T dO, dS = P (dP - rowsum(dP P)) with dP = dO V^T, dQ = scale dS K,
// dK = scale dS^T Q. A kv head shared by a group sums its query heads' terms (one gemm each,
// adding). Written (=) unless a.accumulate, as the fused kernel.
void matmul_attention_backward(const AttentionBackwardArgs& a, const Tensor& probs, Device device) {
  const int64_t B = a.batch, H = a.heads, Hkv = a.kv_heads, T = a.q_len, S = a.kv_len, D = a.head_dim;
  const int64_t G = H / Hkv;
  const bool shared_kv = G > 1;
  const DType dt = a.dtype;
  const float beta = a.accumulate ? 1.0f : 0.0f;
  if (probs.numel() == 0) return;
  const void* P = probs.raw();
  // dV, and later dK: (S, D) per kv head = sum over its query heads of X^T (S, T) Y (T, D)
  auto kv_gradient = [&](void* dst, const Strides4& dst_strides, const void* x, float alpha, const void* y,
                         const Strides4& y_strides) {
    for (int64_t b = 0; b < B; ++b) {
      if (!shared_kv) {
        GemmArgs g{true, false, S, D, T, alpha, offset(x, b * H * T * S, dt), S, T * S,
                               offset(y, b * y_strides.batch, dt), y_strides.token, y_strides.head, beta,
                               offset(dst, b * dst_strides.batch, dt), dst_strides.token, dst_strides.head, H, dt, dt};
        KOTOBA_DISPATCH(device, gemm, g);
        continue;
      }
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / G;
        GemmArgs one{true, false, S, D, T, alpha, offset(x, (b * H + h) * T * S, dt), S, 0,
                                 offset(y, b * y_strides.batch + h * y_strides.head, dt), y_strides.token, 0,
                                 (h % G == 0) ? beta : 1.0f,
                                 offset(dst, b * dst_strides.batch + g * dst_strides.head, dt), dst_strides.token, 0, 1,
                                 dt, dt};
        KOTOBA_DISPATCH(device, gemm, one);
      }
    }
  };
  if (a.dv) kv_gradient(a.dv, a.dv_strides, P, 1.0f, a.dout, a.dout_strides);
  if (!a.dq && !a.dk) return;
  Tensor ds = Tensor::empty({B, H, T, S}, dt, device);
  for_head_groups(B, H, Hkv, [&](int64_t b, int64_t g, int64_t h0, int64_t heads) {
    GemmArgs dp{false, true, T, S, D, 1.0f,
                            offset(a.dout, b * a.dout_strides.batch + h0 * a.dout_strides.head, dt), a.dout_strides.token,
                            a.dout_strides.head, offset(a.v, b * a.v_strides.batch + g * a.v_strides.head, dt),
                            a.v_strides.token, shared_kv ? 0 : a.v_strides.head, 0.0f,
                            offset(ds.raw(), (b * H + h0) * T * S, dt), S, T * S, heads, dt, dt};
    KOTOBA_DISPATCH(device, gemm, dp);
  });
  SoftmaxBackwardArgs sb{P, ds.raw(), ds.raw(), B * H * T, S, false, dt};  // in place: each element read, then written
  KOTOBA_DISPATCH(device, softmax_backward, sb);
  if (a.dq)
    for_head_groups(B, H, Hkv, [&](int64_t b, int64_t g, int64_t h0, int64_t heads) {
      GemmArgs dq{false, false, T, D, S, a.scale, offset(ds.raw(), (b * H + h0) * T * S, dt), S, T * S,
                              offset(a.k, b * a.k_strides.batch + g * a.k_strides.head, dt), a.k_strides.token,
                              shared_kv ? 0 : a.k_strides.head, beta,
                              offset(a.dq, b * a.dq_strides.batch + h0 * a.dq_strides.head, dt), a.dq_strides.token,
                              a.dq_strides.head, heads, dt, dt};
      KOTOBA_DISPATCH(device, gemm, dq);
    });
  if (a.dk) kv_gradient(a.dk, a.dk_strides, ds.raw(), a.scale, a.q, a.q_strides);
}

// What a forward keeps for its backward: the fused kernel lse (B, H, T), the matmul form P
// (B, H, T, S); the other is undefined.
struct AttentionSaved {
  Tensor lse, probs;
};

// Runs the forward of `a` (whose lse field it fills) in the form use_matmul picks.
AttentionSaved run_attention_forward(AttentionForwardArgs a, Device device) {
  if (use_matmul(a, device)) return {Tensor(), matmul_attention_forward(a, device)};
  Tensor lse = Tensor::empty({a.batch, a.heads, a.q_len}, DType::f32, device);
  a.lse = static_cast<float*>(lse.raw());
  KOTOBA_DISPATCH(device, attention_forward, a);
  return {lse, Tensor()};
}

}  // namespace

void set_attention_algorithm(AttentionAlgorithm algorithm) { g_algorithm = int(algorithm); }

AttentionAlgorithm attention_algorithm() {
  int value = g_algorithm.load();
  if (value < 0) {
    value = int(algorithm_from_environment());
    g_algorithm = value;
  }
  return AttentionAlgorithm(value);
}

// q (B, H, T, D), k/v (B, Hkv, S, D) -> out (B, H, T, D); lse (B, H, T) f32 saved for the backward.
Tensor scaled_dot_product_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal,
                                    const Tensor& key_mask_in, float scale, int64_t window,
                                    const Tensor& segment_ids_in) {
  const char* op = "scaled_dot_product_attention";
  check_attention_input(q_in, op, "q", 4);
  check_attention_input(k_in, op, "k", 4);
  check_attention_input(v_in, op, "v", 4);
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.size(1), S = k_in.size(2);
  KOTOBA_CHECK(k_in.shape() == v_in.shape() && k_in.size(0) == B && k_in.size(3) == D && Hkv > 0 && H % Hkv == 0, op,
               ": expected q (B, H, T, D) and k, v (B, Hkv, S, D) with H % Hkv == 0, got q ", shape_str(q_in.shape()),
               ", k ", shape_str(k_in.shape()), ", v ", shape_str(v_in.shape()));
  KOTOBA_CHECK(q_in.dtype() == k_in.dtype() && q_in.dtype() == v_in.dtype() && q_in.device() == k_in.device() &&
                   q_in.device() == v_in.device(),
               op, ": q, k and v must share dtype and device");
  Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  Tensor key_mask = checked_key_mask(key_mask_in, B, S, op);
  Tensor segment_ids = checked_segment_ids(segment_ids_in, B, T, S, op);
  KOTOBA_CHECK(!segment_ids.defined() || segment_ids.device() == q.device(), op,
               ": segment_ids must be on q's device");
  KOTOBA_CHECK(window >= 0 && (window == 0 || causal), op, ": a sliding window must be >= 0 and needs causal, got ",
               window, causal ? "" : " without causal");
  if (std::isnan(scale)) scale = 1.0f / std::sqrt(float(D));
  const DType dt = q.dtype();
  Tensor out = Tensor::empty({B, H, T, D}, dt, q.device());
  AttentionForwardArgs fa{q.raw(), k.raw(), v.raw(), out.raw(), nullptr,
                          strides4(q), strides4(k), strides4(v), strides4(out),
                          key_mask.defined() ? static_cast<const int32_t*>(key_mask.raw()) : nullptr,
                          B, H, Hkv, T, S, D, scale, causal, dt, window, i32_or_null(segment_ids)};
  const AttentionSaved saved = run_attention_forward(fa, q.device());
  const Tensor lse = saved.lse, probs = saved.probs;

  auto q_meta = q_in.autograd_meta(), k_meta = k_in.autograd_meta(), v_meta = v_in.autograd_meta();
  // Recomputes the scores tile by tile from q, k and lse (see ops/cpu/attention.cpp).
  return record(op, out, {&q_in, &k_in, &v_in},
                [q, k, v, out, lse, probs, key_mask, segment_ids, q_meta, k_meta, v_meta, B, H, Hkv, T, S, D, scale,
                 causal, window](const Tensor& grad_in) {
                  Tensor dout = last_dim_contiguous(grad_in);
                  const DType dt = q.dtype();
                  GradTarget targets[3] = {grad_target(q_meta, q.shape(), dt, q.device()),
                                           grad_target(k_meta, k.shape(), dt, q.device()),
                                           grad_target(v_meta, v.shape(), dt, q.device())};
                  // The kernel has one accumulate flag: when the targets disagree, the ones that
                  // accumulate receive a fresh gradient that is then added.
                  bool any_acc = false, any_fresh = false;
                  for (auto& t : targets)
                    if (t) (t.accumulate ? any_acc : any_fresh) = true;
                  if (!any_acc && !any_fresh) return;
                  const bool mixed = any_acc && any_fresh;
                  Tensor write[3];
                  for (int i = 0; i < 3; ++i)
                    if (targets[i])
                      write[i] = (mixed && targets[i].accumulate)
                                     ? Tensor::empty(targets[i].tensor.shape(), dt, q.device())
                                     : targets[i].tensor;
                  auto strides_or = [&](const Tensor& t, const Tensor& like) { return strides4(t.defined() ? t : like); };
                  AttentionBackwardArgs ba{q.raw(), k.raw(), v.raw(), out.raw(),
                                           lse.defined() ? static_cast<const float*>(lse.raw()) : nullptr, dout.raw(),
                                           write[0].defined() ? write[0].raw() : nullptr,
                                           write[1].defined() ? write[1].raw() : nullptr,
                                           write[2].defined() ? write[2].raw() : nullptr,
                                           strides4(q), strides4(k), strides4(v), strides4(out), strides4(dout),
                                           strides_or(write[0], q), strides_or(write[1], k), strides_or(write[2], v),
                                           key_mask.defined() ? static_cast<const int32_t*>(key_mask.raw()) : nullptr,
                                           B, H, Hkv, T, S, D, scale, causal, any_acc && !mixed, dt, window,
                                           i32_or_null(segment_ids)};
                  if (probs.defined())
                    matmul_attention_backward(ba, probs, q.device());
                  else
                    KOTOBA_DISPATCH(q.device(), attention_backward, ba);
                  for (int i = 0; i < 3; ++i)
                    if (targets[i] && mixed && targets[i].accumulate) {
                      AxpbyArgs add{write[i].raw(), targets[i].tensor.raw(), write[i].numel(), 1.0f, 1.0f, dt};
                      KOTOBA_DISPATCH(q.device(), axpby, add);
                    }
                });
}

// qkv (B, T, 3C) = [q | k | v], n_head heads of D = C / n_head -> out (B, T, C). The heads are
// addressed through strides (batch T*3C, head D, token 3C), so nothing is transposed or copied.
Tensor attention_packed_qkv(const Tensor& qkv_in, int64_t n_head, bool causal, const Tensor& key_mask_in,
                            const Tensor& segment_ids_in) {
  const char* op = "attention_packed_qkv";
  check_attention_input(qkv_in, op, "qkv", 3);
  const int64_t B = qkv_in.size(0), T = qkv_in.size(1), C3 = qkv_in.size(2);
  KOTOBA_CHECK(n_head > 0 && C3 % (3 * n_head) == 0, op, ": qkv (B, T, 3C) needs a last dim divisible by 3 * n_head = ",
               3 * n_head, ", got ", shape_str(qkv_in.shape()));
  const int64_t C = C3 / 3, D = C / n_head, H = n_head;
  Tensor qkv = last_dim_contiguous(qkv_in);
  Tensor key_mask = checked_key_mask(key_mask_in, B, T, op);
  Tensor segment_ids = checked_segment_ids(segment_ids_in, B, T, T, op);
  KOTOBA_CHECK(!segment_ids.defined() || segment_ids.device() == qkv.device(), op,
               ": segment_ids must be on qkv's device");
  const float scale = 1.0f / std::sqrt(float(D));
  const DType dt = qkv.dtype();
  Tensor out = Tensor::empty({B, T, C}, dt, qkv.device());
  const Strides4 in_strides{qkv.strides()[0], D, qkv.strides()[1]};
  const Strides4 out_strides{T * C, D, C};
  AttentionForwardArgs fa{at(qkv, 0), at(qkv, C), at(qkv, 2 * C), out.raw(), nullptr,
                          in_strides, in_strides, in_strides, out_strides,
                          key_mask.defined() ? static_cast<const int32_t*>(key_mask.raw()) : nullptr,
                          B, H, H, T, T, D, scale, causal, dt, 0, i32_or_null(segment_ids)};
  const AttentionSaved saved = run_attention_forward(fa, qkv.device());
  const Tensor lse = saved.lse, probs = saved.probs;

  auto qkv_meta = qkv_in.autograd_meta();
  // The gradients of q, k and v land side by side in the (B, T, 3C) gradient of qkv.
  return record(op, out, {&qkv_in},
                [qkv, out, lse, probs, key_mask, segment_ids, qkv_meta, in_strides, out_strides, B, H, T, C, D, scale,
                 causal](const Tensor& grad_in) {
                  GradTarget dqkv = grad_target(qkv_meta, qkv.shape(), qkv.dtype(), qkv.device());
                  if (!dqkv) return;
                  Tensor dout = last_dim_contiguous(grad_in);
                  const Strides4 dout_strides{dout.strides()[0], D, dout.strides()[1]};
                  const Tensor& g = dqkv.tensor;
                  const Strides4 g_strides{g.strides()[0], D, g.strides()[1]};
                  AttentionBackwardArgs ba{at(qkv, 0), at(qkv, C), at(qkv, 2 * C), out.raw(),
                                           lse.defined() ? static_cast<const float*>(lse.raw()) : nullptr, dout.raw(),
                                           at(g, 0), at(g, C), at(g, 2 * C),
                                           in_strides, in_strides, in_strides, out_strides, dout_strides,
                                           g_strides, g_strides, g_strides,
                                           key_mask.defined() ? static_cast<const int32_t*>(key_mask.raw()) : nullptr,
                                           B, H, H, T, T, D, scale, causal, dqkv.accumulate, qkv.dtype(), 0,
                                           i32_or_null(segment_ids)};
                  if (probs.defined())
                    matmul_attention_backward(ba, probs, qkv.device());
                  else
                    KOTOBA_DISPATCH(qkv.device(), attention_backward, ba);
                });
}

}  // namespace kotoba
