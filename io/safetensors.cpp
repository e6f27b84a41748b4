// safetensors reader (mmap or memory, validated), atomic writer, sharded HF checkpoints, and
// the float conversions model loaders need. Layout: u64 little-endian header length N, N bytes
// of JSON, then the data region; each tensor's data_offsets are [begin, end) relative to the
// start of the data region.
#include "io/safetensors.h"

#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

namespace kotoba {
namespace {

namespace fs = std::filesystem;

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
// Dtypes of the format that kotoba has no element type for: named as such in the error, so a
// user can tell "kotoba cannot hold this" from "this file is corrupt".
constexpr const char* kUnsupportedDTypeNames[] = {"BOOL", "U8",      "I16",     "U16",     "U32", "U64", "F8_E4M3",
                                                  "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};

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

// A JSON value for an error message: scalars as written (long strings cut), containers by kind
// and size only, since dumping an attacker's nested value could be huge or recurse deeply.
std::string describe(const nlohmann::json& value) {
  if (value.is_array()) return detail::concat("an array of ", value.size(), " elements");
  if (value.is_object()) return detail::concat("an object of ", value.size(), " fields");
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

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
               path, ": ", what, " must be a non-negative integer, got ", describe(value));
  return value.get<uint64_t>();
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

struct Header {
  std::map<std::string, std::string> metadata;
  std::vector<Entry> entries;
  uint64_t data_start = 0;  // file offset of the data region
};

// Validates everything about a file's bytes short of making tensors: after this, every entry's
// [data_start + begin, data_start + end) lies inside `bytes` and holds exactly its shape.
Header parse_header(const unsigned char* bytes, uint64_t file_bytes, const std::string& path) {
  KOTOBA_CHECK(file_bytes >= 8, path, ": truncated safetensors file: ", file_bytes,
               " bytes, fewer than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  KOTOBA_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len,
               " is absurd (limit ", kMaxHeaderBytes, " bytes); not a safetensors file?");
  KOTOBA_CHECK(header_len <= file_bytes - 8, path, ": truncated safetensors file: header length ", header_len,
               " exceeds the ", file_bytes - 8, " bytes after the length field");
  Header result;
  result.data_start = 8 + header_len;
  const uint64_t data_bytes = file_bytes - result.data_start;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8),
                                   reinterpret_cast<const char*>(bytes + result.data_start));
  } catch (const nlohmann::json::exception& e) {
    throw Error(detail::concat(path, ": corrupt safetensors header (invalid JSON): ", e.what()));
  }
  KOTOBA_CHECK(header.is_object(), path, ": corrupt safetensors header: expected a JSON object, got ",
               header.type_name());

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& value = it.value();
    if (name == "__metadata__") {
      KOTOBA_CHECK(value.is_object(), path, ": __metadata__ must be an object of strings, got ", describe(value));
      for (auto m = value.begin(); m != value.end(); ++m) {
        KOTOBA_CHECK(m.value().is_string(), path, ": __metadata__ field '", m.key(), "' must be a string, got ",
                     describe(m.value()));
        result.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = detail::concat("tensor '", name, "'");
    KOTOBA_CHECK(value.is_object(), path, ": ", where, ": expected an object, got ", describe(value));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      KOTOBA_CHECK(value.contains(field), path, ": ", where, ": missing field '", field, "'");
    KOTOBA_CHECK(value["dtype"].is_string(), path, ": ", where, ": dtype must be a string, got ",
                 describe(value["dtype"]));
    Entry e;
    e.name = name;
    std::string dtype_text = value["dtype"].get<std::string>();
    if (!dtype_from_name(dtype_text, e.dtype)) {
      bool known = std::any_of(std::begin(kUnsupportedDTypeNames), std::end(kUnsupportedDTypeNames),
                               [&](const char* n) { return dtype_text == n; });
      throw Error(detail::concat(path, ": ", where, ": ",
                                 known ? "dtype '" + dtype_text + "' is not supported by kotoba"
                                       : "unknown dtype " + describe(value["dtype"]),
                                 " (kotoba reads F32, BF16, F16, F64, I32, I64, I8)"));
    }
    const auto& shape = value["shape"];
    KOTOBA_CHECK(shape.is_array(), path, ": ", where, ": shape must be an array, got ", describe(shape));
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : shape) {
      uint64_t dim = json_u64(d, path, where + " shape entry");
      KOTOBA_CHECK(dim <= uint64_t(std::numeric_limits<int64_t>::max()), path, ": ", where, ": dimension ", dim,
                   " is too large");
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / dim) overflow = true;
      numel = overflow ? numel : numel * dim;
      e.shape.push_back(int64_t(dim));
    }
    KOTOBA_CHECK(!overflow, path, ": ", where, ": shape ", shape_str(e.shape), " has too many elements");
    const auto& offsets = value["data_offsets"];
    KOTOBA_CHECK(offsets.is_array() && offsets.size() == 2, path, ": ", where,
                 ": data_offsets must be [begin, end], got ", describe(offsets));
    e.begin = json_u64(offsets[0], path, where + " data_offsets[0]");
    e.end = json_u64(offsets[1], path, where + " data_offsets[1]");
    KOTOBA_CHECK(e.begin <= e.end, path, ": ", where, ": data_offsets [", e.begin, ", ", e.end, "] run backwards");
    KOTOBA_CHECK(e.end <= data_bytes, path, ": ", where, ": data_offsets [", e.begin, ", ", e.end,
                 "] run past the end of the data (", data_bytes, " bytes; truncated file?)");
    uint64_t expected = dtype_bytes(e.dtype, size_t(numel));
    KOTOBA_CHECK(e.end - e.begin == expected, path, ": ", where, ": shape ", shape_str(e.shape), " of dtype ",
                 dtype_text, " needs ", expected, " bytes, but data_offsets [", e.begin, ", ", e.end, "] hold ",
                 e.end - e.begin);
    result.entries.push_back(std::move(e));
  }

  // No two tensors may share bytes.
  std::vector<const Entry*> by_offset;
  for (const auto& e : result.entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    KOTOBA_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, path, ": tensors '", by_offset[i - 1]->name,
                 "' [", by_offset[i - 1]->begin, ", ", by_offset[i - 1]->end, ") and '", by_offset[i]->name, "' [",
                 by_offset[i]->begin, ", ", by_offset[i]->end, ") overlap");
  return result;
}

