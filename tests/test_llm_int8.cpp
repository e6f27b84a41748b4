// LLM.int8() (int8 weights marked int8_activations; ops/quant_matmul.cpp) against its float64
// transcription (tests/reference/llm_int8_reference.py): outlier columns none / some / all and
// threshold 0, at 1, 5 and 40 rows (the integer product is exact, so ~1e-6 relative); its
// backward is the weight-only one; bad combinations are errors. Run under both CPU kernel sets.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "io/safetensors.h"
#include "ops/ops.h"
#include "quant/packed.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using namespace kotoba::quant;

namespace {

std::shared_ptr<const PackedWeight> llm_int8_weight(const float* w, int64_t rows, int64_t cols, float threshold) {
  PackedWeight p = pack_weight(w, rows, cols, WeightFormat::int8);
  p.int8_activations = true;
  p.outlier_threshold = threshold;
  return std::make_shared<const PackedWeight>(std::move(p));
}

class LlmInt8Reference : public ::testing::Test {
 protected:
  SafeTensors ref;
  void SetUp() override {
    const fs::path path = kt::reference_dir() / "llm_int8" / "reference.safetensors";
    ASSERT_TRUE(fs::exists(path)) << kt::reference_missing(path);
    ref = load_safetensors(path.string());
  }
  std::vector<double> doubles(const std::string& name) {
    const Tensor t = ref.tensors.at(name).to(DType::f64).contiguous();
    return std::vector<double>(t.data<double>(), t.data<double>() + t.numel());
  }
};

TEST_F(LlmInt8Reference, MatchesTheFloat64Transcription) {
  const Tensor w = ref.tensors.at("w").contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  // The weight codes are the reference's (bitsandbytes' row-wise int8).
  const PackedWeight packed = pack_weight(w.data<float>(), n, k, WeightFormat::int8);
  const Tensor codes = ref.tensors.at("w_codes").contiguous();
  for (int64_t i = 0; i < n * k; ++i)
    ASSERT_EQ(int(int8_t(packed.codes[size_t(i)])), codes.data<int32_t>()[i]) << "weight code " << i;
  for (int64_t rows : {1, 5, 40}) {
    for (const char* c : {"none", "some", "all", "zero"}) {
      const std::string key = std::string(c) + "_r" + std::to_string(rows);
      const Tensor x = ref.tensors.at(key + "_x");
      ASSERT_EQ(x.shape(), (Shape{rows, k}));
      const float threshold = ref.tensors.at(key + "_threshold").to_vector()[0];
      const auto wq = llm_int8_weight(w.data<float>(), n, k, threshold);
      const std::vector<float> got = quantized_linear(x, wq, Tensor()).to_vector();
      const std::vector<double> want = doubles(key + "_out"), mag = doubles(key + "_mag");
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 2e-6 * mag[i] + 1e-7) << key << " element " << i << " (of " << rows << " x " << n
                                                              << ", threshold " << threshold << ")";
    }
  }
}

// The decomposition is what keeps outliers accurate: with them present, threshold 6 is closer to
// the f32 product x @ dequantised(W)^T than threshold 0 (everything int8, the outliers' rows
// quantised with a coarse step).
TEST_F(LlmInt8Reference, OutlierColumnsAreMoreAccurateThanAllInt8) {
  const Tensor w = ref.tensors.at("w").contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const PackedWeight packed = pack_weight(w.data<float>(), n, k, WeightFormat::int8);
  std::vector<float> deq(size_t(n * k));
  packed.dequantize_rows(0, n, deq.data());
  const Tensor x = ref.tensors.at("some_r40_x");
  const std::vector<float> xv = x.to_vector();
  double err6 = 0, err0 = 0;
  const std::vector<float> y6 = quantized_linear(x, llm_int8_weight(w.data<float>(), n, k, 6.0f), Tensor()).to_vector();
  const std::vector<float> y0 = quantized_linear(x, llm_int8_weight(w.data<float>(), n, k, 0.0f), Tensor()).to_vector();
  for (int64_t r = 0; r < 40; ++r)
    for (int64_t o = 0; o < n; ++o) {
      double exact = 0;
      for (int64_t i = 0; i < k; ++i) exact += double(xv[size_t(r * k + i)]) * deq[size_t(o * k + i)];
      err6 += std::pow(y6[size_t(r * n + o)] - exact, 2);
      err0 += std::pow(y0[size_t(r * n + o)] - exact, 2);
    }
  EXPECT_LT(err6 * 4, err0) << "outlier decomposition error " << err6 << " vs all-int8 " << err0;
}

