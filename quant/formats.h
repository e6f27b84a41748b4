// Quantised number formats, bit for bit as the libraries that define them store them:
//  - NF4 (bitsandbytes' 4-bit NormalFloat): blockwise absmax (block 64), two codes per byte with
//    the first element in the high nibble, and optional double quantisation of the absmax
//    constants (their mean subtracted, then 8-bit blockwise with bitsandbytes' dynamic code,
//    block 256);
//  - bitsandbytes' 8-bit blockwise quantisation with the dynamic (signed) code;
//  - int8 row-wise absmax (LLM.int8()'s weight format): q = round(127 x / absmax_row);
//  - ggml's Q4_0 and Q8_0 blocks of 32 (an f16 scale, then the codes), as llama.cpp reads them.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kotoba::quant {

// The 16 NF4 values (quantiles of N(0, 1) scaled to [-1, 1], with an exact 0), ascending.
const std::array<float, 16>& nf4_code();
// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), ascending.
const std::array<float, 256>& dynamic_code();

// The index of the code value nearest to x (codes ascending; ties go to the lower one).
uint8_t nearest_nf4(float x);
uint8_t nearest_dynamic(float x);

// bitsandbytes' quantize_blockwise with the dynamic code: per block absmax, codes of x / absmax.
struct Blockwise8 {
  int64_t numel = 0, blocksize = 0;
  std::vector<uint8_t> codes;  // numel
  std::vector<float> absmax;   // ceil(numel / blocksize)
};
Blockwise8 quantize_blockwise_dynamic(const float* x, int64_t n, int64_t blocksize);
void dequantize_blockwise_dynamic(const Blockwise8& q, float* out);

struct Nf4Options {
  int64_t blocksize = 64;
  bool double_quant = true;    // bitsandbytes' compress_statistics (QLoRA's bnb_4bit_use_double_quant)
  int64_t dq_blocksize = 256;  // block of the 8-bit quantisation of the absmax constants
};

struct Nf4 {
  int64_t numel = 0;
  Nf4Options options;
  std::vector<uint8_t> packed;  // (numel + 1) / 2 bytes: element 2i in the high nibble of byte i
  std::vector<float> absmax;    // per block, when !double_quant
  Blockwise8 nested;            // double_quant: the absmax constants minus `offset`, quantised
  float offset = 0;             // double_quant: the mean of the absmax constants
  int64_t blocks() const { return (numel + options.blocksize - 1) / options.blocksize; }
  // The per-block scale dequantisation multiplies by (the double quantisation undone).
  std::vector<float> block_scales() const;
  size_t bytes() const;  // storage, for memory reports
};
Nf4 quantize_nf4(const float* x, int64_t n, const Nf4Options& options = {});
void dequantize_nf4(const Nf4& q, float* out);

struct Int8Rows {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> codes;  // rows * cols
  std::vector<float> absmax;  // rows
};
Int8Rows quantize_int8_rows(const float* x, int64_t rows, int64_t cols);
void dequantize_int8_rows(const Int8Rows& q, float* out);  // codes * absmax / 127

// ggml blocks of 32: Q8_0 = f16 d + 32 int8 (x = d q); Q4_0 = f16 d + 16 bytes (x = d (q - 8),
// elements 0-15 in the low nibbles, 16-31 in the high ones). n must be a multiple of 32.
inline constexpr int64_t kGgmlBlock = 32, kQ8_0Bytes = 34, kQ4_0Bytes = 18;
void quantize_q8_0(const float* x, int64_t n, uint8_t* out);
void dequantize_q8_0(const uint8_t* in, int64_t n, float* out);
void quantize_q4_0(const float* x, int64_t n, uint8_t* out);
void dequantize_q4_0(const uint8_t* in, int64_t n, float* out);

}  // namespace kotoba::quant
