// Cross-backend test: every kernel of ops/op_list.h runs on the CUDA backend and on the CPU
// backend with the same fresh random inputs, and the outputs are compared (atol + rtol |ref|).
// One test per kernel, generated from the Kernel enum: a kernel without a case here fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/rng.h"
#include "ops/backend.h"

namespace kotoba {
namespace {

struct Tol {
  float atol, rtol;
};
// bf16 storage rounds every output to 8 significant bits, so one rounding step apart is
// about 0.4% of the value.
Tol tol_for(DType dt, Tol f32 = {1e-5f, 1e-5f}, Tol bf = {1e-2f, 1e-2f}) { return dt == DType::bf16 ? bf : f32; }

constexpr size_t kGuardBytes = 64;  // sentinel bytes after every device buffer
constexpr uint8_t kGuard = 0xA5;

const Backend& cpu() { return backend_for(Device::cpu); }
const Backend& gpu() { return backend_for(Device::cuda); }

// One operand: the same contents on the host (for the CPU run) and on the device (for the CUDA
// run), with a guard zone after the device copy to catch out-of-bounds writes.
class Buf {
 public:
  Buf(DType dtype, size_t n) : dtype_(dtype), n_(n), host_(dtype_bytes(dtype, n) + kGuardBytes, kGuard) {
    dev_bytes_ = host_.size();
    dev_ = device_allocate(Device::cuda, dev_bytes_);
  }
  ~Buf() { device_free(Device::cuda, dev_, dev_bytes_); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;

  DType dtype() const { return dtype_; }
  size_t size() const { return n_; }
  void* h() { return host_.data(); }
  void* d() { return dev_; }
  template <typename P> P* h_as() { return reinterpret_cast<P*>(host_.data()); }
  template <typename P> P* d_as() { return reinterpret_cast<P*>(dev_); }

  void set(const std::vector<float>& v) {
    for (size_t i = 0; i < n_; ++i) {
      if (dtype_ == DType::f32) reinterpret_cast<float*>(host_.data())[i] = v[i];
      else if (dtype_ == DType::bf16) reinterpret_cast<bf16*>(host_.data())[i] = f32_to_bf16(v[i]);
      else reinterpret_cast<int32_t*>(host_.data())[i] = int32_t(v[i]);
    }
    upload();
  }
  void upload() { gpu().copy_from_host(dev_, host_.data(), host_.size()); }

  std::vector<float> host_values() const { return decode(host_.data()); }
  std::vector<float> device_values() const {
    std::vector<uint8_t> back(host_.size());
    gpu().copy_to_host(back.data(), dev_, back.size());
    for (size_t i = back.size() - kGuardBytes; i < back.size(); ++i)
      if (back[i] != kGuard) {
        ADD_FAILURE() << "the CUDA kernel wrote past the end of a " << n_ << "-element buffer";
        break;
      }
    return decode(back.data());
  }

 private:
  std::vector<float> decode(const uint8_t* p) const {
    std::vector<float> out(n_);
    for (size_t i = 0; i < n_; ++i) {
      if (dtype_ == DType::f32) out[i] = reinterpret_cast<const float*>(p)[i];
      else if (dtype_ == DType::bf16) out[i] = bf16_to_f32(reinterpret_cast<const bf16*>(p)[i]);
      else out[i] = float(reinterpret_cast<const int32_t*>(p)[i]);
    }
    return out;
  }
  DType dtype_;
  size_t n_;
  std::vector<uint8_t> host_;
  void* dev_ = nullptr;
  size_t dev_bytes_ = 0;
};

struct Ctx {
  std::mt19937_64 rng;
  DType dt = DType::f32;
  std::string label;  // names the sub-case in failure messages

