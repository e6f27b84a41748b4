// Helpers shared by the op wrappers: checks, strided copies and gradient reduction over
// broadcast dims. Host loops here are the rare paths; the common ones call the kernels.
#include "ops/op_util.h"

#include <omp.h>

#include <cstring>
#include <vector>

namespace kotoba::op_util {

void check_defined(const Tensor& t, const char* op, const char* arg) {
  KOTOBA_CHECK(t.defined(), op, ": ", arg, " is an undefined tensor");
}

void check_float(const Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  KOTOBA_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op, ": ", arg, " must be f32 or bf16, got ",
               dtype_name(t.dtype()), " of shape ", shape_str(t.shape()));
}

void check_same_dtype_device(const Tensor& a, const Tensor& b, const char* op, const char* a_name, const char* b_name) {
  KOTOBA_CHECK(a.dtype() == b.dtype(), op, ": ", a_name, " ", shape_str(a.shape()), " is ", dtype_name(a.dtype()),
               " but ", b_name, " ", shape_str(b.shape()), " is ", dtype_name(b.dtype()));
  KOTOBA_CHECK(a.device() == b.device(), op, ": ", a_name, " is on ", device_name(a.device()), " but ", b_name,
               " is on ", device_name(b.device()));
}

namespace {

inline float load(const void* p, DType t, int64_t i) {
  return t == DType::f32 ? static_cast<const float*>(p)[i] : bf16_to_f32(static_cast<const bf16*>(p)[i]);
}
inline void store(void* p, DType t, int64_t i, float v) {
  if (t == DType::f32)
    static_cast<float*>(p)[i] = v;
  else
    static_cast<bf16*>(p)[i] = f32_to_bf16(v);
}

// Element offset of row `r` (an index over all dims but the last) for the given strides.
inline int64_t row_offset(int64_t r, const Shape& shape, const Shape& strides) {
  int64_t offset = 0;
  for (int d = int(shape.size()) - 2; d >= 0; --d) {
    offset += (r % shape[d]) * strides[d];
    r /= shape[d];
  }
  return offset;
}

}  // namespace

void zero(const Tensor& t) {
  if (t.numel() == 0) return;
  KOTOBA_CHECK(t.is_contiguous(), "zero: tensor of shape ", shape_str(t.shape()), " is not contiguous");
  FillArgs args{t.raw(), t.numel(), 0.0f, t.dtype()};
  KOTOBA_DISPATCH(t.device(), fill, args);
}

void copy_into(const Tensor& dst, const Tensor& src, bool accumulate) {
  KOTOBA_CHECK(dst.shape() == src.shape(), "copy: source shape ", shape_str(src.shape()),
               " does not match destination ", shape_str(dst.shape()));
  check_float(dst, "copy", "destination");
  check_float(src, "copy", "source");
  const int64_t n = dst.numel();
  if (n == 0) return;
  const DType dt = dst.dtype(), st = src.dtype();
  if (dst.is_contiguous() && src.is_contiguous() && dt != st) {
    ConvertArgs args{src.raw(), st, dst.raw(), dt, n, accumulate};
    KOTOBA_DISPATCH(dst.device(), convert, args);
    return;
  }
  if (dst.is_contiguous() && src.is_contiguous()) {
    if (accumulate) {
      BinaryArgs args{BinaryKind::add, dst.raw(), src.raw(), dst.raw(), n, n, dt};
      KOTOBA_DISPATCH(dst.device(), binary, args);
    } else {
      AxpbyArgs args{src.raw(), dst.raw(), n, 1.0f, 0.0f, dt};
      KOTOBA_DISPATCH(dst.device(), axpby, args);
    }
    return;
  }
  KOTOBA_CHECK(dst.device() == Device::cpu && src.device() == Device::cpu,
               "copy: strided copies run on the cpu only");
  const Shape& shape = dst.shape();
  const int nd = int(shape.size());
  const void* s = src.raw();
  void* d = dst.raw();
  if (nd == 0) {
    store(d, dt, 0, load(s, st, 0) + (accumulate ? load(d, dt, 0) : 0.0f));
    return;
  }
  const int64_t inner = shape[nd - 1], rows = n / inner;
  const int64_t s_inner = src.strides()[nd - 1], d_inner = dst.strides()[nd - 1];
  const Shape& s_strides = src.strides();
  const Shape& d_strides = dst.strides();
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 15) && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t so = row_offset(r, shape, s_strides), doff = row_offset(r, shape, d_strides);
    if (dt == DType::f32 && st == DType::f32 && s_inner == 1 && d_inner == 1) {
      const float* sp = static_cast<const float*>(s) + so;
      float* dp = static_cast<float*>(d) + doff;
      if (accumulate)
        for (int64_t j = 0; j < inner; ++j) dp[j] += sp[j];
      else
        std::memcpy(dp, sp, size_t(inner) * sizeof(float));
      continue;
    }
    for (int64_t j = 0; j < inner; ++j) {
      float v = load(s, st, so + j * s_inner);
      if (accumulate) v += load(d, dt, doff + j * d_inner);
      store(d, dt, doff + j * d_inner, v);
    }
  }
}

