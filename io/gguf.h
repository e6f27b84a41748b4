// GGUF (v3), the single-file model format of ggml and llama.cpp: a validating reader (in memory or
// memory-mapped), an atomic writer, and the tensor encodings F32, F16, BF16, Q8_0 and Q4_0 both ways.
// Enum values are ggml's own, since they are what the file stores. Model export/import between a
// HF model directory and GGUF lives in io/gguf_convert.h.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kotoba {

// gguf_metadata_value_type: the type tag of a metadata value.
enum class GGUFValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
  u64 = 10, i64 = 11, f64 = 12,
};
const char* gguf_value_type_name(GGUFValueType type);

// ggml_type: how a tensor's elements are stored. Only the types kotoba encodes and decodes are
// listed; a file with any other type is rejected with its number and the tensor's name.
enum class GGMLType : uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 8, bf16 = 30 };
const char* ggml_type_name(GGMLType type);
// Elements per block and bytes per block (Q8_0: 32 elements as an f16 scale + 32 int8 codes).
int64_t ggml_block_size(GGMLType type);
int64_t ggml_block_bytes(GGMLType type);

// A metadata value. Scalars keep their own type; numeric arrays keep their little-endian bytes
// (so a million-entry array costs its size, not a million objects); string arrays are strings;
// arrays of arrays are values.
struct GGUFValue {
  GGUFValueType type = GGUFValueType::u32;
  GGUFValueType element_type = GGUFValueType::u8;  // arrays only
  uint64_t bits = 0;     // integers and bool (signed ones sign-extended), f32/f64 as their bits
  std::string text;      // string
  std::vector<uint8_t> numbers;        // array of a numeric or bool type: raw elements
  std::vector<std::string> strings;    // array of strings
  std::vector<GGUFValue> arrays;       // array of arrays

  static GGUFValue u32(uint32_t v);
  static GGUFValue i32(int32_t v);
  static GGUFValue u64(uint64_t v);
  static GGUFValue f32(float v);
  static GGUFValue f64(double v);
  static GGUFValue boolean(bool v);
  static GGUFValue string(std::string v);
  static GGUFValue string_array(std::vector<std::string> v);
  static GGUFValue f32_array(const std::vector<float>& v);
  static GGUFValue i32_array(const std::vector<int32_t>& v);

  bool is_integer() const;
  bool is_float() const { return type == GGUFValueType::f32 || type == GGUFValueType::f64; }
  // Checked reads; `what` (file and key) names the value in the error.
  int64_t as_int(const std::string& what) const;     // any integer type that fits int64
  double as_float(const std::string& what) const;    // f32, f64 or an integer
  bool as_bool(const std::string& what) const;
  const std::string& as_string(const std::string& what) const;
  uint64_t array_size() const;
  const std::vector<std::string>& as_strings(const std::string& what) const;
  std::vector<double> as_numbers(const std::string& what) const;  // array of any numeric type
  std::string summary() const;  // short human-readable form (arrays: type and length)
};

struct GGUFTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // as stored: innermost (fastest-varying) first
  GGMLType type = GGMLType::f32;
  uint64_t offset = 0;         // from the start of the data section
  uint64_t nbytes = 0;
  std::span<const uint8_t> data;  // the tensor's bytes inside the file

  // kotoba's (row-major, outermost first) shape: dims reversed.
  Shape shape() const;
  int64_t numel() const;
};

struct GGUFFile {
  std::string name;  // the file, for error messages
  uint32_t version = 3;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // where the tensor data section starts
  std::vector<std::pair<std::string, GGUFValue>> metadata;  // in file order
  std::vector<GGUFTensorInfo> tensors;                     // in file order
  std::shared_ptr<const void> backing;  // keeps the bytes `tensors[i].data` point into alive

  const GGUFValue* find(const std::string& key) const;
  const GGUFValue& get(const std::string& key) const;  // throws naming the file and the key
  const GGUFTensorInfo* find_tensor(const std::string& name) const;
  const GGUFTensorInfo& tensor(const std::string& name) const;  // throws naming the file and tensor
};

// Parses a whole GGUF file held in memory (`name` stands for the file in errors). Every field is
// validated before it is used — magic, version (2 or 3), counts against the bytes left, string
// and array lengths, value types, nesting depth, tensor names (unique), dims, types, offsets
// (aligned, inside the file, not overlapping) and general.alignment (a power of two) — so no
// input reads out of bounds or makes it allocate more than a small multiple of the input size.
// Any defect throws kotoba::Error naming `name` and the key or tensor at fault. The result owns
// a copy of the bytes.
GGUFFile gguf_parse(std::span<const uint8_t> bytes, const std::string& name);

// Reads a GGUF file through a read-only memory mapping that the result keeps alive.
GGUFFile gguf_load(const std::string& path);

// A tensor's values as a contiguous f32 tensor of shape info.shape() (F16/BF16 exactly, Q8_0
// dequantised: d * q). `file` labels errors.
Tensor gguf_tensor_to_f32(const GGUFTensorInfo& info, const std::string& file);

// Encoders of `count` f32 values (count a multiple of the block size) into `out`
// (ggml_tensor_bytes(type, count) bytes). Q8_0 is ggml's reference quantiser bit for bit:
// d = absmax / 127 in f32, codes round(x / d) half away from zero, d stored as f16.
size_t ggml_tensor_bytes(GGMLType type, int64_t count);
void ggml_encode(GGMLType type, const float* values, int64_t count, uint8_t* out);
void ggml_decode(GGMLType type, const uint8_t* bytes, int64_t count, float* out);

// One tensor to write: `values` (any float dtype and layout, row-major shape; converted on the
// fly) stored as `type`. The innermost dimension must be a multiple of the type's block size.
struct GGUFTensorToWrite {
  std::string name;
  Tensor values;
  GGMLType type = GGMLType::f32;
};

// Writes a GGUF v3 file atomically (temporary file, fsync, rename). `metadata` is written in the
// given order; general.alignment, when present, must be a u32 power of two and sets the alignment.
// Names must be unique; errors name `path` and the key or tensor at fault.
void gguf_write(const std::string& path, const std::vector<std::pair<std::string, GGUFValue>>& metadata,
                const std::vector<GGUFTensorToWrite>& tensors);

}  // namespace kotoba
