// Matrix products: matmul (batched, with a shared 2-D right operand) and linear, forward and
// backward, each direction as one strided-batched gemm call wherever the layout allows.
#include <cstring>

#include "ops/backend.h"
#include "ops/ops.h"

namespace kotoba {
namespace {

// A (..., R, Cc) tensor as a gemm operand: matrices `batch_stride` apart, each stored
// row-major with row stride `ld`, or stored transposed (trans) when its columns are contiguous
// the other way round (e.g. a transpose() view), so transposed views need no copy.
struct MatView {
  const void* data = nullptr;
  bool trans = false;
  int64_t ld = 0, batch_stride = 0;
};

// Collapses the leading dims of `t` (ndim >= 2) into one batch stride; false when they do not
// collapse (the caller then copies).
bool batch_stride_of(const Tensor& t, int64_t& stride) {
  const int nd = t.ndim();
  int64_t expected = -1;
  stride = 0;
  for (int d = nd - 3; d >= 0; --d) {
    if (t.shape()[d] == 1) continue;
    if (expected < 0) {
      stride = t.strides()[d];
      expected = stride * t.shape()[d];
    } else {
      if (t.strides()[d] != expected) return false;
      expected *= t.shape()[d];
    }
  }
  return true;
}

bool mat_view(const Tensor& t, MatView& v) {
  const int nd = t.ndim();
  const int64_t rows = t.shape()[nd - 2], cols = t.shape()[nd - 1];
  const int64_t sr = t.strides()[nd - 2], sc = t.strides()[nd - 1];
  if (!batch_stride_of(t, v.batch_stride)) return false;
  v.data = t.raw();
  if ((sc == 1 || cols == 1) && (rows == 1 || sr >= cols)) {
    v.trans = false;
    v.ld = rows == 1 ? (cols > 0 ? cols : 1) : sr;
    return v.ld >= 1;
  }
  if ((sr == 1 || rows == 1) && (cols == 1 || sc >= rows)) {
    v.trans = true;
    v.ld = cols == 1 ? (rows > 0 ? rows : 1) : sc;
    return v.ld >= 1;
  }
  return false;
}

// The view of `t`, copying it to contiguous memory first when its layout is not expressible.
MatView mat_view_or_copy(Tensor& t) {
  MatView v;
  if (!mat_view(t, v)) {
    t = t.contiguous();
    mat_view(t, v);
  }
  return v;
}

// x (..., in) as `rows` rows of `in` elements, `ld` apart; false when the leading dims do not
// collapse into one row stride.
bool rows_view(const Tensor& x, int64_t& ld) {
  const int nd = x.ndim();
  const int64_t in = x.shape()[nd - 1];
  if (nd == 1) {
    ld = in > 0 ? in : 1;
    return x.strides()[0] == 1 || in <= 1;
  }
  if (x.strides()[nd - 1] != 1 && in > 1) return false;
  ld = -1;
  int64_t expected = -1;
  for (int d = nd - 2; d >= 0; --d) {
    if (x.shape()[d] == 1) continue;
    if (expected < 0) {
      ld = x.strides()[d];
      expected = ld * x.shape()[d];
    } else {
      if (x.strides()[d] != expected) return false;
      expected *= x.shape()[d];
    }
  }
  if (ld < 0) ld = in > 0 ? in : 1;  // a single row
  return ld >= in && ld >= 1;
}

void check_float_tensor(const Tensor& t, const char* op, const char* name) {
  KOTOBA_CHECK(t.defined(), op, ": ", name, " is undefined");
  KOTOBA_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op, ": ", name, " must be f32 or bf16, got ",
               dtype_name(t.dtype()), " with shape ", shape_str(t.shape()));
}

GemmArgs make_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda, int64_t sa,
                   const void* b, int64_t ldb, int64_t sb, float beta, void* c, int64_t ldc, int64_t sc, int64_t batch,
                   DType dtype_ab, DType dtype_c) {
  return GemmArgs{ta, tb, m, n, k, 1.0f, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch, dtype_ab, dtype_c};
}

// A bf16 copy of an f32 master (weight or bias), outside the autograd graph: the mixed linear
// routes the gradient to the master itself.
Tensor bf16_copy(const Tensor& master) {
  Tensor src = master.is_contiguous() ? master : master.contiguous();
  Tensor out = Tensor::empty(src.shape(), DType::bf16, src.device());
  if (out.numel() > 0) {
    ConvertArgs args{src.raw(), src.dtype(), out.raw(), DType::bf16, out.numel(), false};
    KOTOBA_DISPATCH(src.device(), convert, args);
  }
  return out;
}

}  // namespace