  std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  }
  std::vector<float> ints(size_t n, int lo, int hi) {  // [lo, hi]
    std::uniform_int_distribution<int> u(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = float(u(rng));
    return v;
  }
};

void expect_close(const Ctx& ctx, const std::string& what, const std::vector<float>& ref,
                  const std::vector<float>& got, Tol tol) {
  ASSERT_EQ(ref.size(), got.size());
  size_t bad = 0, first = 0;
  double worst = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float r = ref[i], g = got[i];
    bool ok;
    if (std::isnan(r) || std::isnan(g)) ok = std::isnan(r) && std::isnan(g);
    else if (std::isinf(r) || std::isinf(g)) ok = r == g;
    else {
      const double err = std::fabs(double(r) - double(g));
      ok = err <= tol.atol + tol.rtol * std::fabs(double(r));
      if (err > worst) worst = err;
    }
    if (!ok && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << ctx.label << " " << what << " (" << dtype_name(ctx.dt) << "): " << bad << " of "
                     << ref.size() << " elements differ; first at " << first << ": cpu " << ref[first] << " cuda "
                     << got[first] << "; max abs error " << worst << " (atol " << tol.atol << ", rtol " << tol.rtol
                     << ")";
}
void expect_close(const Ctx& ctx, const std::string& what, const Buf& ref_holder, Tol tol) {
  expect_close(ctx, what, ref_holder.host_values(), ref_holder.device_values(), tol);
}

// ---- cases ----

void case_embedding_forward(Ctx& c) {
  const int64_t V = 37, C = 67, N = 29;
  Buf ids(DType::i32, N), w(c.dt, V * C), out(c.dt, N * C);
  ids.set(c.ints(N, 0, V - 1));
  w.set(c.uniform(V * C, -1, 1));
  out.set(c.uniform(N * C, -1, 1));
  EmbeddingForwardArgs a{ids.h_as<int32_t>(), w.h(), out.h(), N, V, C, c.dt};
  cpu().embedding_forward(a);
  a = {ids.d_as<int32_t>(), w.d(), out.d(), N, V, C, c.dt};
  gpu().embedding_forward(a);
  expect_close(c, "out", out, {0, 0});
}

void case_embedding_backward(Ctx& c) {
  const int64_t V = 37, C = 67, N = 120;  // more tokens than rows: ids repeat
  Buf ids(DType::i32, N), dout(c.dt, N * C), dw(c.dt, V * C);
  ids.set(c.ints(N, 0, V - 1));
  dout.set(c.uniform(N * C, -1, 1));
  dw.set(c.uniform(V * C, -1, 1));
  EmbeddingBackwardArgs a{ids.h_as<int32_t>(), dout.h(), dw.h(), N, V, C, c.dt};
  cpu().embedding_backward(a);
  a = {ids.d_as<int32_t>(), dout.d(), dw.d(), N, V, C, c.dt};
  gpu().embedding_backward(a);
  expect_close(c, "dweight", dw, tol_for(c.dt, {1e-5f, 1e-5f}, {5e-2f, 2e-2f}));
}

void gemm_one(Ctx& c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t batch, float beta, DType dt_c,
              bool broadcast_b) {
  // Row strides padded past the logical width, batches spaced further still.
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K;
  const int64_t b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = N + 2;
  const int64_t sa = a_rows * lda + 7, sb = broadcast_b ? 0 : b_rows * ldb + 1, sc = M * ldc + 4;
  Buf A(c.dt, size_t(sa * batch)), B(c.dt, size_t(broadcast_b ? b_rows * ldb : sb * batch)), Cm(dt_c, size_t(sc * batch));
  A.set(c.uniform(A.size(), -1, 1));
  B.set(c.uniform(B.size(), -1, 1));
  Cm.set(c.uniform(Cm.size(), -1, 1));
  GemmArgs g{ta, tb, M, N, K, 0.75f, A.h(), lda, sa, B.h(), ldb, sb, beta, Cm.h(), ldc, sc, batch, c.dt, dt_c};
  cpu().gemm(g);
  g.a = A.d();
  g.b = B.d();
  g.c = Cm.d();
  gpu().gemm(g);
  const char* tf32 = std::getenv("KOTOBA_CUDA_TF32");
  Tol t = dt_c == DType::bf16 ? Tol{2e-2f, 1e-2f}
          : c.dt == DType::bf16 ? Tol{1e-3f, 1e-3f}
          : (tf32 && std::strcmp(tf32, "1") == 0) ? Tol{3e-2f, 1e-2f}
                                                 : Tol{2e-4f, 1e-4f};
  c.label = "gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " M=" + std::to_string(M) +
            " N=" + std::to_string(N) + " K=" + std::to_string(K) + " batch=" + std::to_string(batch) +
            " beta=" + std::to_string(beta) + " C " + std::string(dtype_name(dt_c)) +
            (broadcast_b ? " shared B" : "");
  // Compare only the logical elements (padding is untouched by both).
  auto ref = Cm.host_values(), got = Cm.device_values();
  std::vector<float> r, g2;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        r.push_back(ref[size_t(b * sc + i * ldc + j)]);
        g2.push_back(got[size_t(b * sc + i * ldc + j)]);
      }
  expect_close(c, "C", r, g2, t);
}

void case_gemm(Ctx& c) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) gemm_one(c, ta, tb, 37, 29, 71, 3, 0.5f, c.dt == DType::bf16 ? DType::f32 : c.dt, false);
  gemm_one(c, false, true, 64, 48, 128, 1, 0.0f, c.dt, false);
  gemm_one(c, false, false, 33, 17, 40, 4, 1.0f, c.dt, true);
  gemm_one(c, true, false, 5, 130, 9, 2, 0.0f, c.dt, false);
}

void case_binary(Ctx& c) {
  const int64_t outer = 23, inner = 97, n = outer * inner;
  for (BinaryKind kind : {BinaryKind::add, BinaryKind::sub, BinaryKind::mul, BinaryKind::div})
    for (int64_t period : {n, inner, int64_t(1)}) {
      Buf A(c.dt, n), B(c.dt, size_t(period)), O(c.dt, n);
      A.set(c.uniform(n, -2, 2));
      B.set(c.uniform(size_t(period), 0.5f, 2.0f));
      O.set(c.uniform(n, -1, 1));
      BinaryArgs a{kind, A.h(), B.h(), O.h(), n, period, c.dt};
      cpu().binary(a);
      a = {kind, A.d(), B.d(), O.d(), n, period, c.dt};
      gpu().binary(a);
      c.label = "binary kind=" + std::to_string(int(kind)) + " period=" + std::to_string(period);
      expect_close(c, "out", O, tol_for(c.dt, {1e-6f, 1e-6f}, {1e-6f, 8e-3f}));
    }
}

void case_axpby(Ctx& c) {
  const int64_t n = 10007;
  for (float beta : {0.0f, -0.5f}) {
    Buf X(c.dt, n), O(c.dt, n);
    X.set(c.uniform(n, -2, 2));
    O.set(c.uniform(n, -2, 2));
    AxpbyArgs a{X.h(), O.h(), n, 1.5f, beta, c.dt};
    cpu().axpby(a);
    a = {X.d(), O.d(), n, 1.5f, beta, c.dt};
    gpu().axpby(a);
    c.label = "axpby beta=" + std::to_string(beta);
    expect_close(c, "out", O, tol_for(c.dt, {1e-6f, 1e-6f}, {1e-6f, 8e-3f}));
  }
}

void case_sum_rows(Ctx& c) {
  for (auto [outer, inner] : {std::pair<int64_t, int64_t>{300, 45}, {5000, 3}, {7, 1000}})
    for (bool acc : {false, true}) {
      Buf X(c.dt, outer * inner), O(c.dt, inner);
      X.set(c.uniform(X.size(), -1, 1));
      O.set(c.uniform(O.size(), -1, 1));
      SumRowsArgs a{X.h(), O.h(), outer, inner, acc, c.dt};
      cpu().sum_rows(a);
      a = {X.d(), O.d(), outer, inner, acc, c.dt};
      gpu().sum_rows(a);
      c.label = "sum_rows " + std::to_string(outer) + "x" + std::to_string(inner) + " acc=" + std::to_string(acc);
      expect_close(c, "out", O, tol_for(c.dt, {1e-4f, 1e-5f}, {5e-2f, 1e-2f}));
    }
}

void case_reduce_sum(Ctx& c) {
  const int64_t n = 100003;
  for (bool squares : {false, true}) {
    Buf X(c.dt, n);
    X.set(c.uniform(n, -1, 1.2f));
    double ref = 0.0, got = 0.0;
    ReduceSumArgs a{X.h(), &ref, n, squares, c.dt};
    cpu().reduce_sum(a);
    a = {X.d(), &got, n, squares, c.dt};  // `out` is a host pointer on every backend
    gpu().reduce_sum(a);
    c.label = "reduce_sum squares=" + std::to_string(squares);
    EXPECT_NEAR(ref, got, 1e-9 * (1.0 + std::fabs(ref))) << c.label;
  }
}

void case_reduce_sum_many(Ctx& c) {
  const std::vector<int64_t> sizes = {100003, 1, 0, 4099, 300000};
  for (bool squares : {false, true}) {
    std::vector<std::unique_ptr<Buf>> xs;
    std::vector<const void*> host_ptrs, dev_ptrs;
    for (int64_t n : sizes) {
      xs.push_back(std::make_unique<Buf>(c.dt, size_t(n)));
      xs.back()->set(c.uniform(size_t(n), -1, 1.2f));
      host_ptrs.push_back(xs.back()->h());
      dev_ptrs.push_back(xs.back()->d());
    }
    const int64_t count = int64_t(sizes.size());
    std::vector<double> ref(sizes.size()), got(sizes.size(), -1.0);
    ReduceSumManyArgs a{host_ptrs.data(), sizes.data(), count, ref.data(), squares, c.dt};
    cpu().reduce_sum_many(a);
    a = {dev_ptrs.data(), sizes.data(), count, got.data(), squares, c.dt};  // pointer arrays and out: host
    gpu().reduce_sum_many(a);
    for (size_t i = 0; i < sizes.size(); ++i)
      EXPECT_NEAR(ref[i], got[i], 1e-9 * (1.0 + std::fabs(ref[i])))
          << "reduce_sum_many squares=" << squares << " tensor " << i << " of " << sizes[i];
  }
}

// Every direction (f32 <-> bf16, and same-dtype copies), written and accumulated; c.dt is the
// destination's dtype.
void case_convert(Ctx& c) {
  const int64_t n = 10007;
  for (DType src_dt : {DType::f32, DType::bf16})
    for (bool acc : {false, true}) {
      Buf S(src_dt, n), O(c.dt, n);
      S.set(c.uniform(n, -3, 3));
      O.set(c.uniform(n, -1, 1));
      ConvertArgs a{S.h(), src_dt, O.h(), c.dt, n, acc};
      cpu().convert(a);
      a.src = S.d(), a.dst = O.d();
      gpu().convert(a);
      c.label = "convert from " + std::string(dtype_name(src_dt)) + " accumulate=" + std::to_string(acc);
      expect_close(c, "out", O, tol_for(c.dt, {1e-6f, 1e-6f}, {1e-6f, 8e-3f}));
    }
}

void case_fill(Ctx& c) {
  const int64_t n = 4099;
  Buf O(c.dt, n);
  O.set(c.uniform(n, -1, 1));
  FillArgs a{O.h(), n, 1.2345f, c.dt};
  cpu().fill(a);
  a.out = O.d();
  gpu().fill(a);
  expect_close(c, "out", O, {0, 0});
}

const UnaryKind kUnaryKinds[] = {UnaryKind::gelu_tanh, UnaryKind::silu, UnaryKind::relu, UnaryKind::exp,
                                 UnaryKind::tanh, UnaryKind::gelu_erf};

std::vector<float> unary_inputs(Ctx& c, UnaryKind kind, size_t n) {
  auto x = c.uniform(n, -5, 5);
  if (kind != UnaryKind::exp) {  // the tails: exact 0 / x, no NaN from inf * 0
    x[0] = 300.0f;
    x[1] = -300.0f;
    x[2] = 25.0f;
    x[3] = -25.0f;
  }
  x[4] = 0.0f;
  return x;
}

void case_unary_forward(Ctx& c) {
  const int64_t n = 3001;
  for (UnaryKind kind : kUnaryKinds) {
    Buf X(c.dt, n), O(c.dt, n);
    X.set(unary_inputs(c, kind, n));
    O.set(c.uniform(n, -1, 1));
    UnaryForwardArgs a{kind, X.h(), O.h(), n, c.dt};
    cpu().unary_forward(a);
    a = {kind, X.d(), O.d(), n, c.dt};
    gpu().unary_forward(a);
    c.label = "unary_forward kind=" + std::to_string(int(kind));
    expect_close(c, "out", O, tol_for(c.dt, {2e-6f, 2e-5f}, {1e-5f, 8e-3f}));
  }
}

void case_unary_backward(Ctx& c) {
  const int64_t n = 3001;
  for (UnaryKind kind : kUnaryKinds)
    for (bool acc : {false, true}) {
      Buf X(c.dt, n), D(c.dt, n), G(c.dt, n);
      X.set(unary_inputs(c, kind, n));
      D.set(c.uniform(n, -1, 1));
      G.set(c.uniform(n, -1, 1));
      UnaryBackwardArgs a{kind, X.h(), D.h(), G.h(), n, acc, c.dt};
      cpu().unary_backward(a);
      a = {kind, X.d(), D.d(), G.d(), n, acc, c.dt};
      gpu().unary_backward(a);
      c.label = "unary_backward kind=" + std::to_string(int(kind)) + " acc=" + std::to_string(acc);
      expect_close(c, "dx", G, tol_for(c.dt, {2e-6f, 2e-5f}, {1e-5f, 8e-3f}));
    }
}

void case_swiglu_forward(Ctx& c) {
  const int64_t n = 5003;
  Buf G(c.dt, n), U(c.dt, n), O(c.dt, n);
  G.set(c.uniform(n, -6, 6));
  U.set(c.uniform(n, -2, 2));
  O.set(c.uniform(n, -1, 1));
  SwigluForwardArgs a{G.h(), U.h(), O.h(), n, c.dt};
  cpu().swiglu_forward(a);
  a = {G.d(), U.d(), O.d(), n, c.dt};
  gpu().swiglu_forward(a);
  expect_close(c, "out", O, tol_for(c.dt, {2e-6f, 2e-5f}, {1e-5f, 8e-3f}));
}

void case_swiglu_backward(Ctx& c) {
  const int64_t n = 5003;
  for (bool acc : {false, true})
    for (bool with_up : {true, false}) {
      Buf G(c.dt, n), U(c.dt, n), D(c.dt, n), dG(c.dt, n), dU(c.dt, n);
      G.set(c.uniform(n, -6, 6));
      U.set(c.uniform(n, -2, 2));
      D.set(c.uniform(n, -1, 1));
      dG.set(c.uniform(n, -1, 1));
      dU.set(c.uniform(n, -1, 1));
      SwigluBackwardArgs a{G.h(), U.h(), D.h(), dG.h(), with_up ? dU.h() : nullptr, n, acc, c.dt};
      cpu().swiglu_backward(a);
      a = {G.d(), U.d(), D.d(), dG.d(), with_up ? dU.d() : nullptr, n, acc, c.dt};
      gpu().swiglu_backward(a);
      c.label = "swiglu_backward acc=" + std::to_string(acc) + " dup=" + std::to_string(with_up);
      const Tol t = tol_for(c.dt, {2e-6f, 2e-5f}, {1e-5f, 8e-3f});
      expect_close(c, "dgate", dG, t);
      expect_close(c, "dup", dU, t);
    }
}

void norm_forward_case(Ctx& c, bool layer) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{37, 203}, {5, 1024}})
    for (bool with_bias : {true, false}) {
      if (!layer && with_bias) continue;
      Buf X(c.dt, rows * cols), W(c.dt, cols), B(c.dt, cols), O(c.dt, rows * cols), M(DType::f32, rows),
          R(DType::f32, rows);
      X.set(c.uniform(X.size(), -2, 3));
      W.set(c.uniform(cols, 0.5f, 1.5f));
      B.set(c.uniform(cols, -1, 1));
      O.set(c.uniform(O.size(), -1, 1));
      M.set(c.uniform(rows, -1, 1));
      R.set(c.uniform(rows, -1, 1));
      NormForwardArgs a{X.h(), W.h(), with_bias ? B.h() : nullptr, O.h(), layer ? M.h_as<float>() : nullptr,
                        R.h_as<float>(), rows, cols, 1e-5f, c.dt};
      (layer ? cpu().layernorm_forward : cpu().rmsnorm_forward)(a);
      a = {X.d(), W.d(), with_bias ? B.d() : nullptr, O.d(), layer ? M.d_as<float>() : nullptr, R.d_as<float>(),
           rows, cols, 1e-5f, c.dt};
      (layer ? gpu().layernorm_forward : gpu().rmsnorm_forward)(a);
      c.label = std::string(layer ? "layernorm" : "rmsnorm") + " " + std::to_string(rows) + "x" +
                std::to_string(cols) + " bias=" + std::to_string(with_bias);
      const Tol t = tol_for(c.dt, {2e-5f, 2e-5f}, {1e-2f, 1e-2f});
      expect_close(c, "out", O, t);
      if (layer) expect_close(c, "mean", M, {1e-5f, 1e-5f});
      expect_close(c, "rstd", R, {1e-5f, 1e-5f});
    }
}
void case_layernorm_forward(Ctx& c) { norm_forward_case(c, true); }
void case_rmsnorm_forward(Ctx& c) { norm_forward_case(c, false); }

