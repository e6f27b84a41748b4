// GGUF reader and writer: every length, count, type and offset is checked against the bytes
// actually present before anything is read or allocated, since GGUF files come from anywhere.
#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "quant/formats.h"

namespace kotoba {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxNesting = 8;        // arrays of arrays: real files use none
constexpr uint32_t kMaxDims = 4;      // GGML_MAX_DIMS: llama.cpp reads no more
constexpr uint64_t kMaxKeyBytes = 65535;  // the spec's limit on key length

bool is_known_value_type(uint32_t t) { return t <= 12; }

// Bytes a value of this type takes at least in the file, to bound array counts before reserving.
uint64_t min_encoded_size(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::u8: case GGUFValueType::i8: case GGUFValueType::boolean: return 1;
    case GGUFValueType::u16: case GGUFValueType::i16: return 2;
    case GGUFValueType::u32: case GGUFValueType::i32: case GGUFValueType::f32: return 4;
    case GGUFValueType::u64: case GGUFValueType::i64: case GGUFValueType::f64: return 8;
    case GGUFValueType::string: return 8;
    case GGUFValueType::array: return 12;
  }
  return 1;
}

// Fixed size of a numeric/bool element; 0 for strings and arrays.
uint64_t scalar_size(GGUFValueType t) {
  return (t == GGUFValueType::string || t == GGUFValueType::array) ? 0 : min_encoded_size(t);
}

bool is_known_ggml_type(uint32_t t) { return t == 0 || t == 1 || t == 2 || t == 8 || t == 30; }

class Reader {
 public:
  Reader(std::span<const uint8_t> bytes, const std::string& file) : bytes_(bytes), file_(file) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  void need(uint64_t n, const std::string& what) const {
    KOTOBA_CHECK(n <= remaining(), file_, ": truncated GGUF file: ", what, " needs ", n, " bytes at offset ", pos_,
                 " but only ", remaining(), " remain");
  }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const std::string& what) {
    uint64_t length = read<uint64_t>(what + " (string length)");
    need(length, what + " (a string of " + std::to_string(length) + " bytes)");
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), size_t(length));
    pos_ += length;
    return s;
  }

  const uint8_t* take(uint64_t n, const std::string& what) {
    need(n, what);
    const uint8_t* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }

 private:
  std::span<const uint8_t> bytes_;
  const std::string& file_;
  uint64_t pos_ = 0;
};

GGUFValueType read_value_type(Reader& r, const std::string& file, const std::string& what) {
  uint32_t t = r.read<uint32_t>(what + " (value type)");
  KOTOBA_CHECK(is_known_value_type(t), file, ": ", what, ": unknown GGUF value type ", t,
               " (expected 0..12: u8, i8, u16, i16, u32, i32, f32, bool, string, array, u64, i64, f64)");
  return GGUFValueType(t);
}