// a (..., M, K) @ b (..., K, N) -> (..., M, N). b 2-D: shared by every batch entry; a 2-D
// with b batched: a shared. Otherwise the leading dims must be equal.
// Under autocast both operands are cast to bf16 first.
Tensor matmul(const Tensor& a_arg, const Tensor& b_arg) {
  check_float_tensor(a_arg, "matmul", "a");
  check_float_tensor(b_arg, "matmul", "b");
  const bool autocast = autocast_dtype() == DType::bf16;
  const Tensor a_in = autocast ? cast(a_arg, DType::bf16) : a_arg, b_in = autocast ? cast(b_arg, DType::bf16) : b_arg;
  KOTOBA_CHECK(a_in.ndim() >= 2 && b_in.ndim() >= 2, "matmul: expected a (..., M, K) and b (..., K, N), got a ",
               shape_str(a_in.shape()), " and b ", shape_str(b_in.shape()));
  KOTOBA_CHECK(a_in.dtype() == b_in.dtype() && a_in.device() == b_in.device(),
               "matmul: a and b must share dtype and device, got ", dtype_name(a_in.dtype()), " and ",
               dtype_name(b_in.dtype()));
  const int64_t M = a_in.size(-2), K = a_in.size(-1), N = b_in.size(-1);
  KOTOBA_CHECK(b_in.size(-2) == K, "matmul: inner dimensions differ: a ", shape_str(a_in.shape()), " and b ",
               shape_str(b_in.shape()));
  const Shape a_lead(a_in.shape().begin(), a_in.shape().end() - 2);
  const Shape b_lead(b_in.shape().begin(), b_in.shape().end() - 2);
  const bool b_shared = b_lead.empty(), a_shared = a_lead.empty() && !b_lead.empty();
  KOTOBA_CHECK(b_shared || a_shared || a_lead == b_lead, "matmul: batch dims must match (or one operand be 2-D), got a ",
               shape_str(a_in.shape()), " and b ", shape_str(b_in.shape()));
  const Shape& lead = a_shared ? b_lead : a_lead;
  const int64_t batch = shape_numel(lead);
  Shape out_shape = lead;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor a = a_in, b = b_in;
  MatView av = mat_view_or_copy(a), bv = mat_view_or_copy(b);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  if (out.numel() > 0) {
    // A shared b and a plain row-major a: fold the batch into M, one big gemm.
    const bool fold = b_shared && !av.trans && (batch == 1 || av.batch_stride == M * av.ld);
    GemmArgs g = fold ? make_gemm(av.trans, bv.trans, batch * M, N, K, av.data, av.ld, 0, bv.data, bv.ld, 0, 0.0f,
                                  out.raw(), N, 0, 1, a.dtype(), out.dtype())
                      : make_gemm(av.trans, bv.trans, M, N, K, av.data, av.ld, a_shared ? 0 : av.batch_stride, bv.data,
                                  bv.ld, b_shared ? 0 : bv.batch_stride, 0.0f, out.raw(), N, M * N, batch, a.dtype(),
                                  out.dtype());
    KOTOBA_DISPATCH(a.device(), gemm, g);
  }
  auto a_meta = a_in.autograd_meta(), b_meta = b_in.autograd_meta();
  // C = A B, so dA = dC B^T (M, K) and dB = A^T dC (K, N); a shared operand sums over the batch.
  return record("matmul", out, {&a_in, &b_in},
                [a, b, av, bv, a_meta, b_meta, a_shape = a_in.shape(), b_shape = b_in.shape(), M, N, K, batch, a_shared,
                 b_shared](const Tensor& grad_in) {
                  Tensor dc = grad_in.contiguous();
                  const DType dt = a.dtype();
                  if (GradTarget da = grad_target(a_meta, a_shape, dt, a.device())) {
                    const bool fold = b_shared;
                    if (fold || !a_shared) {
                      GemmArgs g = fold ? make_gemm(false, !bv.trans, batch * M, K, N, dc.raw(), N, 0, bv.data, bv.ld, 0,
                                                    da.accumulate ? 1.0f : 0.0f, da.tensor.raw(), K, 0, 1, dt, dt)
                                        : make_gemm(false, !bv.trans, M, K, N, dc.raw(), N, M * N, bv.data, bv.ld,
                                                    bv.batch_stride, da.accumulate ? 1.0f : 0.0f, da.tensor.raw(), K,
                                                    M * K, batch, dt, dt);
                      KOTOBA_DISPATCH(a.device(), gemm, g);
                    } else {  // a shared by the batch: sum the products one after another
                      const size_t esz = dtype_bytes(dt, 1);
                      for (int64_t i = 0; i < batch; ++i) {
                        GemmArgs g = make_gemm(false, !bv.trans, M, K, N, static_cast<const char*>(dc.raw()) + i * M * N * esz,
                                               N, 0, static_cast<const char*>(bv.data) + i * bv.batch_stride * esz, bv.ld,
                                               0, (da.accumulate || i > 0) ? 1.0f : 0.0f, da.tensor.raw(), K, 0, 1, dt, dt);
                        KOTOBA_DISPATCH(a.device(), gemm, g);
                      }
                    }
                  }
                  if (GradTarget db = grad_target(b_meta, b_shape, dt, b.device())) {
                    const bool fold_a = b_shared && !av.trans && (batch == 1 || av.batch_stride == M * av.ld);
                    if (b_shared && fold_a) {  // dB (K, N) = A^T (K, batch*M) dC (batch*M, N)
                      GemmArgs g = make_gemm(true, false, K, N, batch * M, av.data, av.ld, 0, dc.raw(), N, 0,
                                             db.accumulate ? 1.0f : 0.0f, db.tensor.raw(), N, 0, 1, dt, dt);
                      KOTOBA_DISPATCH(b.device(), gemm, g);
                    } else if (b_shared) {
                      const size_t esz = dtype_bytes(dt, 1);
                      for (int64_t i = 0; i < batch; ++i) {
                        GemmArgs g = make_gemm(!av.trans, false, K, N, M,
                                               static_cast<const char*>(av.data) + i * av.batch_stride * esz, av.ld, 0,
                                               static_cast<const char*>(dc.raw()) + i * M * N * esz, N, 0,
                                               (db.accumulate || i > 0) ? 1.0f : 0.0f, db.tensor.raw(), N, 0, 1, dt, dt);
                        KOTOBA_DISPATCH(b.device(), gemm, g);
                      }
                    } else {
                      GemmArgs g = make_gemm(!av.trans, false, K, N, M, av.data, av.ld, a_shared ? 0 : av.batch_stride,
                                             dc.raw(), N, M * N, db.accumulate ? 1.0f : 0.0f, db.tensor.raw(), N, K * N,
                                             batch, dt, dt);
                      KOTOBA_DISPATCH(b.device(), gemm, g);
                    }
                  }
                });
}