void norm_backward_case(Ctx& c, bool layer) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{37, 203}, {300, 64}})
    for (bool acc : {false, true})
      for (bool with_bias : {true, false}) {
        if (!layer && with_bias) continue;
        Buf X(c.dt, rows * cols), W(c.dt, cols), O(c.dt, rows * cols), M(DType::f32, rows), R(DType::f32, rows),
            D(c.dt, rows * cols), dX(c.dt, rows * cols), dW(c.dt, cols), dB(c.dt, cols);
        X.set(c.uniform(X.size(), -2, 3));
        W.set(c.uniform(cols, 0.5f, 1.5f));
        // Saved statistics from the CPU forward, given to both backwards.
        NormForwardArgs f{X.h(), W.h(), nullptr, O.h(), layer ? M.h_as<float>() : nullptr, R.h_as<float>(),
                          rows, cols, 1e-5f, c.dt};
        (layer ? cpu().layernorm_forward : cpu().rmsnorm_forward)(f);
        M.upload();
        R.upload();
        D.set(c.uniform(D.size(), -1, 1));
        dX.set(c.uniform(dX.size(), -1, 1));
        dW.set(c.uniform(cols, -1, 1));
        dB.set(c.uniform(cols, -1, 1));
        NormBackwardArgs a{X.h(), W.h(), layer ? M.h_as<float>() : nullptr, R.h_as<float>(), D.h(), dX.h(), dW.h(),
                           with_bias ? dB.h() : nullptr, rows, cols, acc, c.dt};
        (layer ? cpu().layernorm_backward : cpu().rmsnorm_backward)(a);
        a = {X.d(), W.d(), layer ? M.d_as<float>() : nullptr, R.d_as<float>(), D.d(), dX.d(), dW.d(),
             with_bias ? dB.d() : nullptr, rows, cols, acc, c.dt};
        (layer ? gpu().layernorm_backward : gpu().rmsnorm_backward)(a);
        c.label = std::string(layer ? "layernorm" : "rmsnorm") + "_backward " + std::to_string(rows) + "x" +
                  std::to_string(cols) + " acc=" + std::to_string(acc) + " bias=" + std::to_string(with_bias);
        expect_close(c, "dx", dX, tol_for(c.dt, {5e-5f, 5e-5f}, {2e-2f, 1e-2f}));
        expect_close(c, "dweight", dW, tol_for(c.dt, {2e-4f, 5e-5f}, {5e-2f, 1e-2f}));
        if (with_bias) expect_close(c, "dbias", dB, tol_for(c.dt, {2e-4f, 5e-5f}, {5e-2f, 1e-2f}));
      }
}
void case_layernorm_backward(Ctx& c) { norm_backward_case(c, true); }
void case_rmsnorm_backward(Ctx& c) { norm_backward_case(c, false); }

