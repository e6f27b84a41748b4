// Decoding with the KV cache on any device: the backends' strided copy (copy_2d), the cache's row
// writes and gathers built on it, and — where a GPU is present — greedy decoding of a small
// GPT-2 and a small LLaMA (GQA) on CUDA against the CPU, step by step. Without a GPU the CUDA
// tests skip ("no CUDA device: ..."); the CPU ones run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "infer/generate.h"
#include "io/quantized_model.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "ops/backend.h"
#include "ops/ops.h"
#include "small_models.h"
#include "test_util.h"

using namespace kotoba;
using kotoba::testing::random_normal;
using kotoba::testing::test_seed;

namespace {

std::vector<uint8_t> random_bytes(size_t n, Generator& gen) {
  std::vector<uint8_t> out(n);
  for (uint8_t& b : out) b = uint8_t(gen.uniform() * 256.0f);
  return out;
}

struct Copy2DCase {
  size_t width, rows, src_pitch, dst_pitch;
};
// Odd widths and pitches, equal and unequal pitches, pitch == width, and empty copies.
const Copy2DCase kCopy2DCases[] = {{1, 1, 1, 1},  {7, 5, 13, 9},  {13, 4, 13, 31}, {33, 3, 50, 33},
                                   {64, 9, 64, 64}, {3, 17, 5, 4}, {0, 4, 5, 5},    {5, 0, 7, 7}};

// dst after copy_2d: `width` bytes of each row from src, every other byte as it was.
std::vector<uint8_t> copy_2d_reference(std::vector<uint8_t> dst, const std::vector<uint8_t>& src, const Copy2DCase& c) {
  for (size_t r = 0; r < c.rows; ++r)
    for (size_t i = 0; i < c.width; ++i) dst[r * c.dst_pitch + i] = src[r * c.src_pitch + i];
  return dst;
}

// Element (b, h, t, d) of a 4-D f32 CPU tensor of any strides.
float at(const Tensor& x, int64_t b, int64_t h, int64_t t, int64_t d) {
  const Shape& s = x.strides();
  return x.data<float>()[b * s[0] + h * s[1] + t * s[2] + d * s[3]];
}

// Two models with the same weights (the same seed); the second goes to the GPU.
std::unique_ptr<nn::CausalLM> small_gpt2(uint64_t seed) { return kotoba::testing::small_gpt2(seed); }
std::unique_ptr<nn::CausalLM> small_llama(uint64_t seed) { return kotoba::testing::small_llama(seed); }

std::vector<int32_t> random_ids(size_t n, Generator& gen) {
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = int32_t(gen.uniform() * 89.0f) % 89;
  return ids;
}

size_t argmax(const float* row, size_t n) { return size_t(std::max_element(row, row + n) - row); }

// f32 on both sides, full-f32 GEMM on the GPU (no TF32): the logits differ by rounding only.
constexpr double kLogitTolerance = 1e-3;  // relative, with a floor of 1: |gpu - cpu| <= tol * max(1, |cpu|)

// Greedy decoding of `prompts` (left-padded into one batch) on the CPU model and on the GPU one,
// feeding both the CPU's choices: every step's logits must agree within kLogitTolerance and the
// GPU's greedy choice must be the CPU's (unless the CPU's two best are closer than the tolerance).
// With drop_row, the batch keeps rows {2, 0} after step 5 (KVCache::select_rows on both).
void expect_same_greedy_decoding(nn::CausalLM& on_cpu, nn::CausalLM& on_gpu,
                                 const std::vector<std::vector<int32_t>>& prompts, int steps, bool drop_row) {
  const size_t V = size_t(on_cpu.vocab_size());
  infer::BatchDecoder cpu(on_cpu, /*use_kv_cache=*/true, 40), gpu(on_gpu, /*use_kv_cache=*/true, 40);
  std::vector<float> c = cpu.prefill(prompts), g = gpu.prefill(prompts);
  for (int step = 0; step <= steps; ++step) {
    const std::string where = on_cpu.model_type() + ", batch " + std::to_string(prompts.size()) + ", step " +
                              std::to_string(step);
    const size_t rows = size_t(cpu.rows());
    ASSERT_EQ(c.size(), rows * V) << where;
    ASSERT_EQ(g.size(), rows * V) << where;
    double worst = 0;
    for (size_t i = 0; i < c.size(); ++i)
      worst = std::max(worst, std::abs(double(g[i]) - double(c[i])) / std::max(1.0, std::abs(double(c[i]))));
    EXPECT_LE(worst, kLogitTolerance) << where << ": largest relative logit difference, GPU against CPU";
    std::vector<int32_t> tokens;
    for (size_t r = 0; r < rows; ++r) {
      const float* row = c.data() + r * V;
      const size_t best = argmax(row, V);
      std::vector<float> rest(row, row + V);
      rest[best] = -INFINITY;
      const double gap = double(row[best]) - double(*std::max_element(rest.begin(), rest.end()));
      if (gap > kLogitTolerance * std::max(1.0f, std::abs(row[best]))) {
        EXPECT_EQ(argmax(g.data() + r * V, V), best) << where << ", row " << r << ": greedy choice";
      }
      tokens.push_back(int32_t(best));
    }
    if (step == steps) break;
    if (drop_row && step == 5 && rows == 3) {
      cpu.select_rows({2, 0});
      gpu.select_rows({2, 0});
      tokens = {tokens[2], tokens[0]};
    }
    c = cpu.step(tokens);
    g = gpu.step(tokens);
  }
}

}  // namespace

