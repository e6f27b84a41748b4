// A weight matrix (rows = output features, cols = input features) held quantised in the layout
// the matmul kernels read (ops/quant_matmul.cpp): per block of `blocksize` consecutive columns of
// a row, codes and one f32 scale, value = scale * table[code] (4-bit) or scale * code (8-bit).
// 4-bit blocks store element j of the first half in the low nibble of byte j and element
// j + blocksize/2 in its high nibble (ggml's Q4_0 order), so a kernel decodes a half-block with
// one mask or one shift. The formats (quant/formats.h) map onto it:
//   int8   row-wise absmax: one block per row, scale absmax / 127
//   q8_0   blocks of 32, scale d
//   q4_0   blocks of 32, table q - 8, scale d
//   nf4    blocks of 64, table the NF4 code book, scale the block's absmax (double
//          quantisation undone, so the kernel reads plain f32 scales)
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace kotoba::quant {

enum class WeightFormat { int8, q8_0, q4_0, nf4 };
const char* weight_format_name(WeightFormat format);
// "int8", "q8_0", "q4_0" or "nf4"; anything else is an Error listing them.
WeightFormat parse_weight_format(std::string_view name);
int weight_format_bits(WeightFormat format);
// The format's block along a row (int8: the whole row, reported as 0).
int64_t weight_format_block(WeightFormat format);
// Whether a matrix with `cols` columns can be held in `format` (whole blocks, a multiple of 32).
bool packable(WeightFormat format, int64_t cols);

struct PackedWeight {
  WeightFormat format = WeightFormat::int8;
  int64_t rows = 0, cols = 0, blocksize = 0;
  int bits = 8;
  std::vector<uint8_t> codes;    // rows * cols (8-bit) or rows * cols / 2 (4-bit) bytes
  std::vector<float> scales;     // rows * cols / blocksize
  std::array<float, 16> table{};  // 4-bit: code -> value before scaling
  // int8 only, LLM.int8() (Dettmers et al. 2022; ops/quant_matmul.cpp): when set, quantized_linear
  // quantises the activations to int8 too, per row, except the input features where some row's
  // |x| > outlier_threshold, which are multiplied in f32 (threshold 0: no such features). Off:
  // weight-only int8 (f32 activations), the default.
  bool int8_activations = false;
  float outlier_threshold = 0;

  // Everything but the codes and scales, for a rows x cols matrix in `format` (checks packable).
  static PackedWeight layout(WeightFormat format, int64_t rows, int64_t cols);
  int64_t row_bytes() const { return bits == 8 ? cols : cols / 2; }
  size_t bytes() const { return codes.size() + scales.size() * sizeof(float); }
  // Rows [begin, end) as f32, row-major (end - begin) x cols.
  void dequantize_rows(int64_t begin, int64_t end, float* out) const;
};

// Quantises a row-major rows x cols f32 matrix (an Error when !packable or a value is not finite).
PackedWeight pack_weight(const float* w, int64_t rows, int64_t cols, WeightFormat format);

}  // namespace kotoba::quant