void case_softmax_forward(Ctx& c) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{41, 77}, {3, 5000}}) {
    Buf X(c.dt, rows * cols), O(c.dt, rows * cols);
    X.set(c.uniform(X.size(), -8, 8));
    O.set(c.uniform(O.size(), -1, 1));
    SoftmaxForwardArgs a{X.h(), O.h(), rows, cols, c.dt};
    cpu().softmax_forward(a);
    a = {X.d(), O.d(), rows, cols, c.dt};
    gpu().softmax_forward(a);
    c.label = "softmax " + std::to_string(rows) + "x" + std::to_string(cols);
    expect_close(c, "out", O, tol_for(c.dt, {1e-6f, 1e-5f}, {1e-4f, 1e-2f}));
  }
}

// Causal and full, more keys than queries (a cache) and fewer (no key for the first rows).
void case_attention_softmax(Ctx& c) {
  const int64_t groups = 3;
  for (auto [queries, cols] : {std::pair<int64_t, int64_t>{37, 37}, {19, 70}, {40, 9}})
    for (bool causal : {false, true}) {
      const int64_t rows = groups * queries;
      Buf S(DType::f32, rows * cols), P(c.dt, rows * cols);
      S.set(c.uniform(S.size(), -8, 8));
      P.set(c.uniform(P.size(), -1, 1));
      AttentionSoftmaxArgs a{S.h_as<float>(), P.h(), rows, cols, queries, causal, c.dt};
      cpu().attention_softmax(a);
      a.scores = S.d_as<float>(), a.probs = P.d();
      gpu().attention_softmax(a);
      c.label = "attention_softmax " + std::to_string(queries) + "x" + std::to_string(cols) +
                (causal ? " causal" : "");
      expect_close(c, "probs", P, tol_for(c.dt, {1e-6f, 1e-5f}, {1e-4f, 1e-2f}));
    }
}