TEST(Copy2D, CpuCopiesEveryRowAndNothingElse) {
  const Backend& cpu = backend_for(Device::cpu);
  ASSERT_NE(cpu.copy_2d, nullptr);
  Generator gen(test_seed());
  for (const Copy2DCase& c : kCopy2DCases) {
    const std::vector<uint8_t> src = random_bytes(c.rows * c.src_pitch + 3, gen);
    std::vector<uint8_t> dst = random_bytes(c.rows * c.dst_pitch + 3, gen);
    const std::vector<uint8_t> expected = copy_2d_reference(dst, src, c);
    cpu.copy_2d(dst.data(), c.dst_pitch, src.data(), c.src_pitch, c.width, c.rows);
    EXPECT_EQ(dst, expected) << "width " << c.width << ", rows " << c.rows << ", pitches " << c.src_pitch << " -> "
                             << c.dst_pitch;
  }
}

TEST(Copy2D, CudaEqualsTheReference) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const Backend& gpu = backend_for(Device::cuda);
  ASSERT_NE(gpu.copy_2d, nullptr);
  Generator gen(test_seed() + 1);
  for (const Copy2DCase& c : kCopy2DCases) {
    const std::vector<uint8_t> src = random_bytes(c.rows * c.src_pitch + 3, gen);
    const std::vector<uint8_t> dst = random_bytes(c.rows * c.dst_pitch + 3, gen);
    // Byte buffers as i8 tensors on the device.
    auto upload = [](const std::vector<uint8_t>& bytes) {
      Tensor host = Tensor::empty({int64_t(bytes.size())}, DType::i8);
      std::copy(bytes.begin(), bytes.end(), reinterpret_cast<uint8_t*>(host.raw()));
      return to_device(host, Device::cuda);
    };
    Tensor d_src = upload(src), d_dst = upload(dst);
    gpu.copy_2d(d_dst.raw(), c.dst_pitch, d_src.raw(), c.src_pitch, c.width, c.rows);
    Tensor back = to_device(d_dst, Device::cpu);
    const uint8_t* got = reinterpret_cast<const uint8_t*>(back.raw());
    EXPECT_EQ(std::vector<uint8_t>(got, got + dst.size()), copy_2d_reference(dst, src, c))
        << "width " << c.width << ", rows " << c.rows << ", pitches " << c.src_pitch << " -> " << c.dst_pitch;
  }
}

// write_kv_rows takes one strided copy for even layouts and falls back for the others: every
// path must write exactly the new slots.
TEST(KVCacheRows, WriteKvRowsCopiesEveryLayout) {
  Generator gen(test_seed() + 2);
  const int64_t B = 3, H = 4, L = 11, D = 5, start = 4;
  for (int64_t T : {1, 3}) {
    const Tensor qkv = random_normal({B, T, 3 * H, D}, gen);
    // Contiguous; GPT-2's key heads of a (B, T, 3H, D) qkv; a (B, T, H, D) seen as (B, H, T, D).
    const std::vector<std::pair<const char*, Tensor>> sources = {
        {"contiguous", random_normal({B, H, T, D}, gen)},
        {"qkv heads", qkv.slice_view(2, H, 2 * H).transpose_view(1, 2)},
        {"transposed", random_normal({B, T, H, D}, gen).transpose_view(1, 2)}};
    for (const auto& [name, src] : sources)
      for (bool whole : {true, false}) {
        // A cache of its own, or heads [H, 2H) of a wider buffer (its batch rows step unevenly).
        Tensor buffer = random_normal({B, whole ? H : 2 * H, L, D}, gen);
        const Tensor before = buffer.clone();
        const Tensor cache = whole ? buffer : buffer.slice_view(1, H, 2 * H);
        nn::write_kv_rows(cache, src, start);
        const int64_t h0 = whole ? 0 : H;
        int64_t wrong = 0;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t h = 0; h < buffer.size(1); ++h)
            for (int64_t l = 0; l < L; ++l)
              for (int64_t d = 0; d < D; ++d) {
                const bool written = h >= h0 && h < h0 + H && l >= start && l < start + T;
                const float want = written ? at(src, b, h - h0, l - start, d) : at(before, b, h, l, d);
                wrong += at(buffer, b, h, l, d) != want;
              }
        EXPECT_EQ(wrong, 0) << name << " src, T " << T << (whole ? "" : ", a view of a wider cache");
      }
  }
  const Tensor cache = Tensor::empty({B, H, L, D}, DType::f32);
  EXPECT_THROW(nn::write_kv_rows(cache, random_normal({B, H, 2, D}, gen), L - 1), Error) << "past max_len";
  EXPECT_THROW(nn::write_kv_rows(cache, random_normal({B, H + 1, 1, D}, gen), 0), Error) << "head count";
}