Tensor copy_of(const Entry& e, const unsigned char* src) {
  Tensor t = Tensor::empty(e.shape, e.dtype);
  if (e.end > e.begin) std::memcpy(t.raw(), src, size_t(e.end - e.begin));
  return t;
}

// Rounds to nearest even; beyond the float range to infinity (an out-of-range cast is UB).
float f64_to_f32(double v) {
  constexpr double kRoundsToInfinity = 0x1.ffffffp+127;  // halfway between FLT_MAX and 2^128
  if (v >= kRoundsToInfinity) return std::numeric_limits<float>::infinity();
  if (v <= -kRoundsToInfinity) return -std::numeric_limits<float>::infinity();
  return float(v);
}

bool is_floating(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16 || t == DType::f64; }

// Element-wise conversion of a contiguous cpu tensor into a new contiguous one.
template <typename From, typename To, typename Convert>
Tensor convert_elements(const Tensor& src, DType target, Convert convert) {
  Tensor out = Tensor::empty(src.shape(), target);
  const From* in = static_cast<const From*>(src.raw());
  To* dst = static_cast<To*>(out.raw());
  const int64_t n = src.numel();
  for (int64_t i = 0; i < n; ++i) dst[i] = convert(in[i]);
  return out;
}

void check_floating_cpu(const Tensor& tensor, const std::string& name, const char* what) {
  KOTOBA_CHECK(tensor.defined(), what, ": ", name, " is undefined");
  KOTOBA_CHECK(tensor.device() == Device::cpu, what, ": ", name, " is on ", device_name(tensor.device()),
               "; move it to the cpu first");
  KOTOBA_CHECK(is_floating(tensor.dtype()), what, ": ", name, " has dtype ", dtype_name(tensor.dtype()),
               ", expected a floating dtype (f32, bf16, f16 or f64)");
}