GGUFValue read_value(Reader& r, GGUFValueType type, const std::string& file, const std::string& what, int depth) {
  GGUFValue v;
  v.type = type;
  switch (type) {
    case GGUFValueType::u8: v.bits = r.read<uint8_t>(what); break;
    case GGUFValueType::i8: v.bits = uint64_t(int64_t(r.read<int8_t>(what))); break;
    case GGUFValueType::u16: v.bits = r.read<uint16_t>(what); break;
    case GGUFValueType::i16: v.bits = uint64_t(int64_t(r.read<int16_t>(what))); break;
    case GGUFValueType::u32: v.bits = r.read<uint32_t>(what); break;
    case GGUFValueType::i32: v.bits = uint64_t(int64_t(r.read<int32_t>(what))); break;
    case GGUFValueType::f32: v.bits = r.read<uint32_t>(what); break;
    case GGUFValueType::u64: case GGUFValueType::i64: case GGUFValueType::f64: v.bits = r.read<uint64_t>(what); break;
    case GGUFValueType::boolean: {
      uint8_t b = r.read<uint8_t>(what);
      KOTOBA_CHECK(b <= 1, file, ": ", what, ": a bool must be 0 or 1, got ", int(b));
      v.bits = b;
      break;
    }
    case GGUFValueType::string: v.text = r.read_string(what); break;
    case GGUFValueType::array: {
      KOTOBA_CHECK(depth < kMaxNesting, file, ": ", what, ": arrays nested deeper than ", kMaxNesting, " levels");
      v.element_type = read_value_type(r, file, what + " (array element type)");
      uint64_t count = r.read<uint64_t>(what + " (array length)");
      uint64_t min_size = min_encoded_size(v.element_type);
      KOTOBA_CHECK(count <= r.remaining() / min_size, file, ": ", what, ": array of ", count, " ",
                   gguf_value_type_name(v.element_type), " values cannot fit in the ", r.remaining(),
                   " bytes left in the file");
      if (uint64_t size = scalar_size(v.element_type)) {
        const uint8_t* p = r.take(count * size, what);
        v.numbers.assign(p, p + count * size);
        if (v.element_type == GGUFValueType::boolean)
          for (uint64_t i = 0; i < count; ++i)
            KOTOBA_CHECK(p[i] <= 1, file, ": ", what, "[", i, "]: a bool must be 0 or 1, got ", int(p[i]));
      } else if (v.element_type == GGUFValueType::string) {
        v.strings.reserve(size_t(count));
        for (uint64_t i = 0; i < count; ++i) v.strings.push_back(r.read_string(what + "[" + std::to_string(i) + "]"));
      } else {
        v.arrays.reserve(size_t(count));
        for (uint64_t i = 0; i < count; ++i) {
          std::string item = what + "[" + std::to_string(i) + "]";
          v.arrays.push_back(read_value(r, GGUFValueType::array, file, item, depth + 1));
        }
      }
      break;
    }
  }
  return v;
}

uint64_t align_up(uint64_t x, uint64_t alignment) { return (x + alignment - 1) / alignment * alignment; }

