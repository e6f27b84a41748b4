// The quantised formats of quant/formats.h. Arithmetic is float32 in the order the defining
// libraries use (bitsandbytes multiplies by the reciprocal of the absmax; ggml quantises with the
// f32 scale and stores it as f16), so the codes come out identical, not merely close.
#include "quant/formats.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace kotoba::quant {

namespace {

template <size_t N>
uint8_t nearest_in(const std::array<float, N>& code, float x) {
  // The first code value >= x, then whichever of it and its lower neighbour is nearer.
  const auto it = std::lower_bound(code.begin(), code.end(), x);
  if (it == code.begin()) return 0;
  if (it == code.end()) return uint8_t(N - 1);
  const size_t hi = size_t(it - code.begin());
  return std::fabs(x - code[hi - 1]) <= std::fabs(code[hi] - x) ? uint8_t(hi - 1) : uint8_t(hi);
}

float block_absmax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

void check_finite(const float* x, int64_t n, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    KOTOBA_CHECK(std::isfinite(x[i]), what, ": value ", i, " is ", x[i], " (only finite values can be quantised)");
}

void put_f16(uint8_t* out, float v) {
  const f16 h = f32_to_f16(v);
  std::memcpy(out, &h.bits, 2);
}

float get_f16(const uint8_t* in) {
  f16 h;
  std::memcpy(&h.bits, in, 2);
  return f16_to_f32(h);
}

}  // namespace

const std::array<float, 16>& nf4_code() {
  // The NormalFloat-4 values of QLoRA (Dettmers et al., 2023), as bitsandbytes stores them.
  static const std::array<float, 16> code = {
      -1.0f,
      -0.6961928009986877f,
      -0.5250730514526367f,
      -0.39491748809814453f,
      -0.28444138169288635f,
      -0.18477343022823334f,
      -0.09105003625154495f,
      0.0f,
      0.07958029955625534f,
      0.16093020141124725f,
      0.24611230194568634f,
      0.33791524171829224f,
      0.44070982933044434f,
      0.5626170039176941f,
      0.7229568362236023f,
      1.0f};
  return code;
}

const std::array<float, 256>& dynamic_code() {
  static const std::array<float, 256> code = [] {
    // For exponents 10^-6 .. 10^0, 2^i fractions (the midpoints of a linspace over [0.1, 1]) of
    // each sign; then 0 and 1: 2 * 127 + 2 = 256 values.
    // Computed in double and rounded once: torch.linspace's float32 rounding depends on the CPU's
    // vector width, so bitsandbytes' own table differs between machines in the last bit.
    std::vector<float> values;
    const int max_exponent_bits = 7;
    for (int i = 0; i < max_exponent_bits; ++i) {
      const int64_t steps = (int64_t(1) << i) + 1;
      const double scale = std::pow(10.0, double(i - (max_exponent_bits - 1)));
      for (int64_t j = 0; j + 1 < steps; ++j) {
        const double lo = 0.1 + 0.9 * double(j) / double(steps - 1), hi = 0.1 + 0.9 * double(j + 1) / double(steps - 1);
        values.push_back(float(scale * (lo + hi) / 2));
        values.push_back(float(-scale * (lo + hi) / 2));
      }
    }
    values.push_back(0.0f);
    values.push_back(1.0f);
    std::sort(values.begin(), values.end());
    std::array<float, 256> out{};
    std::copy(values.begin(), values.end(), out.begin());
    return out;
  }();
  return code;
}

uint8_t nearest_nf4(float x) { return nearest_in(nf4_code(), x); }
uint8_t nearest_dynamic(float x) { return nearest_in(dynamic_code(), x); }

Blockwise8 quantize_blockwise_dynamic(const float* x, int64_t n, int64_t blocksize) {
  KOTOBA_CHECK(blocksize > 0, "quantize_blockwise: block size must be positive, got ", blocksize);
  check_finite(x, n, "quantize_blockwise");
  Blockwise8 q;
  q.numel = n;
  q.blocksize = blocksize;
  q.codes.resize(size_t(n));
  q.absmax.resize(size_t((n + blocksize - 1) / blocksize));
  for (int64_t b = 0; b * blocksize < n; ++b) {
    const int64_t start = b * blocksize, len = std::min(blocksize, n - start);
    const float absmax = block_absmax(x + start, len);
    q.absmax[size_t(b)] = absmax;
    const float inverse = absmax != 0.0f ? 1.0f / absmax : 0.0f;
    for (int64_t i = 0; i < len; ++i) q.codes[size_t(start + i)] = nearest_dynamic(x[start + i] * inverse);
  }
  return q;
}

void dequantize_blockwise_dynamic(const Blockwise8& q, float* out) {
  const std::array<float, 256>& code = dynamic_code();
  for (int64_t i = 0; i < q.numel; ++i) out[i] = code[q.codes[size_t(i)]] * q.absmax[size_t(i / q.blocksize)];
}

std::vector<float> Nf4::block_scales() const {
  if (!options.double_quant) return absmax;
  std::vector<float> scales(size_t(nested.numel));
  dequantize_blockwise_dynamic(nested, scales.data());
  for (float& s : scales) s += offset;
  return scales;
}

size_t Nf4::bytes() const {
  return packed.size() + absmax.size() * 4 + nested.codes.size() + nested.absmax.size() * 4 + (options.double_quant ? 4 : 0);
}

