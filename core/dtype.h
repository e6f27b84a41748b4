// Element types and devices of a Tensor, and the bf16/f16 <-> f32 conversions every backend uses.
// Enums are append-only: a value once written to a file keeps its meaning.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>

namespace kotoba {

enum class DType : uint8_t {
  f32 = 0,
  bf16 = 1,
  f16 = 2,
  i8 = 3,
  i32 = 4,
  q4 = 5,  // packed 4-bit: two codes per byte, low nibble first
  f64 = 6,
  i64 = 7,
};

enum class Device : uint8_t { cpu = 0, cuda = 1 };

// Bytes needed for `count` elements; q4 packs two elements per byte.
constexpr size_t dtype_bytes(DType t, size_t count) {
  switch (t) {
    case DType::f32: case DType::i32: return 4 * count;
    case DType::bf16: case DType::f16: return 2 * count;
    case DType::i8: return count;
    case DType::q4: return (count + 1) / 2;
    case DType::f64: case DType::i64: return 8 * count;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i8: return "i8";
    case DType::i32: return "i32";
    case DType::q4: return "q4";
    case DType::f64: return "f64";
    case DType::i64: return "i64";
  }
  return "?";
}

constexpr std::string_view device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

// bfloat16 stored as its raw 16 bits; conversion rounds to nearest even, NaN stays NaN.
struct bf16 {
  uint16_t bits;
};

inline float bf16_to_f32(bf16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

// IEEE binary16 stored as its raw 16 bits. Written in plain integer arithmetic (not F16C) so
// that every translation unit, including CUDA host code, can use it; bulk conversions in hot
// paths may use F16C and are tested bit-exact against these.
struct f16 {
  uint16_t bits;
};

// Exact: every half value (subnormals, infinities, NaN payloads) is a float.
inline float f16_to_f32(f16 h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exponent = (h.bits >> 10) & 0x1fu;
  uint32_t mantissa = h.bits & 0x3ffu;
  uint32_t u;
  if (exponent == 0x1f) {
    u = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    u = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else {
    float magnitude = float(mantissa) * 0x1p-24f;  // zero or subnormal: mantissa units of 2^-24
    std::memcpy(&u, &magnitude, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Rounds to nearest even, as numpy, torch and F16C do: beyond 65520 (halfway past the largest
// half, 65504) to infinity, below 2^-14 to subnormals, below 2^-25 to signed zero. A NaN stays
// a NaN, quieted, keeping the top bits of its payload and its sign.
inline f16 f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return f16{uint16_t(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu))};
  if (magnitude >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};
  if (magnitude >= 0x38800000u) {  // normal half
    uint32_t h = (magnitude - 0x38000000u) >> 13;
    uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: still right
    return f16{uint16_t(sign | h)};
  }
  uint32_t exponent = magnitude >> 23;
  if (exponent < 102) return f16{uint16_t(sign)};  // below 2^-25: rounds to zero
  // Subnormal half: value / 2^-24 = significand * 2^(exponent - 126), rounded to nearest even.
  uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - exponent;  // 14..24
  uint32_t h = significand >> shift;
  uint32_t rest = significand & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) ++h;  // 0x400 is the smallest normal: still right
  return f16{uint16_t(sign | h)};
}

}  // namespace kotoba