GGUFFile parse_into(std::span<const uint8_t> bytes, const std::string& name, std::shared_ptr<const void> backing) {
  GGUFFile out;
  out.name = name;
  out.backing = std::move(backing);
  Reader r(bytes, name);
  KOTOBA_CHECK(bytes.size() >= 4, name, ": not a GGUF file: ", bytes.size(), " bytes, too short for the magic");
  uint32_t magic = r.read<uint32_t>("magic");
  KOTOBA_CHECK(magic == kMagic, name, ": not a GGUF file: the first 4 bytes are not \"GGUF\"");
  out.version = r.read<uint32_t>("version");
  KOTOBA_CHECK(out.version == 2 || out.version == 3, name, ": unsupported GGUF version ", out.version,
               (out.version > 0xffff ? " (a big-endian file?)" : ""), "; expected 3 (or 2)");
  uint64_t tensor_count = r.read<uint64_t>("tensor count");
  uint64_t kv_count = r.read<uint64_t>("metadata count");
  // A key/value pair takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8.
  KOTOBA_CHECK(kv_count <= r.remaining() / 13, name, ": header claims ", kv_count,
               " metadata entries, more than the file's ", r.remaining(), " remaining bytes can hold");
  KOTOBA_CHECK(tensor_count <= r.remaining() / 32, name, ": header claims ", tensor_count,
               " tensors, more than the file's ", r.remaining(), " remaining bytes can hold");

  std::set<std::string> keys;
  out.metadata.reserve(size_t(kv_count));
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string label = "metadata entry " + std::to_string(i);
    std::string key = r.read_string(label + " key");
    KOTOBA_CHECK(!key.empty() && key.size() <= kMaxKeyBytes, name, ": ", label, ": key length ", key.size(),
                 " (expected 1..", kMaxKeyBytes, " bytes)");
    KOTOBA_CHECK(keys.insert(key).second, name, ": metadata key '", key, "' appears twice");
    std::string what = "metadata '" + key + "'";
    GGUFValueType type = read_value_type(r, name, what);
    out.metadata.emplace_back(key, read_value(r, type, name, what, 0));
  }

  out.alignment = kDefaultAlignment;
  if (const GGUFValue* a = out.find("general.alignment")) {
    KOTOBA_CHECK(a->type == GGUFValueType::u32, name, ": general.alignment must be a u32, got ",
                 gguf_value_type_name(a->type));
    KOTOBA_CHECK(a->bits != 0 && (a->bits & (a->bits - 1)) == 0, name, ": general.alignment ", a->bits,
                 " is not a power of two");
    out.alignment = a->bits;
  }

  std::set<std::string> names;
  out.tensors.reserve(size_t(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GGUFTensorInfo t;
    t.name = r.read_string("tensor " + std::to_string(i) + " name");
    std::string what = "tensor '" + t.name + "'";
    KOTOBA_CHECK(!t.name.empty(), name, ": tensor ", i, " has an empty name");
    KOTOBA_CHECK(names.insert(t.name).second, name, ": ", what, " appears twice");
    uint32_t n_dims = r.read<uint32_t>(what + " dimension count");
    KOTOBA_CHECK(n_dims >= 1 && n_dims <= kMaxDims, name, ": ", what, " has ", n_dims, " dimensions (expected 1..",
                 kMaxDims, ")");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = r.read<uint64_t>(what + " dimension");
      KOTOBA_CHECK(dim >= 1 && dim <= (uint64_t(1) << 62) / numel, name, ": ", what, " dimension ", d, " is ", dim,
                   " (expected >= 1, and at most 2^62 elements in all)");
      numel *= dim;
      t.dims.push_back(dim);
    }
    uint32_t type = r.read<uint32_t>(what + " type");
    KOTOBA_CHECK(is_known_ggml_type(type), name, ": ", what, " has ggml type ", type,
                 ", which kotoba does not read (supported: 0 F32, 1 F16, 2 Q4_0, 8 Q8_0, 30 BF16)");
    t.type = GGMLType(type);
    uint64_t block = uint64_t(ggml_block_size(t.type));
    KOTOBA_CHECK(t.dims[0] % block == 0, name, ": ", what, " innermost dimension ", t.dims[0],
                 " is not a multiple of the ", ggml_type_name(t.type), " block size ", block);
    t.nbytes = numel / block * uint64_t(ggml_block_bytes(t.type));
    t.offset = r.read<uint64_t>(what + " data offset");
    KOTOBA_CHECK(t.offset % out.alignment == 0, name, ": ", what, " data offset ", t.offset,
                 " is not a multiple of the alignment ", out.alignment);
    out.tensors.push_back(std::move(t));
  }

  out.data_offset = align_up(r.pos(), out.alignment);
  uint64_t data_bytes = bytes.size() > out.data_offset ? bytes.size() - out.data_offset : 0;
  if (!out.tensors.empty())
    KOTOBA_CHECK(out.data_offset <= bytes.size(), name, ": truncated GGUF file: the tensor data should start at byte ",
                 out.data_offset, " but the file has ", bytes.size());
  std::vector<const GGUFTensorInfo*> by_offset;
  for (GGUFTensorInfo& t : out.tensors) {
    KOTOBA_CHECK(t.offset <= data_bytes && t.nbytes <= data_bytes - t.offset, name, ": tensor '", t.name,
                 "' (", t.nbytes, " bytes at data offset ", t.offset, ") runs past the end of the file (",
                 data_bytes, " bytes of tensor data)");
    t.data = bytes.subspan(size_t(out.data_offset + t.offset), size_t(t.nbytes));
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GGUFTensorInfo* a, const GGUFTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    KOTOBA_CHECK(by_offset[i]->offset >= by_offset[i - 1]->offset + by_offset[i - 1]->nbytes, name, ": tensors '",
                 by_offset[i - 1]->name, "' and '", by_offset[i]->name, "' overlap in the data section");
  return out;
}

}  // namespace

const char* gguf_value_type_name(GGUFValueType type) {
  switch (type) {
    case GGUFValueType::u8: return "u8";
    case GGUFValueType::i8: return "i8";
    case GGUFValueType::u16: return "u16";
    case GGUFValueType::i16: return "i16";
    case GGUFValueType::u32: return "u32";
    case GGUFValueType::i32: return "i32";
    case GGUFValueType::f32: return "f32";
    case GGUFValueType::boolean: return "bool";
    case GGUFValueType::string: return "string";
    case GGUFValueType::array: return "array";
    case GGUFValueType::u64: return "u64";
    case GGUFValueType::i64: return "i64";
    case GGUFValueType::f64: return "f64";
  }
  return "?";
}