Tensor as_contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  if (x.dtype() != DType::f32 && x.dtype() != DType::bf16) return x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  copy_into(out, x, false);
  return out;
}

bool is_row_suffix(const Shape& small, const Shape& big) {
  size_t lead = 0;
  while (lead < small.size() && small[lead] == 1) ++lead;
  const size_t k = small.size() - lead;
  if (k > big.size()) return false;
  for (size_t i = 0; i < k; ++i)
    if (small[lead + i] != big[big.size() - k + i]) return false;
  return true;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t nd = a.size() > b.size() ? a.size() : b.size();
  Shape out(nd);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t da = i < nd - a.size() ? 1 : a[i - (nd - a.size())];
    const int64_t db = i < nd - b.size() ? 1 : b[i - (nd - b.size())];
    KOTOBA_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
                 " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor expand_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return as_contiguous(x);
  const size_t nd = shape.size(), xd = x.shape().size();
  KOTOBA_CHECK(xd <= nd, "expand: shape ", shape_str(x.shape()), " cannot be broadcast to ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>(x.impl());
  impl->autograd = nullptr;
  impl->shape = shape;
  impl->strides.assign(nd, 0);
  for (size_t i = 0; i < xd; ++i) {
    const int64_t dim = x.shape()[i];
    const size_t o = nd - xd + i;
    KOTOBA_CHECK(dim == shape[o] || dim == 1, "expand: shape ", shape_str(x.shape()), " cannot be broadcast to ",
                 shape_str(shape));
    impl->strides[o] = dim == 1 ? 0 : x.strides()[i];
  }
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  copy_into(out, Tensor(std::move(impl)), false);
  return out;
}

void reduce_grad_into(const GradTarget& target, const Tensor& g_in, float alpha) {
  if (!target) return;
  const Tensor& t = target.tensor;
  const bool acc = target.accumulate;
  Tensor g = as_contiguous(g_in);
  KOTOBA_CHECK(g.dtype() == t.dtype(), "backward: gradient dtype ", dtype_name(g.dtype()),
               " does not match the input's ", dtype_name(t.dtype()));
  if (t.numel() == 0) return;
  if (g.numel() == 0) {
    if (!acc) zero(t);
    return;
  }
  if (t.shape() == g.shape()) {
    AxpbyArgs args{g.raw(), t.raw(), t.numel(), alpha, acc ? 1.0f : 0.0f, t.dtype()};
    KOTOBA_DISPATCH(t.device(), axpby, args);
    return;
  }
  if (is_row_suffix(t.shape(), g.shape())) {
    const int64_t inner = t.numel(), outer = g.numel() / inner;
    if (alpha == 1.0f) {
      SumRowsArgs args{g.raw(), t.raw(), outer, inner, acc, t.dtype()};
      KOTOBA_DISPATCH(t.device(), sum_rows, args);
    } else {
      Tensor sums = Tensor::empty({inner}, t.dtype(), t.device());
      SumRowsArgs args{g.raw(), sums.raw(), outer, inner, false, t.dtype()};
      KOTOBA_DISPATCH(t.device(), sum_rows, args);
      AxpbyArgs scale{sums.raw(), t.raw(), inner, alpha, acc ? 1.0f : 0.0f, t.dtype()};
      KOTOBA_DISPATCH(t.device(), axpby, scale);
    }
    return;
  }
  // General broadcast (e.g. (B, 1, C) against (B, T, C)): a plain host loop into f32 sums.
  KOTOBA_CHECK(t.device() == Device::cpu, "backward: general broadcast reduction runs on the cpu only");
  const Shape& gs = g.shape();
  const size_t nd = gs.size(), td = t.shape().size();
  KOTOBA_CHECK(td <= nd, "backward: gradient shape ", shape_str(gs), " does not broadcast from ", shape_str(t.shape()));
  Shape t_strides(nd, 0);
  {
    int64_t s = 1;
    for (size_t i = td; i-- > 0;) {
      const size_t o = nd - td + i;
      t_strides[o] = t.shape()[i] == 1 ? 0 : s;
      s *= t.shape()[i];
    }
  }
  std::vector<float> sums(size_t(t.numel()), 0.0f);
  const int64_t inner = gs[nd - 1], rows = g.numel() / inner;
  const void* gp = g.raw();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t to = row_offset(r, gs, t_strides);
    const int64_t ts = t_strides[nd - 1];
    for (int64_t j = 0; j < inner; ++j) sums[size_t(to + j * ts)] += load(gp, g.dtype(), r * inner + j);
  }
  void* tp = t.raw();
  for (int64_t i = 0; i < t.numel(); ++i) {
    float v = alpha * sums[size_t(i)];
    if (acc) v += load(tp, t.dtype(), i);
    store(tp, t.dtype(), i, v);
  }
}

}  // namespace kotoba::op_util
