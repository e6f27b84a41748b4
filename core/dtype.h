// Element types and devices of a Tensor, and the bf16 <-> f32 conversions every backend uses.
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

}  // namespace kotoba
