// The tokenizer: byte-level BPE (GPT-2, Llama 3, Qwen2) and SentencePiece-style BPE with byte
// fallback (Llama 2, Mistral) read from and written to HF tokenizer.json, training of byte-level
// BPE, and SentencePiece .model files through libsentencepiece.
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
  // Reads an HF tokenizer.json (BPE model), or a SentencePiece model when the name ends in
  // .model (its encode(text, true) adds BOS, as LlamaTokenizer does by default); errors name the
  // file and field.
  static Tokenizer load(const std::string& path);
  // Parses tokenizer.json text; `name` stands for the file in error messages. Any bytes either
  // give a tokenizer or throw kotoba::Error.
  static Tokenizer from_json(std::string_view text, const std::string& name);
  // A model directory: tokenizer.json when present, else tokenizer.model; tokenizer_config.json,
  // when present, names the bos/eos/pad/unk tokens and whether BOS/EOS are added.
  static Tokenizer load_dir(const std::string& dir);
  // Writes an HF tokenizer.json atomically (a SentencePiece-backed tokenizer writes its .model).
  void save(const std::string& path) const;

  // Added and special tokens in the text are matched; no BOS/EOS template is applied.
  std::vector<int32_t> encode(std::string_view text) const;
  // As HF's encode(text, add_special_tokens): with true, the post-processor's template (BOS for
  // Llama) wraps the ids.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // Encodes many documents using all cores (each document independently).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& texts, int threads = 0) const;
  // The text HF's decoder gives (special tokens kept). For byte-level BPE, the raw bytes of the
  // tokens concatenated (a slice of a sequence may end inside a UTF-8 character; whole encodings
  // decode to their exact text) where HF would put U+FFFD for bytes that are not valid UTF-8.
  // Throws on an id >= vocab_size().
  std::string decode(std::span<const int32_t> ids) const;

  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;  // by the token's stored string
  std::string id_to_token(int32_t id) const;
  // The document separator used by `prepare`: tokenizer_config.json's eos_token when loaded with
  // one, else a special token with a well-known end name (</s>, <|endoftext|>, ...), else the
  // first special token.
  std::optional<int32_t> eos_id() const;
  // tokenizer_config.json's bos_token, else the token the post-processor puts first, else a
  // special token with a well-known name (<s>, <|begin_of_text|>, <bos>).
  std::optional<int32_t> bos_id() const;
  // tokenizer_config.json's pad_token, else tokenizer.json's padding.pad_id.
  std::optional<int32_t> pad_id() const;

  struct Impl;
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kotoba::tokenizer