// x (..., in) @ weight (out, in)^T + bias (out) -> (..., out): one gemm over all rows.
// Mixed (x bf16, weight and bias f32 masters, e.g. under autocast): the product runs on bf16
// copies of weight and bias, and their gradients are accumulated in f32 by the gemm itself
// (db as ones^T dy), so no bf16 rounding touches the masters' gradients.
Tensor linear(const Tensor& x_arg, const Tensor& weight_in, const Tensor& bias_in) {
  check_float_tensor(x_arg, "linear", "x");
  check_float_tensor(weight_in, "linear", "weight");
  const Tensor x_in = autocast_dtype() == DType::bf16 ? cast(x_arg, DType::bf16) : x_arg;
  KOTOBA_CHECK(x_in.ndim() >= 1 && weight_in.ndim() == 2 && x_in.size(-1) == weight_in.size(1),
               "linear: expected x (..., in) and weight (out, in), got x ", shape_str(x_in.shape()), " and weight ",
               shape_str(weight_in.shape()));
  const bool mixed = x_in.dtype() == DType::bf16 && weight_in.dtype() == DType::f32;
  KOTOBA_CHECK((x_in.dtype() == weight_in.dtype() || mixed) && x_in.device() == weight_in.device(),
               "linear: x and weight must share dtype and device (or be a bf16 x with an f32 weight), got x ",
               dtype_name(x_in.dtype()), " on ", device_name(x_in.device()), " and weight ",
               dtype_name(weight_in.dtype()), " on ", device_name(weight_in.device()));
  const int64_t in = weight_in.size(1), out_features = weight_in.size(0);
  if (bias_in.defined()) {
    KOTOBA_CHECK(bias_in.ndim() == 1 && bias_in.size(0) == out_features, "linear: bias must be (", out_features,
                 "), got ", shape_str(bias_in.shape()), " for weight ", shape_str(weight_in.shape()));
    KOTOBA_CHECK(bias_in.dtype() == weight_in.dtype() && bias_in.device() == x_in.device(),
                 "linear: bias must share the dtype of the weight and the device of x, got ",
                 dtype_name(bias_in.dtype()), " on ", device_name(bias_in.device()));
  }
  Tensor x = x_in, w = mixed ? bf16_copy(weight_in) : weight_in;
  Tensor bias = !bias_in.defined() ? Tensor() : mixed ? bf16_copy(bias_in) : bias_in.contiguous();
  int64_t x_ld = 0;
  if (!rows_view(x, x_ld)) {
    x = x.contiguous();
    rows_view(x, x_ld);
  }
  MatView wv = mat_view_or_copy(w);
  const int64_t rows = in > 0 ? x.numel() / in : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(out_features);
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  const DType dt = x.dtype();
  if (out.numel() > 0) {
    // out (rows, out) = x (rows, in) @ W^T: W (out, in) row-major is op(B) = W^T
    GemmArgs g = make_gemm(false, !wv.trans, rows, out_features, in, x.raw(), x_ld, 0, wv.data, wv.ld, 0, 0.0f,
                           out.raw(), out_features, 0, 1, dt, dt);
    KOTOBA_DISPATCH(x.device(), gemm, g);
    if (bias.defined()) {
      BinaryArgs add{BinaryKind::add, out.raw(), bias.raw(), out.raw(), out.numel(), out_features, dt};
      KOTOBA_DISPATCH(x.device(), binary, add);
    }
  }
  auto x_meta = x_in.autograd_meta(), w_meta = weight_in.autograd_meta();
  auto b_meta = bias_in.defined() ? bias_in.autograd_meta() : std::shared_ptr<AutogradMeta>();
  // y = x W^T + b, so dx = dy W (rows, in), dW += dy^T x (out, in), db += sum over rows of dy.
  return record("linear", out, {&x_in, &weight_in, &bias_in},
                [x, w, wv, x_ld, x_meta, w_meta, b_meta, x_shape = x_in.shape(), w_shape = weight_in.shape(),
                 w_dtype = weight_in.dtype(), rows, in, out_features](const Tensor& grad_in) {
                  Tensor dy = grad_in.contiguous();
                  const DType dt = x.dtype();
                  if (GradTarget dx = grad_target(x_meta, x_shape, dt, x.device())) {
                    GemmArgs g = make_gemm(false, wv.trans, rows, in, out_features, dy.raw(), out_features, 0, wv.data,
                                           wv.ld, 0, dx.accumulate ? 1.0f : 0.0f, dx.tensor.raw(), in, 0, 1, dt, dt);
                    KOTOBA_DISPATCH(x.device(), gemm, g);
                  }
                  if (GradTarget dw = grad_target(w_meta, w_shape, w_dtype, w.device())) {
                    GemmArgs g = make_gemm(true, false, out_features, in, rows, dy.raw(), out_features, 0, x.raw(), x_ld,
                                           0, dw.accumulate ? 1.0f : 0.0f, dw.tensor.raw(), in, 0, 1, dt, w_dtype);
                    KOTOBA_DISPATCH(x.device(), gemm, g);
                  }
                  if (GradTarget db = grad_target(b_meta, Shape{out_features}, w_dtype, x.device())) {
                    if (w_dtype == dt) {
                      SumRowsArgs s{dy.raw(), db.tensor.raw(), rows, out_features, db.accumulate, dt};
                      KOTOBA_DISPATCH(x.device(), sum_rows, s);
                    } else {  // db (1, out) = ones (1, rows) @ dy (rows, out), accumulated in f32
                      Tensor ones = Tensor::full({rows}, 1.0f, dt, x.device());
                      GemmArgs g = make_gemm(false, false, 1, out_features, rows, ones.raw(), rows, 0, dy.raw(),
                                             out_features, 0, db.accumulate ? 1.0f : 0.0f, db.tensor.raw(),
                                             out_features, 0, 1, dt, w_dtype);
                      KOTOBA_DISPATCH(x.device(), gemm, g);
                    }
                  }
                });
}

}  // namespace kotoba
