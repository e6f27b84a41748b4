// Token shards: the on-disk form of a tokenised corpus that `prepare` writes and pretraining
// memory-maps. A directory holds binary shards plus one JSON index, meta.json.
//
// Shard file (little-endian), named <split>_<NNNNNN>.bin:
//   offset  0  char[4]  magic "KTOK"
//   offset  4  u32      format version (1)
//   offset  8  u32      bytes per token: 2 (u16, vocab_size <= 65536) or 4 (u32)
//   offset 12  u32      vocab_size the ids were made with (every id < vocab_size)
//   offset 16  u64      token count N
//   offset 24  u64      reserved, 0
//   offset 32  N tokens
// The file size is exactly 32 + N * bytes_per_token; anything else is reported as truncated or
// oversized. Documents are separated by (each followed by) the EOS token.
//
// meta.json:
//   {"format": "kotoba-token-shards", "version": 1, "vocab_size": V, "eos_id": E, "dtype": "u16",
//    "tokenizer_hash": "fnv1a64:...", "seed": S, "val_fraction": F,
//    "train": {"tokens": N, "documents": D, "shards": ["train_000000.bin", ...]},
//    "val":   {"tokens": N, "documents": D, "shards": ["val_000000.bin", ...]}}
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace kotoba::data {

inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 32;
inline constexpr const char* kShardFormatName = "kotoba-token-shards";

// Bytes per stored token: 2 when every id fits in u16, else 4.
uint32_t token_bytes_for_vocab(int64_t vocab_size);

// Writes tokens of one split as a sequence of shards of at most `shard_tokens` each. Each shard
// is written to "<name>.tmp" and renamed when complete, so a finished name is always whole.
class ShardWriter {
 public:
  ShardWriter(std::filesystem::path dir, std::string split, int64_t vocab_size, int64_t shard_tokens);
  ~ShardWriter();  // an unfinished shard's .tmp file is removed
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(std::span<const int32_t> tokens);  // ids checked against vocab_size
  void finish();                                  // closes the last shard
  const std::vector<std::string>& shard_names() const { return names_; }
  int64_t tokens() const { return total_; }

 private:
  void open_next();
  void close_current();

  std::filesystem::path dir_;
  std::string split_;
  int64_t vocab_size_, shard_tokens_;
  uint32_t token_bytes_;
  struct File;
  std::unique_ptr<File> file_;
  int64_t in_shard_ = 0, total_ = 0;
  std::vector<std::string> names_;
  std::vector<uint8_t> buffer_;
};

// One shard, memory-mapped read-only and validated on open (magic, version, token width, and
// size = header + count * width; a short file is "truncated" with expected and actual sizes).
class MappedShard {
 public:
  explicit MappedShard(const std::filesystem::path& path);
  ~MappedShard();
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  const std::filesystem::path& path() const { return path_; }
  int64_t size() const { return count_; }
  int64_t vocab_size() const { return vocab_size_; }
  uint32_t token_bytes() const { return token_bytes_; }
  // Copies tokens [offset, offset + n) into out; ids >= vocab_size (a corrupt file) throw.
  void read(int64_t offset, int64_t n, int32_t* out) const;

 private:
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint8_t* tokens_ = nullptr;
  int64_t count_ = 0, vocab_size_ = 0;
  uint32_t token_bytes_ = 0;
};

struct SplitIndex {
  int64_t tokens = 0;
  int64_t documents = 0;
  std::vector<std::string> shards = {};  // file names relative to the directory
};

struct ShardIndex {
  int64_t vocab_size = 0;
  int32_t eos_id = -1;
  std::string tokenizer_hash = {};  // tokenizer_file_hash() of the tokenizer.json used
  uint64_t seed = 0;
  double val_fraction = 0;
  SplitIndex train = {}, val = {};
};

// meta.json in `dir`, written atomically (tmp + rename); read with every field checked.
void write_shard_index(const std::filesystem::path& dir, const ShardIndex& index);
ShardIndex read_shard_index(const std::filesystem::path& dir);

// "fnv1a64:<16 hex digits>" of a file's bytes: identifies the tokenizer.json shards were made with.
std::string tokenizer_file_hash(const std::filesystem::path& path);

// Throws naming both sizes when shards made with one vocabulary meet a tokenizer or model of
// another. A model's embedding may be padded past the tokenizer (e.g. 50257 -> 50304): pass
// other_may_be_larger = true there, and only a smaller model is an error.
void check_vocab_match(int64_t shard_vocab_size, const std::string& shard_dir, int64_t other_vocab_size,
                       const std::string& other_name, bool other_may_be_larger = false);

}  // namespace kotoba::data
