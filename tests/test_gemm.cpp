// The CPU gemm kernel's single-row path (matrix-vector, used when decoding one token) against
// a plain double-precision product, for every transpose combination, with a stale NaN-filled C.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "ops/backend.h"

using namespace kotoba;

TEST(Gemm, SingleRowMatchesPlainProductForEveryLayout) {
  Generator gen(5);
  const int64_t k = 37, n = 29;
  for (bool trans_a : {false, true})
    for (bool trans_b : {false, true})
      for (float beta : {0.0f, 0.5f}) {
        const int64_t lda = trans_a ? 3 : k;  // A stored (k, 1) with row stride 3 when transposed
        const int64_t ldb = trans_b ? k + 2 : n + 1;
        std::vector<float> a(static_cast<size_t>(trans_a ? k * lda : k)), b(static_cast<size_t>(trans_b ? n * ldb : k * ldb)),
            c(static_cast<size_t>(n));
        for (auto& v : a) v = gen.normal();
        for (auto& v : b) v = gen.normal();
        for (auto& v : c) v = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : gen.normal();
        std::vector<double> expect(static_cast<size_t>(n));
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t p = 0; p < k; ++p) {
            double av = a[size_t(trans_a ? p * lda : p)];
            double bv = b[size_t(trans_b ? j * ldb + p : p * ldb + j)];
            s += av * bv;
          }
          expect[size_t(j)] = 1.5 * s + (beta == 0.0f ? 0.0 : double(beta) * c[size_t(j)]);
        }
        GemmArgs g{trans_a, trans_b, 1, n, k, 1.5f, a.data(), lda, 0, b.data(), ldb, 0, beta, c.data(), n, 0, 1,
                   DType::f32, DType::f32};
        backend_for(Device::cpu).gemm(g);
        for (int64_t j = 0; j < n; ++j)
          EXPECT_NEAR(c[size_t(j)], expect[size_t(j)], 1e-4 * (1 + std::abs(expect[size_t(j)])))
              << "trans_a " << trans_a << " trans_b " << trans_b << " beta " << beta << " column " << j;
      }
}
