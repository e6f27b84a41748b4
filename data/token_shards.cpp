// Token shard files: streamed writing with a patched header, mmap reading with validation, and
// the meta.json index. The layout is documented in token_shards.h.
#include "core/atomic_file.h"
#include "data/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace kotoba::data {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[4] = {'K', 'T', 'O', 'K'};

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

void encode_header(uint8_t* h, uint32_t token_bytes, int64_t vocab_size, int64_t count) {
  std::memset(h, 0, kShardHeaderBytes);
  std::memcpy(h, kMagic, 4);
  put_u32(h + 4, kShardVersion);
  put_u32(h + 8, token_bytes);
  put_u32(h + 12, uint32_t(vocab_size));
  put_u64(h + 16, uint64_t(count));
}

}  // namespace

uint32_t token_bytes_for_vocab(int64_t vocab_size) {
  KOTOBA_CHECK(vocab_size > 0 && vocab_size <= int64_t(INT32_MAX), "token shards: vocab_size ", vocab_size,
               " is out of range (1 .. 2^31-1)");
  return vocab_size <= 65536 ? 2 : 4;
}

// ---- writing ----

struct ShardWriter::File {
  fs::path final_path, tmp_path;
  std::FILE* f = nullptr;
};

ShardWriter::ShardWriter(fs::path dir, std::string split, int64_t vocab_size, int64_t shard_tokens)
    : dir_(std::move(dir)), split_(std::move(split)), vocab_size_(vocab_size), shard_tokens_(shard_tokens),
      token_bytes_(token_bytes_for_vocab(vocab_size)) {
  KOTOBA_CHECK(shard_tokens > 0, "token shards: shard_tokens must be positive, got ", shard_tokens);
}

ShardWriter::~ShardWriter() {
  if (file_ && file_->f) {
    std::fclose(file_->f);
    std::error_code ec;
    fs::remove(file_->tmp_path, ec);
  }
}

void ShardWriter::open_next() {
  char name[64];
  std::snprintf(name, sizeof name, "%s_%06zu.bin", split_.c_str(), names_.size());
  file_ = std::make_unique<File>();
  file_->final_path = dir_ / name;
  file_->tmp_path = dir_ / (std::string(name) + ".tmp");
  file_->f = std::fopen(file_->tmp_path.c_str(), "wb");
  KOTOBA_CHECK(file_->f, "token shards: cannot create '", file_->tmp_path.string(), "': ", std::strerror(errno));
  uint8_t header[kShardHeaderBytes];
  encode_header(header, token_bytes_, vocab_size_, 0);  // the count is patched in on close
  KOTOBA_CHECK(std::fwrite(header, 1, sizeof header, file_->f) == sizeof header, "token shards: cannot write '",
               file_->tmp_path.string(), "'");
  names_.push_back(name);
  in_shard_ = 0;
}

void ShardWriter::close_current() {
  if (!file_) return;
  uint8_t header[kShardHeaderBytes];
  encode_header(header, token_bytes_, vocab_size_, in_shard_);
  bool ok = std::fseek(file_->f, 0, SEEK_SET) == 0 && std::fwrite(header, 1, sizeof header, file_->f) == sizeof header;
  ok = (std::fclose(file_->f) == 0) && ok;
  file_->f = nullptr;
  KOTOBA_CHECK(ok, "token shards: cannot finish writing '", file_->tmp_path.string(), "'");
  fs::rename(file_->tmp_path, file_->final_path);
  file_.reset();
}

void ShardWriter::append(std::span<const int32_t> tokens) {
  size_t pos = 0;
  while (pos < tokens.size()) {
    if (!file_) open_next();
    size_t n = std::min<size_t>(tokens.size() - pos, size_t(shard_tokens_ - in_shard_));
    buffer_.resize(n * token_bytes_);
    for (size_t i = 0; i < n; ++i) {
      int32_t id = tokens[pos + i];
      KOTOBA_CHECK(id >= 0 && id < vocab_size_, "token shards: token id ", id, " is outside the vocabulary [0, ",
                   vocab_size_, ")");
      uint8_t* p = buffer_.data() + i * token_bytes_;
      p[0] = uint8_t(id);
      p[1] = uint8_t(id >> 8);
      if (token_bytes_ == 4) {
        p[2] = uint8_t(id >> 16);
        p[3] = uint8_t(id >> 24);
      }
    }
    KOTOBA_CHECK(std::fwrite(buffer_.data(), 1, buffer_.size(), file_->f) == buffer_.size(),
                 "token shards: cannot write '", file_->tmp_path.string(), "' (disk full?)");
    in_shard_ += int64_t(n);
    total_ += int64_t(n);
    pos += n;
    if (in_shard_ == shard_tokens_) close_current();
  }
}