void case_softmax_backward(Ctx& c) {
  const int64_t rows = 41, cols = 77;
  for (bool acc : {false, true}) {
    Buf X(c.dt, rows * cols), Y(c.dt, rows * cols), D(c.dt, rows * cols), dX(c.dt, rows * cols);
    X.set(c.uniform(X.size(), -4, 4));
    SoftmaxForwardArgs f{X.h(), Y.h(), rows, cols, c.dt};
    cpu().softmax_forward(f);
    Y.upload();
    D.set(c.uniform(D.size(), -1, 1));
    dX.set(c.uniform(dX.size(), -1, 1));
    SoftmaxBackwardArgs a{Y.h(), D.h(), dX.h(), rows, cols, acc, c.dt};
    cpu().softmax_backward(a);
    a = {Y.d(), D.d(), dX.d(), rows, cols, acc, c.dt};
    gpu().softmax_backward(a);
    c.label = "softmax_backward acc=" + std::to_string(acc);
    expect_close(c, "dx", dX, tol_for(c.dt, {1e-6f, 1e-5f}, {1e-3f, 1e-2f}));
  }
}

// Attention shapes: q stored as (B, T, H, D) (the layout a fused qkv projection gives, so
// strided), k/v/out contiguous (B, H, S, D).
struct AttnCase {
  int64_t B, H, Hkv, T, S, D;
  bool causal, masked;
  int64_t window = 0;      // sliding window (Mistral)
  bool segmented = false;  // packed sequences: segment ids (B, T), T == S
};
const AttnCase kAttnCases[] = {
    {2, 4, 2, 37, 37, 64, true, true},   {1, 3, 3, 19, 53, 80, false, false}, {2, 2, 1, 9, 70, 32, true, false},
    {1, 4, 4, 70, 70, 128, true, false}, {2, 2, 2, 33, 65, 96, false, true},  {2, 4, 2, 150, 150, 64, true, false, 37},
    {1, 2, 2, 7, 90, 64, true, true, 20},
    {2, 4, 2, 150, 150, 64, true, false, 0, true}, {1, 4, 1, 70, 70, 96, false, false, 0, true},
    {2, 2, 2, 150, 150, 32, true, false, 37, true},
};

// Segment ids (B, T) of packed rows: runs of 1..40 tokens numbered 1, 2, ..., then from a
// random point on, ids 1..3 drawn at random (a segment split into several runs).
std::vector<float> packed_segments(Ctx& c, int64_t B, int64_t T) {
  std::vector<float> seg(size_t(B * T));
  const auto lengths = c.ints(size_t(B * T), 1, 40), scattered = c.ints(size_t(B * T), 1, 3),
             cut = c.ints(size_t(B), int(T / 2), int(T));
  for (int64_t b = 0; b < B; ++b) {
    int id = 1, left = int(lengths[size_t(b * T)]);
    for (int64_t t = 0; t < T; ++t) {
      if (left-- == 0) {
        ++id;
        left = int(lengths[size_t(b * T + t)]) - 1;
      }
      seg[size_t(b * T + t)] = float(t) < cut[size_t(b)] ? float(id) : scattered[size_t(b * T + t)];
    }
  }
  return seg;
}

Strides4 contiguous4(int64_t H, int64_t T, int64_t D) { return {H * T * D, T * D, D}; }

void case_attention_forward(Ctx& c) {
  for (const AttnCase& k : kAttnCases) {
    const Strides4 qst{k.T * k.H * k.D, k.D, k.H * k.D}, kst = contiguous4(k.Hkv, k.S, k.D),
                   ost = contiguous4(k.H, k.T, k.D);
    Buf Q(c.dt, k.B * k.H * k.T * k.D), K(c.dt, k.B * k.Hkv * k.S * k.D), V(c.dt, K.size()), O(c.dt, Q.size()),
        L(DType::f32, k.B * k.H * k.T), mask(DType::i32, k.B * k.S), seg(DType::i32, k.B * k.T);
    Q.set(c.uniform(Q.size(), -1.5f, 1.5f));
    seg.set(packed_segments(c, k.B, k.T));
    K.set(c.uniform(K.size(), -1.5f, 1.5f));
    V.set(c.uniform(V.size(), -1, 1));
    O.set(c.uniform(O.size(), -1, 1));
    L.set(c.uniform(L.size(), -1, 1));
    auto m = c.ints(mask.size(), 0, 1);
    for (int64_t b = 0; b < k.B; ++b) m[size_t(b * k.S)] = 1;  // every query keeps a key
    mask.set(m);
    const float scale = 1.0f / std::sqrt(float(k.D));
    AttentionForwardArgs a{Q.h(), K.h(), V.h(), O.h(), L.h_as<float>(), qst, kst, kst, ost,
                           k.masked ? mask.h_as<int32_t>() : nullptr, k.B, k.H, k.Hkv, k.T, k.S, k.D, scale,
                           k.causal, c.dt, k.window, k.segmented ? seg.h_as<int32_t>() : nullptr};
    cpu().attention_forward(a);
    a.q = Q.d(), a.k = K.d(), a.v = V.d(), a.out = O.d(), a.lse = L.d_as<float>();
    a.key_mask = k.masked ? mask.d_as<int32_t>() : nullptr;
    a.segment_ids = k.segmented ? seg.d_as<int32_t>() : nullptr;
    gpu().attention_forward(a);
    c.label = "attention_forward B=" + std::to_string(k.B) + " H=" + std::to_string(k.H) + " Hkv=" +
              std::to_string(k.Hkv) + " T=" + std::to_string(k.T) + " S=" + std::to_string(k.S) + " D=" +
              std::to_string(k.D) + " causal=" + std::to_string(k.causal) + " mask=" + std::to_string(k.masked) +
              " window=" + std::to_string(k.window) + " segments=" + std::to_string(k.segmented);
    expect_close(c, "out", O, tol_for(c.dt, {2e-5f, 2e-5f}, {1e-2f, 1e-2f}));
    expect_close(c, "lse", L, {2e-5f, 2e-5f});
  }
}

