// Quantised formats against their definitions (tests/reference/quant_reference.py): NF4 with and
// without double quantisation and the 8-bit dynamic map (bitsandbytes semantics), int8 row-wise
// absmax, and ggml's Q4_0/Q8_0 against llama.cpp's own gguf package, byte for byte.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/safetensors.h"
#include "quant/formats.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using namespace kotoba::quant;

namespace {

class QuantReference : public ::testing::Test {
 protected:
  SafeTensors ref;
  void SetUp() override {
    const fs::path path = kt::reference_dir() / "quant" / "reference.safetensors";
    ASSERT_TRUE(fs::exists(path)) << kt::reference_missing(path);
    ref = load_safetensors(path.string());
  }
  std::vector<float> floats(const char* name) { return ref.tensors.at(name).to(DType::f32).to_vector(); }
  std::vector<int32_t> ints(const char* name) {
    const Tensor& t = ref.tensors.at(name);
    return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
  }
};

TEST_F(QuantReference, DynamicCodeIsBitsandbytes) {
  const std::vector<float> want = floats("dynamic_code");
  ASSERT_EQ(want.size(), 256u);
  // torch.linspace's float32 rounding (which bitsandbytes builds the map with) depends on the
  // CPU's vector width: the same table to the last bit or one unit in it.
  for (size_t i = 0; i < 256; ++i) EXPECT_NEAR(dynamic_code()[i], want[i], 1.2e-7 * std::abs(want[i])) << i;
}

// Codes may differ only where x / absmax lies on a decision boundary to within float rounding
// (the reference divides, bitsandbytes' kernels multiply by the reciprocal); none of those may
// move the value by more than one code step.
TEST_F(QuantReference, Nf4WithDoubleQuantisationMatches) {
  const std::vector<float> x = floats("nf4_x");
  const int64_t n = int64_t(x.size());
  Nf4 q = quantize_nf4(x.data(), n);
  ASSERT_EQ(q.blocks(), (n + 63) / 64);

  const std::vector<float> absmax = floats("nf4_absmax");
  std::vector<float> plain_scales = quantize_nf4(x.data(), n, {64, false, 256}).block_scales();
  ASSERT_EQ(plain_scales.size(), absmax.size());
  for (size_t b = 0; b < absmax.size(); ++b) EXPECT_EQ(plain_scales[b], absmax[b]) << b;

  const std::vector<int32_t> packed = ints("nf4_packed");
  ASSERT_EQ(q.packed.size(), packed.size());
  int differing = 0;
  for (size_t i = 0; i < packed.size(); ++i) differing += q.packed[i] != uint8_t(packed[i]);
  EXPECT_LE(differing, 2) << "of " << packed.size() << " bytes";

  EXPECT_NEAR(q.offset, floats("nf4_offset")[0], 1e-6 * std::abs(q.offset));
  const std::vector<int32_t> qabsmax = ints("nf4_qabsmax");
  const std::vector<float> absmax2 = floats("nf4_absmax2");
  ASSERT_EQ(q.nested.codes.size(), qabsmax.size());
  ASSERT_EQ(q.nested.absmax.size(), absmax2.size());
  for (size_t b = 0; b < absmax2.size(); ++b) EXPECT_NEAR(q.nested.absmax[b], absmax2[b], 1e-6 * absmax2[b]) << b;
  int nested_differing = 0;
  for (size_t i = 0; i < qabsmax.size(); ++i) {
    nested_differing += q.nested.codes[i] != uint8_t(qabsmax[i]);
    EXPECT_LE(std::abs(int(q.nested.codes[i]) - qabsmax[i]), 1) << i;
  }
  EXPECT_LE(nested_differing, 2);

  std::vector<float> dq(x.size()), dq_plain(x.size());
  dequantize_nf4(q, dq.data());
  dequantize_nf4(quantize_nf4(x.data(), n, {64, false, 256}), dq_plain.data());
  kt::Comparison c = kt::compare_to_reference(Tensor::from_vector(dq, {n}), ref.tensors.at("nf4_dequant").to(DType::f64),
                                              {1e-5, 1e-5});
  // A boundary code (above) moves a value by one code step: allow those few elements.
  const std::vector<float> want = floats("nf4_dequant"), want_plain = floats("nf4_dequant_plain");
  int far = 0;
  double max_rel_plain = 0;
  for (int64_t i = 0; i < n; ++i) {
    far += std::abs(dq[size_t(i)] - want[size_t(i)]) > 1e-5f * (1.0f + std::abs(want[size_t(i)]));
    max_rel_plain = std::max(max_rel_plain, double(std::abs(dq_plain[size_t(i)] - want_plain[size_t(i)])));
  }
  EXPECT_LE(far, 4) << c.describe();
  EXPECT_LE(max_rel_plain, 0.5);  // at most a code step (boundary cases), normally 0

  // NF4 is lossy but bounded: every value within half the largest code gap (0.152) of its block's
  // absmax, plus what the double quantisation moved that absmax by.
  std::vector<float> scales = q.block_scales();
  for (int64_t i = 0; i < n; ++i) {
    const float a = absmax[size_t(i / 64)];
    ASSERT_LE(std::abs(dq[size_t(i)] - x[size_t(i)]), 0.153f * a + std::abs(scales[size_t(i / 64)] - a) + 1e-6f) << i;
  }
}

TEST_F(QuantReference, Int8RowwiseMatchesBitsandbytes) {
  const Tensor& x = ref.tensors.at("int8_x");
  const std::vector<float> xs = x.to(DType::f32).to_vector();
  Int8Rows q = quantize_int8_rows(xs.data(), x.size(0), x.size(1));
  const Tensor& codes = ref.tensors.at("int8_codes");
  for (int64_t i = 0; i < codes.numel(); ++i) ASSERT_EQ(q.codes[size_t(i)], codes.data<int8_t>()[i]) << i;
  const std::vector<float> absmax = floats("int8_absmax");
  for (size_t r = 0; r < absmax.size(); ++r) EXPECT_EQ(q.absmax[r], absmax[r]);
  std::vector<float> dq(xs.size());
  dequantize_int8_rows(q, dq.data());
  const std::vector<float> want = floats("int8_dequant");
  for (size_t i = 0; i < dq.size(); ++i) ASSERT_EQ(dq[i], want[i]) << i;
}

TEST_F(QuantReference, GgmlBlocksMatchLlamaCpp) {
  const std::vector<float> x = floats("ggml_x");
  const int64_t n = int64_t(x.size());
  struct Format {
    const char* name;
    int64_t block_bytes;
    void (*quantize)(const float*, int64_t, uint8_t*);
    void (*dequantize)(const uint8_t*, int64_t, float*);
  };
  for (const Format& f : {Format{"q4_0", kQ4_0Bytes, quantize_q4_0, dequantize_q4_0},
                          Format{"q8_0", kQ8_0Bytes, quantize_q8_0, dequantize_q8_0}}) {
    std::vector<uint8_t> bytes(size_t(n / kGgmlBlock * f.block_bytes));
    f.quantize(x.data(), n, bytes.data());
    const std::vector<int32_t> want = ints((std::string(f.name) + "_bytes").c_str());
    ASSERT_EQ(bytes.size(), want.size()) << f.name;
    for (size_t i = 0; i < bytes.size(); ++i) ASSERT_EQ(int(bytes[i]), want[i]) << f.name << " byte " << i;
    std::vector<float> dq(x.size());
    f.dequantize(bytes.data(), n, dq.data());
    const std::vector<float> want_dq = floats((std::string(f.name) + "_dequant").c_str());
    for (size_t i = 0; i < dq.size(); ++i) ASSERT_EQ(dq[i], want_dq[i]) << f.name << " " << i;
  }
}

TEST(QuantFormats, ZerosNonFiniteAndPartialBlocks) {
  std::vector<float> zeros(100, 0.0f), out(100, 1.0f);
  Nf4 q = quantize_nf4(zeros.data(), 100);
  dequantize_nf4(q, out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  std::vector<float> bad = {1.0f, NAN, 2.0f};
  EXPECT_THROW(quantize_nf4(bad.data(), 3), Error);
  EXPECT_THROW(quantize_int8_rows(bad.data(), 1, 3), Error);
  std::vector<float> odd(33, 0.5f);
  std::vector<uint8_t> bytes(64);
  EXPECT_THROW(quantize_q4_0(odd.data(), 33, bytes.data()), Error);
  // An odd element count packs into ceil(n / 2) bytes and round-trips.
  std::vector<float> x = {0.3f, -1.0f, 0.7f};
  Nf4 small = quantize_nf4(x.data(), 3, {64, false, 256});
  EXPECT_EQ(small.packed.size(), 2u);
  std::vector<float> back(3);
  dequantize_nf4(small, back.data());
  EXPECT_EQ(back[1], -1.0f);
  EXPECT_NEAR(back[0], 0.3f, 0.05f);
}

}  // namespace