Nf4 quantize_nf4(const float* x, int64_t n, const Nf4Options& options) {
  KOTOBA_CHECK(options.blocksize > 0 && options.blocksize % 2 == 0, "quantize_nf4: block size must be positive and even, got ",
               options.blocksize);
  check_finite(x, n, "quantize_nf4");
  Nf4 q;
  q.numel = n;
  q.options = options;
  q.packed.assign(size_t((n + 1) / 2), 0);
  std::vector<float> absmax(size_t(q.blocks()));
  for (int64_t b = 0; b < q.blocks(); ++b) {
    const int64_t start = b * options.blocksize, len = std::min(options.blocksize, n - start);
    absmax[size_t(b)] = block_absmax(x + start, len);
    const float inverse = absmax[size_t(b)] != 0.0f ? 1.0f / absmax[size_t(b)] : 0.0f;
    for (int64_t i = start; i < start + len; ++i) {
      const uint8_t c = nearest_nf4(x[i] * inverse);
      q.packed[size_t(i / 2)] |= uint8_t(i % 2 == 0 ? c << 4 : c);
    }
  }
  if (!options.double_quant) {
    q.absmax = std::move(absmax);
    return q;
  }
  // bitsandbytes: offset = absmax.mean() (float32), then the centred constants quantised 8-bit.
  double sum = 0;
  for (float a : absmax) sum += a;
  q.offset = float(sum / double(absmax.size()));
  for (float& a : absmax) a -= q.offset;
  q.nested = quantize_blockwise_dynamic(absmax.data(), int64_t(absmax.size()), options.dq_blocksize);
  return q;
}

void dequantize_nf4(const Nf4& q, float* out) {
  const std::array<float, 16>& code = nf4_code();
  const std::vector<float> scales = q.block_scales();
  for (int64_t i = 0; i < q.numel; ++i) {
    const uint8_t byte = q.packed[size_t(i / 2)];
    const uint8_t c = i % 2 == 0 ? uint8_t(byte >> 4) : uint8_t(byte & 15);
    out[i] = code[c] * scales[size_t(i / q.options.blocksize)];
  }
}

Int8Rows quantize_int8_rows(const float* x, int64_t rows, int64_t cols) {
  check_finite(x, rows * cols, "quantize_int8");
  Int8Rows q;
  q.rows = rows;
  q.cols = cols;
  q.codes.resize(size_t(rows * cols));
  q.absmax.resize(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    const float absmax = block_absmax(row, cols);
    q.absmax[size_t(r)] = absmax;
    // bitsandbytes: round(x * (127 / absmax)), rounding half to even as torch.round does.
    const float scale = absmax != 0.0f ? 127.0f / absmax : 0.0f;
    for (int64_t c = 0; c < cols; ++c) q.codes[size_t(r * cols + c)] = int8_t(std::nearbyint(row[c] * scale));
  }
  return q;
}

void dequantize_int8_rows(const Int8Rows& q, float* out) {
  const float inv127 = 7.874015718698502e-3f;
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c)
      out[r * q.cols + c] = (float(q.codes[size_t(r * q.cols + c)]) * q.absmax[size_t(r)]) * inv127;
}

void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  KOTOBA_CHECK(n % kGgmlBlock == 0, "quantize_q8_0: ", n, " values are not a whole number of 32-value blocks");
  for (int64_t b = 0; b < n / kGgmlBlock; ++b) {
    const float* v = x + kGgmlBlock * b;
    uint8_t* block = out + kQ8_0Bytes * b;
    // ggml quantises with the f32 scale and its f32 reciprocal, and stores the scale as f16.
    const float d = block_absmax(v, kGgmlBlock) / 127.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(block, d);
    for (int j = 0; j < kGgmlBlock; ++j) block[2 + j] = uint8_t(int8_t(std::round(v[j] * inverse)));
  }
}

void dequantize_q8_0(const uint8_t* in, int64_t n, float* out) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b) {
    const uint8_t* block = in + kQ8_0Bytes * b;
    const float d = get_f16(block);
    for (int j = 0; j < kGgmlBlock; ++j) out[kGgmlBlock * b + j] = float(int8_t(block[2 + j])) * d;
  }
}

void quantize_q4_0(const float* x, int64_t n, uint8_t* out) {
  KOTOBA_CHECK(n % kGgmlBlock == 0, "quantize_q4_0: ", n, " values are not a whole number of 32-value blocks");
  for (int64_t b = 0; b < n / kGgmlBlock; ++b) {
    const float* v = x + kGgmlBlock * b;
    uint8_t* block = out + kQ4_0Bytes * b;
    // The signed value of largest magnitude maps to -8, so the full range [-8, 7] is used.
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kGgmlBlock; ++j)
      if (amax < std::fabs(v[j])) {
        amax = std::fabs(v[j]);
        max = v[j];
      }
    const float d = max / -8.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(block, d);
    for (int j = 0; j < kGgmlBlock / 2; ++j) {
      const int lo = std::min(15, int(int8_t(v[j] * inverse + 8.5f)));
      const int hi = std::min(15, int(int8_t(v[j + kGgmlBlock / 2] * inverse + 8.5f)));
      block[2 + j] = uint8_t(lo | (hi << 4));
    }
  }
}

void dequantize_q4_0(const uint8_t* in, int64_t n, float* out) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b) {
    const uint8_t* block = in + kQ4_0Bytes * b;
    const float d = get_f16(block);
    for (int j = 0; j < kGgmlBlock / 2; ++j) {
      out[kGgmlBlock * b + j] = float(int(block[2 + j] & 15) - 8) * d;
      out[kGgmlBlock * b + j + kGgmlBlock / 2] = float(int(block[2 + j] >> 4) - 8) * d;
    }
  }
}

}  // namespace kotoba::quant