void case_attention_backward(Ctx& c) {
  for (const AttnCase& k : kAttnCases)
    for (bool acc : {false, true}) {
      const Strides4 qst{k.T * k.H * k.D, k.D, k.H * k.D}, kst = contiguous4(k.Hkv, k.S, k.D),
                     ost = contiguous4(k.H, k.T, k.D);
      Buf Q(c.dt, k.B * k.H * k.T * k.D), K(c.dt, k.B * k.Hkv * k.S * k.D), V(c.dt, K.size()), O(c.dt, Q.size()),
          L(DType::f32, k.B * k.H * k.T), mask(DType::i32, k.B * k.S), dO(c.dt, Q.size()), dQ(c.dt, Q.size()),
          dK(c.dt, K.size()), dV(c.dt, K.size()), seg(DType::i32, k.B * k.T);
      Q.set(c.uniform(Q.size(), -1.5f, 1.5f));
      seg.set(packed_segments(c, k.B, k.T));
      const int32_t* hseg = k.segmented ? seg.h_as<int32_t>() : nullptr;
      const int32_t* dseg = k.segmented ? seg.d_as<int32_t>() : nullptr;
      K.set(c.uniform(K.size(), -1.5f, 1.5f));
      V.set(c.uniform(V.size(), -1, 1));
      auto m = c.ints(mask.size(), 0, 1);
      for (int64_t b = 0; b < k.B; ++b) m[size_t(b * k.S)] = 1;
      mask.set(m);
      const float scale = 1.0f / std::sqrt(float(k.D));
      const int32_t* hmask = k.masked ? mask.h_as<int32_t>() : nullptr;
      const int32_t* dmask = k.masked ? mask.d_as<int32_t>() : nullptr;
      // The CPU forward's out and lse feed both backwards.
      AttentionForwardArgs f{Q.h(), K.h(), V.h(), O.h(), L.h_as<float>(), qst, kst, kst, ost, hmask, k.B, k.H,
                             k.Hkv, k.T, k.S, k.D, scale, k.causal, c.dt, k.window, hseg};
      cpu().attention_forward(f);
      O.upload();
      L.upload();
      dO.set(c.uniform(dO.size(), -1, 1));
      dQ.set(c.uniform(dQ.size(), -1, 1));
      dK.set(c.uniform(dK.size(), -1, 1));
      dV.set(c.uniform(dV.size(), -1, 1));
      // dq takes q's strided layout; dk/dv and dout are contiguous.
      AttentionBackwardArgs a{Q.h(), K.h(), V.h(), O.h(), L.h_as<float>(), dO.h(), dQ.h(), dK.h(), dV.h(),
                              qst, kst, kst, ost, ost, qst, kst, kst, hmask, k.B, k.H, k.Hkv, k.T, k.S, k.D, scale,
                              k.causal, acc, c.dt, k.window, hseg};
      cpu().attention_backward(a);
      a.q = Q.d(), a.k = K.d(), a.v = V.d(), a.out = O.d(), a.lse = L.d_as<float>(), a.dout = dO.d();
      a.dq = dQ.d(), a.dk = dK.d(), a.dv = dV.d(), a.key_mask = dmask, a.segment_ids = dseg;
      gpu().attention_backward(a);
      c.label = "attention_backward B=" + std::to_string(k.B) + " H=" + std::to_string(k.H) + " Hkv=" +
                std::to_string(k.Hkv) + " T=" + std::to_string(k.T) + " S=" + std::to_string(k.S) + " D=" +
                std::to_string(k.D) + " causal=" + std::to_string(k.causal) + " mask=" + std::to_string(k.masked) +
                " window=" + std::to_string(k.window) + " segments=" + std::to_string(k.segmented) +
                " acc=" + std::to_string(acc);
      const Tol t = tol_for(c.dt, {1e-4f, 1e-4f}, {3e-2f, 2e-2f});
      expect_close(c, "dq", dQ, t);
      expect_close(c, "dk", dK, t);
      expect_close(c, "dv", dV, t);
      if (acc) continue;
      // Gradients not needed are null: only dk here, written over fresh contents.
      dK.set(c.uniform(dK.size(), -1, 1));
      a.q = Q.h(), a.k = K.h(), a.v = V.h(), a.out = O.h(), a.lse = L.h_as<float>(), a.dout = dO.h();
      a.dq = nullptr, a.dk = dK.h(), a.dv = nullptr, a.key_mask = hmask, a.segment_ids = hseg;
      cpu().attention_backward(a);
      a.q = Q.d(), a.k = K.d(), a.v = V.d(), a.out = O.d(), a.lse = L.d_as<float>(), a.dout = dO.d();
      a.dk = dK.d(), a.key_mask = dmask, a.segment_ids = dseg;
      gpu().attention_backward(a);
      c.label += " dq=dv=null";
      expect_close(c, "dk", dK, t);
    }
}

