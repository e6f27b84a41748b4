// safetensors reader (mmap, validated) and atomic writer.
// Layout: u64 little-endian header length N, N bytes of JSON, then the data region; each
// tensor's data_offsets are [begin, end) relative to the start of the data region.
#include "io/safetensors.h"

#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

namespace kotoba {
namespace {

// The reference implementation refuses headers over 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeName {
  const char* name;
  DType dtype;
};
constexpr DTypeName kDTypeNames[] = {
    {"F32", DType::f32}, {"BF16", DType::bf16}, {"F16", DType::f16}, {"F64", DType::f64},
    {"I32", DType::i32}, {"I64", DType::i64},   {"I8", DType::i8},
};

bool dtype_from_name(const std::string& name, DType& out) {
  for (const auto& d : kDTypeNames)
    if (name == d.name) {
      out = d.dtype;
      return true;
    }
  return false;
}

const char* name_of_dtype(DType t) {
  for (const auto& d : kDTypeNames)
    if (d.dtype == t) return d.name;
  return nullptr;
}

std::string errno_text() { return std::strerror(errno); }

// A read-only file mapping, unmapped when the last tensor viewing it goes away.
struct Mapping {
  void* base = nullptr;
  size_t bytes = 0;
  ~Mapping() {
    if (base) munmap(base, bytes);
  }
};

// Reads a uint64 from a JSON value that must be a non-negative integer.
uint64_t json_u64(const nlohmann::json& value, const std::string& path, const std::string& what) {
  KOTOBA_CHECK(value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0),
               path, ": ", what, " must be a non-negative integer, got ", value.dump());
  return value.get<uint64_t>();
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

}  // namespace

