// Byte-level BPE tokenizer (GPT-2 style): training from text, fast encode/decode, and HF
// tokenizer.json in and out. Any UTF-8 text round-trips exactly.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kotoba::tokenizer {

struct TrainOptions {
  int32_t vocab_size = 8192;                    // including the 256 byte tokens and the specials
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  int64_t min_frequency = 2;                    // merges seen fewer times are not learned
  int threads = 0;                              // 0: all cores
  bool show_progress = true;
};

class Tokenizer {
 public:
  // Trains on the given files (plain text, or JSONL with a "text" field when the name ends in .jsonl),
  // read line by line as HF's trainer does; special tokens in the text are skipped, never merged.
  // Ids: the special tokens, the 256 bytes (ordered by their GPT-2 characters), then one per merge.
  // The most frequent pair merges next; ties go to the smaller (left id, right id) pair, which is
  // HF BpeTrainer's rule, so the result does not depend on the thread count.
  static Tokenizer train(const std::vector<std::string>& files, const TrainOptions& options);
  // Reads an HF tokenizer.json (byte-level BPE model); errors name the file and field.
  static Tokenizer load(const std::string& path);
  // Writes an HF tokenizer.json atomically.
  void save(const std::string& path) const;

  std::vector<int32_t> encode(std::string_view text) const;  // special tokens in text are matched
  // Encodes many documents using all cores (each document independently).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& texts, int threads = 0) const;
  // The raw bytes of the tokens, concatenated (a slice of a sequence may end inside a UTF-8
  // character; whole encodings decode to their exact text). Throws on an id >= vocab_size().
  std::string decode(std::span<const int32_t> ids) const;

  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;  // by the token's stored string
  std::string id_to_token(int32_t id) const;
  // The document separator used by `prepare` (the first special token, normally <|endoftext|>).
  std::optional<int32_t> eos_id() const;

  struct Impl;
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kotoba::tokenizer