// HF's file names (transformers.utils: SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, and the
// shard pattern of huggingface_hub's split_torch_state_dict_into_shards).
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string shard_file_name(size_t index, size_t count) {
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", index, count);
  return name;
}

// "model-DDDDD-of-DDDDD.safetensors": the only names an earlier save_model_weights may have left.
bool is_shard_file_name(const std::string& name) {
  const std::string pattern = "model-#####-of-#####.safetensors";
  if (name.size() != pattern.size()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (pattern[i] == '#' ? !std::isdigit(static_cast<unsigned char>(name[i])) : name[i] != pattern[i]) return false;
  return true;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, path, ": cannot open: ", errno_text());
  std::ostringstream text;
  text << in.rdbuf();
  KOTOBA_CHECK(!in.bad(), path, ": read failed");
  return text.str();
}

// The file names an index refers to, or nothing when it is absent or unreadable (used only to
// decide what an earlier save left behind).
std::set<std::string> files_named_by_index(const fs::path& index_path) {
  std::set<std::string> files;
  std::error_code ec;
  if (!fs::exists(index_path, ec)) return files;
  try {
    nlohmann::json index = nlohmann::json::parse(read_text_file(index_path.string()));
    for (const auto& [name, file] : index.at("weight_map").items())
      if (file.is_string()) files.insert(file.get<std::string>());
  } catch (const std::exception&) {
    // A broken index of an earlier save names nothing we need to protect.
  }
  return files;
}

void remove_file(const fs::path& path) {
  std::error_code ec;
  fs::remove(path, ec);
  KOTOBA_CHECK(!ec, path.string(), ": cannot remove the file of an earlier save: ", ec.message());
}