TEST(LlmInt8, BackwardIsTheDequantisedWeights) {
  Generator gen(kt::test_seed());
  const int64_t out = 29, in = 96, rows = 6;
  std::vector<float> wv(size_t(out * in)), xv(size_t(rows * in)), dyv(size_t(rows * out));
  for (float& v : wv) v = 0.1f * gen.normal();
  for (float& v : xv) v = 3.0f * gen.normal();
  for (float& v : dyv) v = gen.normal();
  const auto w = llm_int8_weight(wv.data(), out, in, 6.0f);
  std::vector<float> deq(size_t(out * in));
  w->dequantize_rows(0, out, deq.data());
  Tensor x = Tensor::from_vector(xv, {2, 3, in});
  x.set_requires_grad(true);
  Tensor y = quantized_linear(x, w, Tensor());
  ASSERT_EQ(y.shape(), (Shape{2, 3, out}));
  backward(y, Tensor::from_vector(dyv, {2, 3, out}));
  const std::vector<float> dx = x.grad().to_vector();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in; ++i) {
      double want = 0, mag = 0;
      for (int64_t o = 0; o < out; ++o) {
        want += double(dyv[size_t(r * out + o)]) * deq[size_t(o * in + i)];
        mag += std::abs(double(dyv[size_t(r * out + o)]) * deq[size_t(o * in + i)]);
      }
      ASSERT_NEAR(dx[size_t(r * in + i)], want, 1e-5 * mag + 1e-6) << r << "," << i;
    }
}

// A row whose largest value is subnormal (127 / absmax overflows) still quantises to codes in
// [-127, 127] and gives x @ dequantised(W)^T to within its (tiny) scale.
TEST(LlmInt8, SubnormalRowsQuantise) {
  const int64_t out = 8, in = 64;
  std::vector<float> wv(size_t(out * in));
  for (size_t i = 0; i < wv.size(); ++i) wv[i] = float(int(i % 7) - 3) * 0.25f;
  const auto w = llm_int8_weight(wv.data(), out, in, 6.0f);
  std::vector<float> deq(size_t(out * in));
  w->dequantize_rows(0, out, deq.data());
  std::vector<float> xv(size_t(in), 0.0f);
  xv[5] = 1e-39f;
  xv[9] = -5e-40f;
  const std::vector<float> y = quantized_linear(Tensor::from_vector(xv, {1, in}), w, Tensor()).to_vector();
  for (int64_t o = 0; o < out; ++o) {
    const double want = double(xv[5]) * deq[size_t(o * in + 5)] + double(xv[9]) * deq[size_t(o * in + 9)];
    ASSERT_TRUE(std::isfinite(y[size_t(o)])) << o;
    EXPECT_NEAR(y[size_t(o)], want, 2e-41) << o;
  }
}

TEST(LlmInt8, ErrorsAreNamed) {
  std::vector<float> w(16 * 64, 0.5f);
  PackedWeight p = pack_weight(w.data(), 16, 64, WeightFormat::q8_0);
  p.int8_activations = true;
  auto q8 = std::make_shared<const PackedWeight>(std::move(p));
  try {
    quantized_linear(Tensor::zeros({2, 64}), q8);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("need an int8 weight, got q8_0"), std::string::npos) << e.what();
  }
  const auto w8 = llm_int8_weight(w.data(), 16, 64, 6.0f);
  std::vector<float> x(2 * 64, 1.0f);
  x[70] = std::nanf("");
  x[3] = 9.0f;  // an outlier column elsewhere: row 1's NaN is in an int8 column
  try {
    quantized_linear(Tensor::from_vector(x, {2, 64}), w8);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 1 of x holds a non-finite value"), std::string::npos) << e.what();
  }
}

}  // namespace