void case_rope(Ctx& c) {
  const int64_t N = 13, H = 3, D = 16, max_pos = 32, half = D / 2;
  std::vector<float> cs(size_t(max_pos * half)), sn(cs.size());
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double freq = std::pow(10000.0, -2.0 * double(i) / double(D));
      cs[size_t(p * half + i)] = float(std::cos(double(p) * freq));
      sn[size_t(p * half + i)] = float(std::sin(double(p) * freq));
    }
  for (bool inverse : {false, true})
    for (bool acc : {false, true}) {
      Buf X(c.dt, N * H * D), O(c.dt, N * H * D), P(DType::i32, N), C(DType::f32, cs.size()), S(DType::f32, sn.size());
      X.set(c.uniform(X.size(), -2, 2));
      O.set(c.uniform(O.size(), -1, 1));
      P.set(c.ints(N, 0, int(max_pos - 1)));
      C.set(cs);
      S.set(sn);
      RopeArgs a{X.h(), O.h(), P.h_as<int32_t>(), C.h_as<float>(), S.h_as<float>(), N, H, D, max_pos, inverse, acc,
                 c.dt};
      cpu().rope(a);
      a = {X.d(), O.d(), P.d_as<int32_t>(), C.d_as<float>(), S.d_as<float>(), N, H, D, max_pos, inverse, acc, c.dt};
      gpu().rope(a);
      c.label = "rope inverse=" + std::to_string(inverse) + " acc=" + std::to_string(acc);
      expect_close(c, "out", O, tol_for(c.dt, {2e-6f, 2e-6f}, {1e-2f, 8e-3f}));
    }
}

void case_cross_entropy(Ctx& c) {
  const int64_t rows = 17, V = 1003;
  for (bool alias : {false, true})
    for (bool per_row : {false, true}) {
    Buf X(c.dt, rows * V), T(DType::i32, rows), L(DType::f32, rows), dX(c.dt, rows * V);
    X.set(c.uniform(X.size(), -6, 6));
    auto t = c.ints(rows, 0, int(V - 1));
    t[3] = -100;  // ignored rows
    t[11] = -100;
    T.set(t);
    L.set(c.uniform(rows, -1, 1));
    dX.set(c.uniform(dX.size(), -1, 1));
    const float gs = 1.0f / 15.0f;
    Buf S(DType::f32, rows);  // per-row scales, signs mixed (as -dlogp)
    S.set(c.uniform(rows, -2, 2));
    CrossEntropyArgs a{X.h(), T.h_as<int32_t>(), L.h_as<float>(), alias ? X.h() : dX.h(), rows, V, -100, gs, c.dt,
                       per_row ? S.h_as<float>() : nullptr};
    cpu().cross_entropy(a);
    a = {X.d(), T.d_as<int32_t>(), L.d_as<float>(), alias ? X.d() : dX.d(), rows, V, -100, gs, c.dt,
         per_row ? S.d_as<float>() : nullptr};
    gpu().cross_entropy(a);
    c.label = std::string("cross_entropy") + (alias ? " dlogits aliasing logits" : "") + (per_row ? " row_scale" : "");
    expect_close(c, "losses", L, tol_for(c.dt, {2e-5f, 2e-5f}, {2e-5f, 2e-5f}));
    expect_close(c, "dlogits", alias ? X : dX, tol_for(c.dt, {1e-7f, 1e-5f}, {1e-5f, 1e-2f}));
  }
}

void dropout_case(Ctx& c, bool backward) {
  const int64_t n = 10007;
  for (bool acc : {false, true}) {
    Buf X(c.dt, n), O(c.dt, n);
    X.set(c.uniform(n, 0.5f, 2.0f));  // never 0, so a 0 output means dropped
    O.set(c.uniform(n, -1, 1));
    const uint64_t seed = c.rng(), offset = c.rng() % 100000;
    DropoutArgs a{X.h(), O.h(), n, 0.3f, seed, offset, acc, c.dt};
    (backward ? cpu().dropout_backward : cpu().dropout_forward)(a);
    a.x = X.d();
    a.out = O.d();
    (backward ? gpu().dropout_backward : gpu().dropout_forward)(a);
    c.label = std::string(backward ? "dropout_backward" : "dropout_forward") + " acc=" + std::to_string(acc);
    auto ref = O.host_values(), got = O.device_values();
    expect_close(c, "out", ref, got, tol_for(c.dt, {1e-6f, 1e-6f}, {1e-6f, 8e-3f}));
    if (!acc) {  // the masks must agree exactly: same counter-based draws (core/rng.h)
      size_t differ = 0;
      for (size_t i = 0; i < ref.size(); ++i) differ += (ref[i] == 0.0f) != (got[i] == 0.0f);
      EXPECT_EQ(differ, 0u) << c.label << ": dropout masks differ";
    }
  }
}
void case_dropout_forward(Ctx& c) { dropout_case(c, false); }
void case_dropout_backward(Ctx& c) { dropout_case(c, true); }