void sync_directory(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

SafeTensors parse_safetensors(std::span<const uint8_t> bytes, const std::string& name) {
  Header header = parse_header(bytes.data(), bytes.size(), name);
  SafeTensors result;
  result.metadata = std::move(header.metadata);
  for (const auto& e : header.entries)
    result.tensors.emplace(e.name, copy_of(e, bytes.data() + header.data_start + e.begin));
  return result;
}

SafeTensors load_safetensors(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KOTOBA_CHECK(fd >= 0, path, ": cannot open safetensors file: ", errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string why = errno_text();
    ::close(fd);
    throw Error(detail::concat(path, ": cannot stat: ", why));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(detail::concat(path, ": not a regular file"));
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

  Header header = parse_header(static_cast<const unsigned char*>(base), file_bytes, path);
  SafeTensors result;
  result.metadata = std::move(header.metadata);
  for (const auto& e : header.entries) {
    unsigned char* src = static_cast<unsigned char*>(base) + header.data_start + e.begin;
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
      t = copy_of(e, src);
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
    const char* dtype = name_of_dtype(tensor.dtype());
    KOTOBA_CHECK(dtype != nullptr, path, ": tensor '", name, "' has dtype ", dtype_name(tensor.dtype()),
                 ", which safetensors cannot hold");
    Tensor data = tensor.contiguous();
    if (data.device() != Device::cpu) {  // a parameter trained on a GPU: its bytes, copied to the host
      Tensor host = Tensor::empty(data.shape(), data.dtype(), Device::cpu);
      host.copy_from(data);
      data = host;
    }
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

Tensor to_f32(const Tensor& tensor, const std::string& name) {
  check_floating_cpu(tensor, name, "to_f32");
  Tensor src = tensor.contiguous();
  switch (src.dtype()) {
    case DType::f32: return src.clone();
    case DType::bf16: return convert_elements<bf16, float>(src, DType::f32, bf16_to_f32);
    case DType::f16: return convert_elements<f16, float>(src, DType::f32, f16_to_f32);
    case DType::f64: return convert_elements<double, float>(src, DType::f32, f64_to_f32);
    default: break;
  }
  throw Error(detail::concat("to_f32: ", name, ": unexpected dtype ", dtype_name(src.dtype())));
}

Tensor from_f32(const Tensor& tensor, DType dtype, const std::string& name) {
  check_floating_cpu(tensor, name, "from_f32");
  KOTOBA_CHECK(is_floating(dtype), "from_f32: ", name, ": target dtype ", dtype_name(dtype),
               " is not a floating dtype (f32, bf16, f16 or f64)");
  // Other sources go through f32: exact for bf16/f16 sources; an f64 source is rounded to f32
  // first (as Tensor::to does), which can differ from one direct rounding in the last bit.
  if (tensor.dtype() == DType::f64 && dtype == DType::f64) return tensor.contiguous().clone();
  Tensor src = tensor.dtype() == DType::f32 ? tensor.contiguous() : to_f32(tensor, name);
  switch (dtype) {
    case DType::f32: return src.same_storage(tensor) ? src.clone() : src;
    case DType::bf16: return convert_elements<float, bf16>(src, DType::bf16, f32_to_bf16);
    case DType::f16: return convert_elements<float, f16>(src, DType::f16, f32_to_f16);
    case DType::f64: return convert_elements<float, double>(src, DType::f64, [](float v) { return double(v); });
    default: break;
  }
  throw Error(detail::concat("from_f32: ", name, ": unexpected dtype ", dtype_name(dtype)));
}

std::map<std::string, Tensor> load_model_weights(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  KOTOBA_CHECK(fs::is_directory(root, ec), dir, ": not a directory (expected a model directory holding ",
               kSingleFile, " or ", kIndexFile, ")");
  const fs::path single = root / kSingleFile;
  if (fs::exists(single, ec)) return std::move(load_safetensors(single.string()).tensors);

  const fs::path index_path = root / kIndexFile;
  KOTOBA_CHECK(fs::exists(index_path, ec), dir, ": no model weights: neither ", kSingleFile, " nor ", kIndexFile,
               " is there");
  const std::string index_name = index_path.string();
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(read_text_file(index_name));
  } catch (const nlohmann::json::exception& e) {
    throw Error(detail::concat(index_name, ": invalid JSON: ", e.what()));
  }
  KOTOBA_CHECK(index.is_object(), index_name, ": expected a JSON object, got ", describe(index));
  KOTOBA_CHECK(index.contains("weight_map"), index_name, ": missing field 'weight_map'");
  const nlohmann::json& weight_map = index["weight_map"];
  KOTOBA_CHECK(weight_map.is_object(), index_name, ": weight_map must be an object of tensor name -> file, got ",
               describe(weight_map));
  if (index.contains("metadata"))
    KOTOBA_CHECK(index["metadata"].is_object(), index_name, ": metadata must be an object, got ",
                 describe(index["metadata"]));

  // Shard file -> the tensors the index puts there.
  std::map<std::string, std::set<std::string>> shards;
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    KOTOBA_CHECK(it.value().is_string(), index_name, ": weight_map['", it.key(), "'] must be a file name, got ",
                 describe(it.value()));
    std::string file = it.value().get<std::string>();
    // Plain names only: a checkpoint must not make us read outside its directory.
    KOTOBA_CHECK(!file.empty() && file != "." && file != ".." && file.find('/') == std::string::npos &&
                     file.find('\\') == std::string::npos && file.find('\0') == std::string::npos,
                 index_name, ": weight_map['", it.key(), "'] = ", describe(it.value()),
                 " is not a plain file name inside ", dir);
    shards[file].insert(it.key());
  }

  std::map<std::string, Tensor> weights;
  for (const auto& [file, names] : shards) {
    const fs::path shard_path = root / file;
    KOTOBA_CHECK(fs::is_regular_file(shard_path, ec), index_name, ": shard ", file, " (holding '", *names.begin(),
                 "' and ", names.size() - 1, " more) is missing from ", dir);
    SafeTensors shard = load_safetensors(shard_path.string());
    for (const auto& name : names)
      KOTOBA_CHECK(shard.tensors.count(name), shard_path.string(), ": tensor '", name, "' is not in this shard, but ",
                   kIndexFile, " says it is");
    for (auto& [name, tensor] : shard.tensors) {
      if (!names.count(name)) {
        std::string listed_for = weight_map.contains(name) && weight_map[name].is_string()
                                     ? "listed for shard " + weight_map[name].get<std::string>()
                                     : std::string("not listed");
        throw Error(detail::concat(shard_path.string(), ": tensor '", name, "' is in this shard but ", listed_for,
                                   " in ", kIndexFile, " (a shard of another save?)"));
      }
      weights.emplace(name, std::move(tensor));
    }
  }
  return weights;
}

void save_model_weights(const std::string& dir, const std::map<std::string, Tensor>& tensors,
                        int64_t max_shard_bytes, const std::map<std::string, std::string>& metadata) {
  const fs::path root(dir);
  std::error_code ec;
  KOTOBA_CHECK(max_shard_bytes >= 0, dir, ": max_shard_bytes must be >= 0 (0: one file), got ", max_shard_bytes);
  KOTOBA_CHECK(fs::is_directory(root, ec), dir, ": not a directory (create it before saving model weights)");
  std::map<std::string, std::string> file_metadata = metadata;
  file_metadata.emplace("format", "pt");

  // Fill shards in name order; a tensor that would overflow a non-empty shard starts the next.
  std::vector<std::map<std::string, Tensor>> groups(1);
  uint64_t group_bytes = 0, total_bytes = 0;
  for (const auto& [name, tensor] : tensors) {
    KOTOBA_CHECK(tensor.defined(), dir, ": tensor '", name, "' is undefined");
    uint64_t bytes = tensor.nbytes();
    if (max_shard_bytes > 0 && !groups.back().empty() && group_bytes + bytes > uint64_t(max_shard_bytes)) {
      groups.emplace_back();
      group_bytes = 0;
    }
    groups.back().emplace(name, tensor);
    group_bytes += bytes;
    total_bytes += bytes;
  }

  const fs::path single = root / kSingleFile, index_path = root / kIndexFile;
  std::set<std::string> keep;
  if (groups.size() == 1) {
    save_safetensors(single.string(), tensors, file_metadata);
    keep.insert(kSingleFile);
  } else {
    std::vector<std::string> names;
    for (size_t i = 0; i < groups.size(); ++i) names.push_back(shard_file_name(i + 1, groups.size()));
    // Same shard count as the old save: overwriting its shards under its index would let a crash
    // leave a mix of old and new shards that loads without complaint. Drop the old index first.
    std::set<std::string> old_files = files_named_by_index(index_path);
    bool overwrites = std::any_of(names.begin(), names.end(), [&](const std::string& n) { return old_files.count(n); });
    if (overwrites) {
      remove_file(index_path);
      sync_directory(root);
    }
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < groups.size(); ++i) {
      save_safetensors((root / names[i]).string(), groups[i], file_metadata);
      for (const auto& [name, tensor] : groups[i]) weight_map[name] = names[i];
      keep.insert(names[i]);
    }
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", std::move(weight_map)}};
    write_file_atomically(index_path.string(), index.dump(2) + "\n");
    keep.insert(kIndexFile);
  }

  // The new set is complete: remove what an earlier save of another layout left.
  std::set<std::string> stale;
  if (!keep.count(kSingleFile)) stale.insert(kSingleFile);
  if (!keep.count(kIndexFile)) stale.insert(kIndexFile);
  for (const auto& entry : fs::directory_iterator(root)) {
    std::string name = entry.path().filename().string();
    if (is_shard_file_name(name) && !keep.count(name)) stale.insert(name);
  }
  for (const auto& name : stale)
    if (fs::exists(root / name, ec)) remove_file(root / name);
  sync_directory(root);
}

}  // namespace kotoba