SafeTensors load_safetensors(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KOTOBA_CHECK(fd >= 0, path, ": cannot open safetensors file: ", errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string why = errno_text();
    ::close(fd);
    throw Error(detail::concat(path, ": cannot stat: ", why));
  }
  uint64_t file_bytes = uint64_t(st.st_size);
  if (file_bytes < 8) {
    ::close(fd);
    throw Error(detail::concat(path, ": truncated safetensors file: ", file_bytes,
                               " bytes, fewer than the 8-byte header length"));
  }
  auto mapping = std::make_shared<Mapping>();
  void* base = ::mmap(nullptr, size_t(file_bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  KOTOBA_CHECK(base != MAP_FAILED, path, ": cannot memory-map the file: ", std::strerror(map_errno));
  mapping->base = base;
  mapping->bytes = size_t(file_bytes);
  const auto* bytes = static_cast<const unsigned char*>(base);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  KOTOBA_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len,
               " is absurd (limit ", kMaxHeaderBytes, " bytes); not a safetensors file?");
  KOTOBA_CHECK(header_len <= file_bytes - 8, path, ": truncated safetensors file: header length ", header_len,
               " exceeds the ", file_bytes - 8, " bytes after the length field");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_bytes = file_bytes - data_start;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8),
                                   reinterpret_cast<const char*>(bytes + data_start));
  } catch (const nlohmann::json::exception& e) {
    throw Error(detail::concat(path, ": corrupt safetensors header (invalid JSON): ", e.what()));
  }
  KOTOBA_CHECK(header.is_object(), path, ": corrupt safetensors header: expected a JSON object, got ",
               header.type_name());

  SafeTensors result;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& value = it.value();
    if (name == "__metadata__") {
      KOTOBA_CHECK(value.is_object(), path, ": __metadata__ must be an object of strings, got ", value.type_name());
      for (auto m = value.begin(); m != value.end(); ++m) {
        KOTOBA_CHECK(m.value().is_string(), path, ": __metadata__ field '", m.key(), "' must be a string, got ",
                     m.value().dump());
        result.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = detail::concat("tensor '", name, "'");
    KOTOBA_CHECK(value.is_object(), path, ": ", where, ": expected an object, got ", value.dump());
    for (const char* field : {"dtype", "shape", "data_offsets"})
      KOTOBA_CHECK(value.contains(field), path, ": ", where, ": missing field '", field, "'");
    KOTOBA_CHECK(value["dtype"].is_string(), path, ": ", where, ": dtype must be a string, got ", value["dtype"].dump());
    Entry e;
    e.name = name;
    std::string dtype_text = value["dtype"].get<std::string>();
    KOTOBA_CHECK(dtype_from_name(dtype_text, e.dtype), path, ": ", where, ": unsupported dtype '", dtype_text,
                 "' (supported: F32, BF16, F16, F64, I32, I64, I8)");
    const auto& shape = value["shape"];
    KOTOBA_CHECK(shape.is_array(), path, ": ", where, ": shape must be an array, got ", shape.dump());
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : shape) {
      uint64_t dim = json_u64(d, path, where + " shape entry");
      KOTOBA_CHECK(dim <= uint64_t(std::numeric_limits<int64_t>::max()), path, ": ", where, ": dimension ", dim,
                   " is too large");
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / dim) overflow = true;
      numel *= dim;
      e.shape.push_back(int64_t(dim));
    }
    KOTOBA_CHECK(!overflow, path, ": ", where, ": shape ", shape.dump(), " has too many elements");
    const auto& offsets = value["data_offsets"];
    KOTOBA_CHECK(offsets.is_array() && offsets.size() == 2, path, ": ", where,
                 ": data_offsets must be [begin, end], got ", offsets.dump());
    e.begin = json_u64(offsets[0], path, where + " data_offsets[0]");
    e.end = json_u64(offsets[1], path, where + " data_offsets[1]");
    KOTOBA_CHECK(e.begin <= e.end, path, ": ", where, ": data_offsets [", e.begin, ", ", e.end, "] run backwards");
    KOTOBA_CHECK(e.end <= data_bytes, path, ": ", where, ": data_offsets [", e.begin, ", ", e.end,
                 "] run past the end of the data (", data_bytes, " bytes; truncated file?)");
    uint64_t expected = dtype_bytes(e.dtype, size_t(numel));
    KOTOBA_CHECK(e.end - e.begin == expected, path, ": ", where, ": shape ", shape_str(e.shape), " of dtype ",
                 dtype_text, " needs ", expected, " bytes, but data_offsets [", e.begin, ", ", e.end, "] hold ",
                 e.end - e.begin);
    entries.push_back(std::move(e));
  }

  // No two tensors may share bytes.
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    KOTOBA_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, path, ": tensors '", by_offset[i - 1]->name,
                 "' [", by_offset[i - 1]->begin, ", ", by_offset[i - 1]->end, ") and '", by_offset[i]->name, "' [",
                 by_offset[i]->begin, ", ", by_offset[i]->end, ") overlap");

  for (const auto& e : entries) {
    unsigned char* src = static_cast<unsigned char*>(base) + data_start + e.begin;
    size_t nbytes = size_t(e.end - e.begin);
    size_t element = dtype_bytes(e.dtype, 1);
    Tensor t;
    if (nbytes > 0 && reinterpret_cast<uintptr_t>(src) % element == 0) {
      auto impl = std::make_shared<TensorImpl>();
      impl->storage = std::make_shared<Storage>(src, nbytes, Device::cpu, mapping);
      impl->shape = e.shape;
      impl->strides.assign(e.shape.size(), 1);
      for (size_t i = e.shape.size(); i-- > 1;) impl->strides[i - 1] = impl->strides[i] * e.shape[i];
      impl->dtype = e.dtype;
      t = Tensor(std::move(impl));
    } else {
      // Unaligned (or empty): kernels may use aligned loads, so copy into our own memory.
      t = Tensor::empty(e.shape, e.dtype);
      if (nbytes) std::memcpy(t.raw(), src, nbytes);
    }
    result.tensors.emplace(e.name, std::move(t));
  }
  return result;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  std::vector<Tensor> payload;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    KOTOBA_CHECK(name != "__metadata__", path, ": a tensor may not be named __metadata__");
    KOTOBA_CHECK(tensor.defined(), path, ": tensor '", name, "' is undefined");
    KOTOBA_CHECK(tensor.device() == Device::cpu, path, ": tensor '", name, "' is on ", device_name(tensor.device()),
                 "; move it to the cpu before saving");
    const char* dtype = name_of_dtype(tensor.dtype());
    KOTOBA_CHECK(dtype != nullptr, path, ": tensor '", name, "' has dtype ", dtype_name(tensor.dtype()),
                 ", which safetensors cannot hold");
    Tensor data = tensor.contiguous();
    uint64_t nbytes = data.nbytes();
    header[name] = {{"dtype", dtype}, {"shape", data.shape()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    payload.push_back(std::move(data));
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data region starts 8-byte aligned (as the reference writer does).
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  write_file_atomically(path, [&](const FileSink& write) {
    unsigned char length[8];
    uint64_t header_len = header_text.size();
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(header_len >> (8 * i));
    write(length, 8);
    write(header_text.data(), header_text.size());
    for (const auto& t : payload)
      if (t.nbytes()) write(t.raw(), t.nbytes());
  });
}

}  // namespace kotoba