void ShardWriter::finish() { close_current(); }

// ---- reading ----

MappedShard::MappedShard(const fs::path& path) : path_(path) {
  const std::string name = path.string();
  int fd = ::open(name.c_str(), O_RDONLY);
  KOTOBA_CHECK(fd >= 0, "token shard '", name, "': cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error("token shard '" + name + "': cannot stat");
  }
  size_t bytes = size_t(st.st_size);
  if (bytes < kShardHeaderBytes) {
    ::close(fd);
    throw Error(detail::concat("token shard '", name, "' is truncated: ", bytes, " bytes, shorter than the ",
                               kShardHeaderBytes, "-byte header"));
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  KOTOBA_CHECK(map != MAP_FAILED, "token shard '", name, "': mmap failed: ", std::strerror(errno));
  map_ = map;
  map_bytes_ = bytes;
  auto fail = [&](const std::string& message) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw Error("token shard '" + name + "' " + message);
  };
  const auto* h = static_cast<const uint8_t*>(map_);
  if (std::memcmp(h, kMagic, 4) != 0) fail("is not a kotoba token shard (magic is not \"KTOK\")");
  uint32_t version = get_u32(h + 4);
  if (version != kShardVersion)
    fail(detail::concat("has format version ", version, "; this build reads version ", kShardVersion));
  token_bytes_ = get_u32(h + 8);
  if (token_bytes_ != 2 && token_bytes_ != 4)
    fail(detail::concat("has bytes-per-token ", token_bytes_, " in its header; expected 2 or 4"));
  vocab_size_ = int64_t(get_u32(h + 12));
  if (vocab_size_ <= 0 || (token_bytes_ == 2 && vocab_size_ > 65536))
    fail(detail::concat("has vocab_size ", vocab_size_, " that does not fit its ", token_bytes_, "-byte tokens"));
  uint64_t count = get_u64(h + 16);
  if (count > (uint64_t(1) << 48)) fail(detail::concat("has an implausible token count ", count, " in its header"));
  count_ = int64_t(count);
  size_t expected = kShardHeaderBytes + size_t(count_) * token_bytes_;
  if (bytes < expected)
    fail(detail::concat("is truncated: expected ", expected, " bytes (", kShardHeaderBytes, "-byte header + ", count_,
                        " tokens x ", token_bytes_, " bytes), the file has ", bytes));
  if (bytes > expected)
    fail(detail::concat("has ", bytes, " bytes, more than the ", expected, " its header describes (", count_,
                        " tokens x ", token_bytes_, " bytes + ", kShardHeaderBytes, ")"));
  tokens_ = h + kShardHeaderBytes;
  ::madvise(map_, map_bytes_, MADV_RANDOM);  // training reads short windows at random offsets
}

MappedShard::~MappedShard() {
  if (map_) ::munmap(map_, map_bytes_);
}

void MappedShard::read(int64_t offset, int64_t n, int32_t* out) const {
  KOTOBA_CHECK(offset >= 0 && n >= 0 && offset + n <= count_, "token shard '", path_.string(), "': read of [",
               offset, ", ", offset + n, ") is outside its ", count_, " tokens");
  const uint8_t* p = tokens_ + size_t(offset) * token_bytes_;
  for (int64_t i = 0; i < n; ++i, p += token_bytes_) {
    uint32_t id = uint32_t(p[0]) | uint32_t(p[1]) << 8;
    if (token_bytes_ == 4) id |= uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    KOTOBA_CHECK(int64_t(id) < vocab_size_, "token shard '", path_.string(), "' is corrupt: token ", offset + i,
                 " is id ", id, ", not below vocab_size ", vocab_size_);
    out[i] = int32_t(id);
  }
}

// ---- index ----