// LLM.int8() (int8 activations) is a CPU kernel: such a model refuses to move, naming the layer,
// before anything moved.
TEST(CudaDecode, LlmInt8ModelRefusesToMoveAndNamesTheLimitation) {
  auto model = small_llama(7);
  quantize_model(*model, quant::WeightFormat::int8, Int8Activations{.enabled = true});
  try {
    model->to(Device::cuda);
    FAIL() << "an LLM.int8() model moved to cuda";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cuda"), std::string::npos) << what;
    EXPECT_NE(what.find("LLM.int8() weight (int8 activations), which runs on the CPU only"), std::string::npos)
        << what;
    EXPECT_NE(what.find("model.layers.0.self_attn.q_proj"), std::string::npos) << "names the layer: " << what;
  }
  for (const Tensor& t : model->parameters()) EXPECT_EQ(t.device(), Device::cpu) << "nothing may have moved";
}

// Weight-only quantised models decode on the GPU (codes and scales copied there; few rows through
// quant_gemm, the prompt through dequantised tiles) as on the CPU, in every format.
TEST(CudaDecode, QuantisedModelDecodesAsOnTheCpu) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const uint64_t seed = test_seed();
  for (quant::WeightFormat format : {quant::WeightFormat::int8, quant::WeightFormat::q8_0, quant::WeightFormat::q4_0,
                                     quant::WeightFormat::nf4}) {
    SCOPED_TRACE(quant::weight_format_name(format));
    auto on_cpu = small_llama(seed), on_gpu = small_llama(seed);
    quantize_model(*on_cpu, format);
    quantize_model(*on_gpu, format);
    on_gpu->to(Device::cuda);
    Generator gen(seed + 5);
    expect_same_greedy_decoding(*on_cpu, *on_gpu, {random_ids(20, gen), random_ids(7, gen)}, 8, /*drop_row=*/false);
    on_gpu->to(Device::cpu);  // and back: the host copy of the codes is what runs again
    expect_same_greedy_decoding(*on_cpu, *on_gpu, {random_ids(5, gen)}, 4, /*drop_row=*/false);
  }
}

TEST(CudaDecode, GreedyDecodingMatchesTheCpu) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const uint64_t seed = test_seed();
  for (auto make : {small_gpt2, small_llama}) {
    auto on_cpu = make(seed), on_gpu = make(seed);
    const auto cpu_params = on_cpu->parameters(), gpu_params = on_gpu->parameters();
    ASSERT_EQ(cpu_params.size(), gpu_params.size());
    for (size_t i = 0; i < cpu_params.size(); ++i)
      ASSERT_EQ(cpu_params[i].to_vector(), gpu_params[i].to_vector()) << "the same seed must give the same weights";
    on_gpu->to(Device::cuda);
    ASSERT_EQ(on_gpu->device(), Device::cuda);
    Generator gen(seed + 3);
    expect_same_greedy_decoding(*on_cpu, *on_gpu, {random_ids(7, gen)}, 16, /*drop_row=*/false);
    // Left padding: prompts of 3, 9 and 6 tokens; the longest leaves after step 5.
    expect_same_greedy_decoding(*on_cpu, *on_gpu, {random_ids(3, gen), random_ids(9, gen), random_ids(6, gen)}, 16,
                                /*drop_row=*/true);
  }
}

TEST(CudaDecode, SelectRowsEqualsTheCpu) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  Generator gen(test_seed() + 4);
  const int64_t B = 3, H = 2, L = 9, D = 6;
  nn::KVCache cpu, gpu;
  for (int layer = 0; layer < 2; ++layer) {
    cpu.k.push_back(random_normal({B, H, L, D}, gen));
    cpu.v.push_back(random_normal({B, H, L, D}, gen));
    gpu.k.push_back(to_device(cpu.k.back(), Device::cuda));
    gpu.v.push_back(to_device(cpu.v.back(), Device::cuda));
  }
  cpu.length = gpu.length = 7;
  cpu.pad = gpu.pad = {3, 1, 2};  // the kept rows {2, 0, 2} share 2 slots of padding: dropped
  cpu.select_rows({2, 0, 2});
  gpu.select_rows({2, 0, 2});
  ASSERT_EQ(gpu.length, cpu.length);
  EXPECT_EQ(cpu.length, 5);
  EXPECT_EQ(gpu.pad, cpu.pad);
  for (size_t i = 0; i < cpu.k.size(); ++i)
    for (auto [c, g] : {std::pair{&cpu.k[i], &gpu.k[i]}, std::pair{&cpu.v[i], &gpu.v[i]}}) {
      ASSERT_EQ(g->device(), Device::cuda);
      ASSERT_EQ(g->shape(), c->shape());
      // Slots past length were never written: compare the filled ones, bit for bit.
      EXPECT_EQ(g->slice_view(2, 0, gpu.length).contiguous().to_vector(),
                c->slice_view(2, 0, cpu.length).contiguous().to_vector())
          << "layer " << i;
    }
}