const char* ggml_type_name(GGMLType type) {
  switch (type) {
    case GGMLType::f32: return "F32";
    case GGMLType::f16: return "F16";
    case GGMLType::q4_0: return "Q4_0";
    case GGMLType::q8_0: return "Q8_0";
    case GGMLType::bf16: return "BF16";
  }
  return "?";
}

int64_t ggml_block_size(GGMLType type) { return type == GGMLType::q8_0 || type == GGMLType::q4_0 ? 32 : 1; }

int64_t ggml_block_bytes(GGMLType type) {
  switch (type) {
    case GGMLType::f32: return 4;
    case GGMLType::f16: case GGMLType::bf16: return 2;
    case GGMLType::q4_0: return 18;
    case GGMLType::q8_0: return 34;
  }
  return 0;
}

size_t ggml_tensor_bytes(GGMLType type, int64_t count) {
  return size_t(count / ggml_block_size(type) * ggml_block_bytes(type));
}

// ---- values ----

GGUFValue GGUFValue::u32(uint32_t v) { GGUFValue x; x.type = GGUFValueType::u32; x.bits = v; return x; }
GGUFValue GGUFValue::i32(int32_t v) { GGUFValue x; x.type = GGUFValueType::i32; x.bits = uint64_t(int64_t(v)); return x; }
GGUFValue GGUFValue::u64(uint64_t v) { GGUFValue x; x.type = GGUFValueType::u64; x.bits = v; return x; }
GGUFValue GGUFValue::f32(float v) {
  GGUFValue x;
  x.type = GGUFValueType::f32;
  uint32_t b;
  std::memcpy(&b, &v, 4);
  x.bits = b;
  return x;
}
GGUFValue GGUFValue::f64(double v) {
  GGUFValue x;
  x.type = GGUFValueType::f64;
  std::memcpy(&x.bits, &v, 8);
  return x;
}
GGUFValue GGUFValue::boolean(bool v) { GGUFValue x; x.type = GGUFValueType::boolean; x.bits = v; return x; }
GGUFValue GGUFValue::string(std::string v) { GGUFValue x; x.type = GGUFValueType::string; x.text = std::move(v); return x; }
GGUFValue GGUFValue::string_array(std::vector<std::string> v) {
  GGUFValue x;
  x.type = GGUFValueType::array;
  x.element_type = GGUFValueType::string;
  x.strings = std::move(v);
  return x;
}
GGUFValue GGUFValue::f32_array(const std::vector<float>& v) {
  GGUFValue x;
  x.type = GGUFValueType::array;
  x.element_type = GGUFValueType::f32;
  x.numbers.resize(v.size() * 4);
  if (!v.empty()) std::memcpy(x.numbers.data(), v.data(), x.numbers.size());
  return x;
}
GGUFValue GGUFValue::i32_array(const std::vector<int32_t>& v) {
  GGUFValue x;
  x.type = GGUFValueType::array;
  x.element_type = GGUFValueType::i32;
  x.numbers.resize(v.size() * 4);
  if (!v.empty()) std::memcpy(x.numbers.data(), v.data(), x.numbers.size());
  return x;
}

bool GGUFValue::is_integer() const {
  switch (type) {
    case GGUFValueType::u8: case GGUFValueType::i8: case GGUFValueType::u16: case GGUFValueType::i16:
    case GGUFValueType::u32: case GGUFValueType::i32: case GGUFValueType::u64: case GGUFValueType::i64: return true;
    default: return false;
  }
}

int64_t GGUFValue::as_int(const std::string& what) const {
  KOTOBA_CHECK(is_integer(), what, ": expected an integer, got a GGUF ", gguf_value_type_name(type));
  KOTOBA_CHECK(type != GGUFValueType::u64 || bits <= uint64_t(std::numeric_limits<int64_t>::max()), what, ": ", bits,
               " is too large");
  return int64_t(bits);
}

double GGUFValue::as_float(const std::string& what) const {
  if (type == GGUFValueType::f32) {
    uint32_t b = uint32_t(bits);
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  }
  if (type == GGUFValueType::f64) {
    double d;
    std::memcpy(&d, &bits, 8);
    return d;
  }
  KOTOBA_CHECK(is_integer(), what, ": expected a number, got a GGUF ", gguf_value_type_name(type));
  return type == GGUFValueType::u64 ? double(bits) : double(int64_t(bits));
}

