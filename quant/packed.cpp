// Quantising a weight matrix into the kernels' layout (see quant/packed.h) through the formats
// of quant/formats.h, so the codes are exactly those bitsandbytes or ggml would store.
#include "quant/packed.h"

#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/formats.h"

namespace kotoba::quant {

const char* weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::int8: return "int8";
    case WeightFormat::q8_0: return "q8_0";
    case WeightFormat::q4_0: return "q4_0";
    case WeightFormat::nf4: return "nf4";
  }
  return "?";
}

WeightFormat parse_weight_format(std::string_view name) {
  for (WeightFormat f : {WeightFormat::int8, WeightFormat::q8_0, WeightFormat::q4_0, WeightFormat::nf4})
    if (name == weight_format_name(f)) return f;
  throw Error(detail::concat("unknown quantisation format '", name, "': expected int8, q8_0, q4_0 or nf4"));
}

int weight_format_bits(WeightFormat format) {
  return format == WeightFormat::q4_0 || format == WeightFormat::nf4 ? 4 : 8;
}

int64_t weight_format_block(WeightFormat format) {
  switch (format) {
    case WeightFormat::int8: return 0;
    case WeightFormat::q8_0: case WeightFormat::q4_0: return kGgmlBlock;
    case WeightFormat::nf4: return 64;
  }
  return 0;
}

bool packable(WeightFormat format, int64_t cols) {
  const int64_t block = weight_format_block(format);
  return cols > 0 && cols % 32 == 0 && (block == 0 || cols % block == 0);
}

void PackedWeight::dequantize_rows(int64_t begin, int64_t end, float* out) const {
  const int64_t blocks_per_row = cols / blocksize;
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* code_row = codes.data() + r * row_bytes();
    const float* scale_row = scales.data() + r * blocks_per_row;
    float* o = out + (r - begin) * cols;
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      const float s = scale_row[b];
      if (bits == 8) {
        const int8_t* c = reinterpret_cast<const int8_t*>(code_row) + b * blocksize;
        for (int64_t j = 0; j < blocksize; ++j) o[b * blocksize + j] = float(c[j]) * s;
      } else {
        const uint8_t* c = code_row + b * blocksize / 2;
        const int64_t half = blocksize / 2;
        for (int64_t j = 0; j < half; ++j) {
          o[b * blocksize + j] = table[c[j] & 15] * s;
          o[b * blocksize + half + j] = table[c[j] >> 4] * s;
        }
      }
    }
  }
}

PackedWeight PackedWeight::layout(WeightFormat format, int64_t rows, int64_t cols) {
  KOTOBA_CHECK(rows > 0, "quantise: a weight matrix needs rows, got ", rows);
  const int64_t block = weight_format_block(format);
  KOTOBA_CHECK(packable(format, cols), "quantise: a matrix with ", cols, " columns cannot be held as ",
               weight_format_name(format), " (the columns must be a multiple of ", block ? block : 32, ")");
  PackedWeight p;
  p.format = format;
  p.rows = rows;
  p.cols = cols;
  p.bits = weight_format_bits(format);
  p.blocksize = block ? block : cols;
  if (format == WeightFormat::nf4) p.table = nf4_code();
  if (format == WeightFormat::q4_0)
    for (int i = 0; i < 16; ++i) p.table[size_t(i)] = float(i - 8);
  return p;
}

PackedWeight pack_weight(const float* w, int64_t rows, int64_t cols, WeightFormat format) {
  PackedWeight p = PackedWeight::layout(format, rows, cols);
  const int64_t n = rows * cols, block = p.blocksize;
  switch (format) {
    case WeightFormat::int8: {
      Int8Rows q = quantize_int8_rows(w, rows, cols);
      p.codes.resize(size_t(n));
      std::memcpy(p.codes.data(), q.codes.data(), size_t(n));
      p.scales.resize(size_t(rows));
      for (int64_t r = 0; r < rows; ++r) p.scales[size_t(r)] = q.absmax[size_t(r)] * 7.874015718698502e-3f;
      break;
    }
    case WeightFormat::q8_0:
    case WeightFormat::q4_0: {
      const bool q4 = format == WeightFormat::q4_0;
      const int64_t block_bytes = q4 ? kQ4_0Bytes : kQ8_0Bytes, blocks = n / kGgmlBlock, payload = block_bytes - 2;
      std::vector<uint8_t> bytes(size_t(blocks * block_bytes));
      (q4 ? quantize_q4_0 : quantize_q8_0)(w, n, bytes.data());
      p.codes.resize(size_t(blocks * payload));
      p.scales.resize(size_t(blocks));
      for (int64_t b = 0; b < blocks; ++b) {
        f16 d;
        std::memcpy(&d.bits, bytes.data() + b * block_bytes, 2);
        p.scales[size_t(b)] = f16_to_f32(d);
        std::memcpy(p.codes.data() + b * payload, bytes.data() + b * block_bytes + 2, size_t(payload));
      }
      break;
    }
    case WeightFormat::nf4: {
      Nf4 q = quantize_nf4(w, n);
      p.scales = q.block_scales();
      // bitsandbytes' order (element 2i high nibble, 2i + 1 low) into the half-block order.
      p.codes.assign(size_t(n / 2), 0);
      const int64_t half = block / 2;
      for (int64_t i = 0; i < n; ++i) {
        const uint8_t byte = q.packed[size_t(i / 2)];
        const uint8_t c = i % 2 == 0 ? uint8_t(byte >> 4) : uint8_t(byte & 15);
        const int64_t b = i / block, j = i % block;
        uint8_t& dst = p.codes[size_t(b * half + (j % half))];
        dst = uint8_t(dst | (j < half ? c : c << 4));
      }
      break;
    }
  }
  return p;
}

}  // namespace kotoba::quant