namespace {

nlohmann::json split_json(const SplitIndex& s) {
  return {{"tokens", s.tokens}, {"documents", s.documents}, {"shards", s.shards}};
}

template <typename T>
T field(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  KOTOBA_CHECK(it != j.end(), where, ": missing field \"", key, "\"");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(detail::concat(where, ": field \"", key, "\" has the wrong type (", it->type_name(), ")"));
  }
}

SplitIndex split_from_json(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  KOTOBA_CHECK(it != j.end() && it->is_object(), where, ": missing object \"", key, "\"");
  std::string w = where + " \"" + key + "\"";
  SplitIndex s;
  s.tokens = field<int64_t>(*it, "tokens", w);
  s.documents = field<int64_t>(*it, "documents", w);
  s.shards = field<std::vector<std::string>>(*it, "shards", w);
  for (auto& name : s.shards)
    KOTOBA_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "..", w,
                 ": shard name '", name, "' must be a plain file name");
  return s;
}

}  // namespace

void write_shard_index(const fs::path& dir, const ShardIndex& index) {
  nlohmann::json j = {{"format", kShardFormatName},
                      {"version", kShardVersion},
                      {"vocab_size", index.vocab_size},
                      {"eos_id", index.eos_id},
                      {"dtype", token_bytes_for_vocab(index.vocab_size) == 2 ? "u16" : "u32"},
                      {"tokenizer_hash", index.tokenizer_hash},
                      {"seed", index.seed},
                      {"val_fraction", index.val_fraction},
                      {"train", split_json(index.train)},
                      {"val", split_json(index.val)}};
  write_file_atomically((dir / "meta.json").string(), j.dump(2) + "\n");
}

ShardIndex read_shard_index(const fs::path& dir) {
  fs::path path = dir / "meta.json";
  const std::string where = path.string();
  KOTOBA_CHECK(fs::is_directory(dir), "token shard directory '", dir.string(), "' does not exist (make it with `kotoba prepare`)");
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, "'", where, "' is missing: '", dir.string(), "' is not a token shard directory from `kotoba prepare`");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(detail::concat(where, ": malformed JSON (", e.what(), ")"));
  }
  KOTOBA_CHECK(j.is_object(), where, ": expected a JSON object");
  auto format = field<std::string>(j, "format", where);
  KOTOBA_CHECK(format == kShardFormatName, where, ": field \"format\" is '", format, "', expected '",
               kShardFormatName, "'");
  auto version = field<uint32_t>(j, "version", where);
  KOTOBA_CHECK(version == kShardVersion, where, ": version ", version, " is not supported (this build reads ",
               kShardVersion, ")");
  ShardIndex index;
  index.vocab_size = field<int64_t>(j, "vocab_size", where);
  KOTOBA_CHECK(index.vocab_size > 0, where, ": field \"vocab_size\" must be positive, got ", index.vocab_size);
  index.eos_id = field<int32_t>(j, "eos_id", where);
  index.tokenizer_hash = field<std::string>(j, "tokenizer_hash", where);
  index.seed = field<uint64_t>(j, "seed", where);
  index.val_fraction = field<double>(j, "val_fraction", where);
  index.train = split_from_json(j, "train", where);
  index.val = split_from_json(j, "val", where);
  return index;
}

std::string tokenizer_file_hash(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, "cannot read '", path.string(), "' to hash it");
  uint64_t h = 0xcbf29ce484222325ull;
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof buf);
    for (std::streamsize i = 0; i < in.gcount(); ++i) h = (h ^ uint8_t(buf[i])) * 0x100000001b3ull;
  }
  char text[32];
  std::snprintf(text, sizeof text, "fnv1a64:%016llx", (unsigned long long)h);
  return text;
}

void check_vocab_match(int64_t shard_vocab_size, const std::string& shard_dir, int64_t other_vocab_size,
                       const std::string& other_name, bool other_may_be_larger) {
  bool ok = other_may_be_larger ? other_vocab_size >= shard_vocab_size : other_vocab_size == shard_vocab_size;
  KOTOBA_CHECK(ok, "vocabulary mismatch: the token shards in '", shard_dir, "' have vocab_size ", shard_vocab_size,
               " but ", other_name, " has vocab_size ", other_vocab_size,
               other_may_be_larger ? " (it must be at least as large)" : "",
               "; re-run `kotoba prepare` with the matching tokenizer");
}

}  // namespace kotoba::data