void case_adamw_step(Ctx& c) {
  const int64_t n = 1001;
  Buf P(DType::f32, n), G(c.dt, n), M(DType::f32, n), Vv(DType::f32, n);
  P.set(c.uniform(n, -1, 1));
  G.set(c.uniform(n, -1, 1));
  M.set(c.uniform(n, -0.1f, 0.1f));
  Vv.set(c.uniform(n, 0.0f, 0.01f));
  AdamWArgs a{P.h_as<float>(), G.h(), M.h_as<float>(), Vv.h_as<float>(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f,
              0.8f, 7, c.dt};
  cpu().adamw_step(a);
  a.param = P.d_as<float>(), a.grad = G.d(), a.m = M.d_as<float>(), a.v = Vv.d_as<float>();
  gpu().adamw_step(a);
  c.label = "adamw_step";
  expect_close(c, "param", P, {1e-6f, 1e-5f});
  expect_close(c, "m", M, {1e-7f, 1e-5f});
  expect_close(c, "v", Vv, {1e-8f, 1e-5f});
}

void case_quant_gemm(Ctx& c) {
  if (c.dt != DType::f32) return;  // quantised weights multiply f32 activations only
  const int64_t n = 37, k = 128;
  const float table[16] = {-1.0f, -0.7f, -0.5f, -0.4f, -0.3f, -0.2f, -0.1f, 0.0f,
                           0.08f, 0.16f, 0.25f, 0.34f, 0.44f, 0.56f, 0.72f, 1.0f};
  for (int bits : {8, 4}) {
    for (int64_t m : {1, 5}) {
      for (bool acc : {false, true}) {
        const int64_t blocksize = bits == 8 ? 32 : 64, row_bytes = bits == 8 ? k : k / 2;
        Buf X(DType::f32, size_t(m * k)), S(DType::f32, size_t(n * k / blocksize)), O(DType::f32, size_t(m * n));
        Buf W(DType::i8, size_t(n * row_bytes));
        X.set(c.uniform(size_t(m * k), -1, 1));
        S.set(c.uniform(size_t(n * k / blocksize), 0.01f, 0.1f));
        O.set(c.uniform(size_t(m * n), -1, 1));
        std::vector<float> bytes = c.ints(size_t(n * row_bytes), 0, 255);
        for (size_t i = 0; i < bytes.size(); ++i) W.h_as<uint8_t>()[i] = uint8_t(bytes[i]);
        W.upload();
        QuantGemmArgs a{m, n, k, X.h_as<float>(), k, W.h_as<uint8_t>(), row_bytes, S.h_as<float>(), blocksize, bits,
                        table, O.h_as<float>(), n, acc};
        cpu().quant_gemm(a);
        a.x = X.d_as<float>(), a.codes = W.d_as<uint8_t>(), a.scales = S.d_as<float>(), a.out = O.d_as<float>();
        gpu().quant_gemm(a);
        c.label = "quant_gemm bits=" + std::to_string(bits) + " m=" + std::to_string(m) + " acc=" + std::to_string(acc);
        expect_close(c, "out", O, {1e-5f, 1e-5f});
      }
    }
  }
}

// Both code widths, a tile of rows from the middle of W (offset codes and scales).
void case_dequantize(Ctx& c) {
  const int64_t n = 24, k = 192, first = 5, rows = 11;
  const float table[16] = {-1.0f, -0.7f, -0.53f, -0.39f, -0.28f, -0.18f, -0.09f, 0.0f,
                           0.08f, 0.16f, 0.25f, 0.34f, 0.44f, 0.56f, 0.72f, 1.0f};
  for (int bits : {8, 4}) {
    const int64_t blocksize = bits == 8 ? 32 : 64, row_bytes = bits == 8 ? k : k / 2;
    Buf S(DType::f32, size_t(n * k / blocksize)), O(DType::f32, size_t(rows * k)), W(DType::i8, size_t(n * row_bytes));
    S.set(c.uniform(S.size(), 0.01f, 0.1f));
    O.set(c.uniform(O.size(), -1, 1));
    std::vector<float> bytes = c.ints(W.size(), 0, 255);
    for (size_t i = 0; i < bytes.size(); ++i) W.h_as<uint8_t>()[i] = uint8_t(bytes[i]);
    W.upload();
    DequantizeArgs a{W.h_as<uint8_t>() + first * row_bytes, row_bytes, S.h_as<float>() + first * (k / blocksize),
                     blocksize, bits, table, rows, k, O.h_as<float>()};
    cpu().dequantize(a);
    a.codes = W.d_as<uint8_t>() + first * row_bytes, a.scales = S.d_as<float>() + first * (k / blocksize);
    a.out = O.d_as<float>();
    gpu().dequantize(a);
    c.label = "dequantize bits=" + std::to_string(bits);
    expect_close(c, "out", O, {0.0f, 0.0f});
  }
}

using CaseFn = void (*)(Ctx&);
// dtypes each case runs with (adamw: the gradient's dtype).
const std::map<Kernel, CaseFn>& cases() {
  static const std::map<Kernel, CaseFn> table = {
      {Kernel::embedding_forward, case_embedding_forward},
      {Kernel::embedding_backward, case_embedding_backward},
      {Kernel::gemm, case_gemm},
      {Kernel::binary, case_binary},
      {Kernel::axpby, case_axpby},
      {Kernel::sum_rows, case_sum_rows},
      {Kernel::reduce_sum, case_reduce_sum},
      {Kernel::reduce_sum_many, case_reduce_sum_many},
      {Kernel::convert, case_convert},
      {Kernel::fill, case_fill},
      {Kernel::unary_forward, case_unary_forward},
      {Kernel::unary_backward, case_unary_backward},
      {Kernel::swiglu_forward, case_swiglu_forward},
      {Kernel::swiglu_backward, case_swiglu_backward},
      {Kernel::layernorm_forward, case_layernorm_forward},
      {Kernel::layernorm_backward, case_layernorm_backward},
      {Kernel::rmsnorm_forward, case_rmsnorm_forward},
      {Kernel::rmsnorm_backward, case_rmsnorm_backward},
      {Kernel::softmax_forward, case_softmax_forward},
      {Kernel::softmax_backward, case_softmax_backward},
      {Kernel::attention_softmax, case_attention_softmax},
      {Kernel::attention_forward, case_attention_forward},
      {Kernel::attention_backward, case_attention_backward},
      {Kernel::rope, case_rope},
      {Kernel::cross_entropy, case_cross_entropy},
      {Kernel::dropout_forward, case_dropout_forward},
      {Kernel::dropout_backward, case_dropout_backward},
      {Kernel::adamw_step, case_adamw_step},
      {Kernel::quant_gemm, case_quant_gemm},
      {Kernel::dequantize, case_dequantize},
  };
  return table;
}

class CudaVsCpu : public ::testing::TestWithParam<int> {};

TEST_P(CudaVsCpu, SameResults) {
  const Kernel kernel = Kernel(GetParam());
  const std::string name(kernel_name(kernel));
  auto it = cases().find(kernel);
  // Checked before the device: a kernel added to ops/op_list.h without a case fails everywhere.
  ASSERT_TRUE(it != cases().end()) << "kernel '" << name << "' has no case in tests/test_backends.cpp";
  try {
    backend_for(Device::cuda);
  } catch (const Error& e) {
    GTEST_SKIP() << "no CUDA device: " << e.what();
  }
  ASSERT_TRUE(cpu().supports(kernel)) << "kernel '" << name << "' is not supported on the cpu backend";
  ASSERT_TRUE(gpu().supports(kernel)) << "kernel '" << name << "' is not supported on the cuda backend";
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("KOTOBA_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE("kernel " + name + ", dtype " + std::string(dtype_name(dt)) + ", KOTOBA_TEST_SEED=" +
                 std::to_string(seed));
    Ctx ctx{std::mt19937_64(seed), dt, name};
    it->second(ctx);
    gpu().synchronize();
  }
}

INSTANTIATE_TEST_SUITE_P(AllKernels, CudaVsCpu, ::testing::Range(0, int(Kernel::count)),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(kernel_name(Kernel(info.param)));
                         });

}  // namespace
}  // namespace kotoba