bool GGUFValue::as_bool(const std::string& what) const {
  KOTOBA_CHECK(type == GGUFValueType::boolean, what, ": expected a bool, got a GGUF ", gguf_value_type_name(type));
  return bits != 0;
}

const std::string& GGUFValue::as_string(const std::string& what) const {
  KOTOBA_CHECK(type == GGUFValueType::string, what, ": expected a string, got a GGUF ", gguf_value_type_name(type));
  return text;
}

uint64_t GGUFValue::array_size() const {
  if (type != GGUFValueType::array) return 0;
  if (uint64_t size = scalar_size(element_type)) return numbers.size() / size;
  return element_type == GGUFValueType::string ? strings.size() : arrays.size();
}

const std::vector<std::string>& GGUFValue::as_strings(const std::string& what) const {
  KOTOBA_CHECK(type == GGUFValueType::array && element_type == GGUFValueType::string, what,
               ": expected an array of strings, got ", summary());
  return strings;
}

std::vector<double> GGUFValue::as_numbers(const std::string& what) const {
  KOTOBA_CHECK(type == GGUFValueType::array && scalar_size(element_type) > 0, what,
               ": expected an array of numbers, got ", summary());
  uint64_t size = scalar_size(element_type);
  std::vector<double> out(size_t(numbers.size() / size));
  for (size_t i = 0; i < out.size(); ++i) {
    GGUFValue item;
    item.type = element_type;
    const uint8_t* p = numbers.data() + i * size;
    switch (element_type) {
      case GGUFValueType::i8: out[i] = double(int8_t(p[0])); continue;
      case GGUFValueType::i16: { int16_t v; std::memcpy(&v, p, 2); out[i] = v; continue; }
      case GGUFValueType::i32: { int32_t v; std::memcpy(&v, p, 4); out[i] = v; continue; }
      case GGUFValueType::i64: { int64_t v; std::memcpy(&v, p, 8); out[i] = double(v); continue; }
      default: break;
    }
    std::memcpy(&item.bits, p, size);  // unsigned and float types: zero-extended bits
    out[i] = item.type == GGUFValueType::boolean ? double(item.bits) : item.as_float(what);
  }
  return out;
}

std::string GGUFValue::summary() const {
  std::ostringstream s;
  switch (type) {
    case GGUFValueType::string:
      if (text.size() > 60) s << '"' << text.substr(0, 57) << "...\" (" << text.size() << " bytes)";
      else s << '"' << text << '"';
      break;
    case GGUFValueType::array: s << "array of " << array_size() << " " << gguf_value_type_name(element_type); break;
    case GGUFValueType::boolean: s << (bits ? "true" : "false"); break;
    case GGUFValueType::f32: case GGUFValueType::f64: s << as_float(""); break;
    case GGUFValueType::u64: s << bits; break;
    default: s << int64_t(bits); break;
  }
  return s.str();
}

// ---- files ----

Shape GGUFTensorInfo::shape() const {
  Shape s;
  for (auto it = dims.rbegin(); it != dims.rend(); ++it) s.push_back(int64_t(*it));
  return s;
}

int64_t GGUFTensorInfo::numel() const {
  int64_t n = 1;
  for (uint64_t d : dims) n *= int64_t(d);
  return n;
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

const GGUFValue& GGUFFile::get(const std::string& key) const {
  const GGUFValue* v = find(key);
  KOTOBA_CHECK(v != nullptr, name, ": missing GGUF metadata key '", key, "'");
  return *v;
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& tensor_name) const {
  for (const GGUFTensorInfo& t : tensors)
    if (t.name == tensor_name) return &t;
  return nullptr;
}

const GGUFTensorInfo& GGUFFile::tensor(const std::string& tensor_name) const {
  const GGUFTensorInfo* t = find_tensor(tensor_name);
  KOTOBA_CHECK(t != nullptr, name, ": missing tensor '", tensor_name, "'");
  return *t;
}

GGUFFile gguf_parse(std::span<const uint8_t> bytes, const std::string& name) {
  auto copy = std::make_shared<std::vector<uint8_t>>(bytes.begin(), bytes.end());
  std::span<const uint8_t> view(copy->data(), copy->size());
  return parse_into(view, name, std::shared_ptr<const void>(copy, copy->data()));
}

GGUFFile gguf_load(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KOTOBA_CHECK(fd >= 0, path, ": cannot open (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  size_t size = size_t(st.st_size);
  if (size == 0) {
    ::close(fd);
    throw Error(path + ": not a GGUF file: the file is empty");
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  KOTOBA_CHECK(mapping != MAP_FAILED, path, ": cannot memory-map (", std::strerror(map_errno), ")");
  std::shared_ptr<const void> backing(mapping, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
  return parse_into(std::span<const uint8_t>(static_cast<const uint8_t*>(mapping), size), path, backing);
}

// ---- tensor encodings ----

void ggml_encode(GGMLType type, const float* values, int64_t count, uint8_t* out) {
  KOTOBA_CHECK(count % ggml_block_size(type) == 0, "ggml_encode: ", count, " values are not a whole number of ",
               ggml_type_name(type), " blocks");
  switch (type) {
    case GGMLType::f32: std::memcpy(out, values, size_t(count) * 4); return;
    case GGMLType::f16:
      for (int64_t i = 0; i < count; ++i) {
        f16 h = f32_to_f16(values[i]);
        std::memcpy(out + 2 * i, &h.bits, 2);
      }
      return;
    case GGMLType::bf16:
      for (int64_t i = 0; i < count; ++i) {
        bf16 h = f32_to_bf16(values[i]);
        std::memcpy(out + 2 * i, &h.bits, 2);
      }
      return;
    case GGMLType::q8_0: quant::quantize_q8_0(values, count, out); return;
    case GGMLType::q4_0: quant::quantize_q4_0(values, count, out); return;
  }
}

void ggml_decode(GGMLType type, const uint8_t* bytes, int64_t count, float* out) {
  switch (type) {
    case GGMLType::f32: std::memcpy(out, bytes, size_t(count) * 4); return;
    case GGMLType::f16:
      for (int64_t i = 0; i < count; ++i) {
        f16 h;
        std::memcpy(&h.bits, bytes + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      return;
    case GGMLType::bf16:
      for (int64_t i = 0; i < count; ++i) {
        bf16 h;
        std::memcpy(&h.bits, bytes + 2 * i, 2);
        out[i] = bf16_to_f32(h);
      }
      return;
    case GGMLType::q8_0: quant::dequantize_q8_0(bytes, count, out); return;
    case GGMLType::q4_0: quant::dequantize_q4_0(bytes, count, out); return;
  }
}

Tensor gguf_tensor_to_f32(const GGUFTensorInfo& info, const std::string& file) {
  KOTOBA_CHECK(info.data.size() == info.nbytes && info.nbytes == ggml_tensor_bytes(info.type, info.numel()), file,
               ": tensor '", info.name, "' has ", info.data.size(), " bytes of data, expected ",
               ggml_tensor_bytes(info.type, info.numel()));
  Tensor out = Tensor::empty(info.shape(), DType::f32);
  ggml_decode(info.type, info.data.data(), info.numel(), out.data<float>());
  return out;
}

// ---- writer ----

namespace {

void put_bytes(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <typename T>
void put(std::string& out, T v) {
  put_bytes(out, &v, sizeof v);
}
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_value(std::string& out, const GGUFValue& v, const std::string& what) {
  switch (v.type) {
    case GGUFValueType::u8: case GGUFValueType::i8: case GGUFValueType::boolean: put<uint8_t>(out, uint8_t(v.bits)); break;
    case GGUFValueType::u16: case GGUFValueType::i16: put<uint16_t>(out, uint16_t(v.bits)); break;
    case GGUFValueType::u32: case GGUFValueType::i32: case GGUFValueType::f32: put<uint32_t>(out, uint32_t(v.bits)); break;
    case GGUFValueType::u64: case GGUFValueType::i64: case GGUFValueType::f64: put<uint64_t>(out, v.bits); break;
    case GGUFValueType::string: put_string(out, v.text); break;
    case GGUFValueType::array: {
      put<uint32_t>(out, uint32_t(v.element_type));
      put<uint64_t>(out, v.array_size());
      if (uint64_t size = scalar_size(v.element_type)) {
        KOTOBA_CHECK(v.numbers.size() % size == 0, what, ": numeric array bytes are not a whole number of ",
                     gguf_value_type_name(v.element_type), " values");
        put_bytes(out, v.numbers.data(), v.numbers.size());
      } else if (v.element_type == GGUFValueType::string) {
        for (const std::string& s : v.strings) put_string(out, s);
      } else {
        for (const GGUFValue& item : v.arrays) {
          KOTOBA_CHECK(item.type == GGUFValueType::array, what, ": an array of arrays holds a non-array");
          put_value(out, item, what);
        }
      }
      break;
    }
  }
}

}  // namespace

void gguf_write(const std::string& path, const std::vector<std::pair<std::string, GGUFValue>>& metadata,
                const std::vector<GGUFTensorToWrite>& tensors) {
  uint64_t alignment = kDefaultAlignment;
  std::set<std::string> keys;
  for (const auto& [key, value] : metadata) {
    KOTOBA_CHECK(!key.empty() && key.size() <= kMaxKeyBytes, path, ": metadata key of length ", key.size());
    KOTOBA_CHECK(keys.insert(key).second, path, ": metadata key '", key, "' given twice");
    if (key == "general.alignment") {
      KOTOBA_CHECK(value.type == GGUFValueType::u32 && value.bits != 0 && (value.bits & (value.bits - 1)) == 0, path,
                   ": general.alignment must be a u32 power of two");
      alignment = value.bits;
    }
  }
  std::string header;
  put<uint32_t>(header, kMagic);
  put<uint32_t>(header, kVersion);
  put<uint64_t>(header, tensors.size());
  put<uint64_t>(header, metadata.size());
  for (const auto& [key, value] : metadata) {
    put_string(header, key);
    put<uint32_t>(header, uint32_t(value.type));
    put_value(header, value, path + ": metadata '" + key + "'");
  }
  std::set<std::string> names;
  std::vector<uint64_t> offsets;
  uint64_t offset = 0;
  for (const GGUFTensorToWrite& t : tensors) {
    std::string what = path + ": tensor '" + t.name + "'";
    KOTOBA_CHECK(!t.name.empty() && names.insert(t.name).second, what, ": empty or duplicate name");
    KOTOBA_CHECK(t.values.defined() && t.values.ndim() >= 1 && t.values.ndim() <= int(kMaxDims), what, ": has ",
                 t.values.defined() ? t.values.ndim() : 0, " dimensions (GGUF tensors have 1..4)");
    KOTOBA_CHECK(t.values.numel() > 0, what, ": is empty");
    KOTOBA_CHECK(t.values.size(-1) % ggml_block_size(t.type) == 0, what, ": innermost dimension ",
                 t.values.size(-1), " is not a multiple of the ", ggml_type_name(t.type), " block size ",
                 ggml_block_size(t.type));
    put_string(header, t.name);
    put<uint32_t>(header, uint32_t(t.values.ndim()));
    for (int d = t.values.ndim() - 1; d >= 0; --d) put<uint64_t>(header, uint64_t(t.values.size(d)));
    put<uint32_t>(header, uint32_t(t.type));
    put<uint64_t>(header, offset);
    offsets.push_back(offset);
    offset = align_up(offset + ggml_tensor_bytes(t.type, t.values.numel()), alignment);
  }
  header.resize(size_t(align_up(header.size(), alignment)), '\0');

  write_file_atomically(path, [&](const FileSink& sink) {
    sink(header.data(), header.size());
    uint64_t written = 0;
    const std::vector<uint8_t> zeros(size_t(alignment), 0);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const GGUFTensorToWrite& t = tensors[i];
      sink(zeros.data(), size_t(offsets[i] - written));
      Tensor values = to_f32(t.values, t.name);
      std::vector<uint8_t> encoded(ggml_tensor_bytes(t.type, values.numel()));
      ggml_encode(t.type, values.data<float>(), values.numel(), encoded.data());
      sink(encoded.data(), encoded.size());
      written = offsets[i] + encoded.size();
    }
  });
}

}  // namespace kotoba
