// Internals of Tokenizer shared by its source files: the byte alphabet, the merge table, and
// Tokenizer::Impl (vocabulary, the HF pipeline as data, or a SentencePiece processor).
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/pretokenize.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/wordpiece.h"

namespace kotoba::tokenizer::internal {

std::string utf8_encode(char32_t cp);

// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the other 68
// bytes take the code points from U+0100 upwards in byte order, so every token is printable.
struct ByteAlphabet {
  std::array<char32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;
  std::unordered_map<char32_t, uint8_t> from_cp;
  ByteAlphabet();
  // Raw bytes to the token string stored in tokenizer.json ("Ġthe" for " the").
  std::string encode(std::string_view bytes) const;
  // Token string (valid UTF-8) back to raw bytes; nullopt when a character is outside the alphabet.
  std::optional<std::string> decode(std::string_view token) const;
};
const ByteAlphabet& alphabet();

constexpr uint64_t kNoMerge = ~0ull;
inline uint64_t pair_key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

// (left id, right id) -> (rank << 32 | merged id), open addressing: the encoder's hot lookup.
class PairTable {
 public:
  void build(const std::vector<std::pair<int32_t, int32_t>>& merges, const std::vector<int32_t>& merged);
  uint64_t find(int32_t a, int32_t b) const {
    if (keys_.empty()) return kNoMerge;
    uint64_t key = pair_key(a, b);
    for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return vals_[slot];
      if (keys_[slot] == kNoMerge) return kNoMerge;
    }
  }

 private:
  size_t hash(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  std::vector<uint64_t> keys_, vals_;
  size_t mask_ = 0;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using IdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Per-thread cache of encoded words; keyed by the owning tokenizer's serial so that a new
// tokenizer at a recycled address never sees another's entries.
struct WordCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
};
extern std::atomic<uint64_t> next_serial;

// One step of an HF normalizer Sequence.
struct NormalizerStep {
  enum class Kind { nfc, nfd, nfkc, nfkd, prepend, replace } kind;
  std::string text{}, with{};  // prepend: text; replace: every `text` becomes `with`
};

// One step of an HF pre-tokenizer Sequence, applied to each piece the previous steps made.
struct PreTokenizerStep {
  enum class Kind { split_gpt2, split_llama3, split_qwen2, prefix_space, metaspace } kind;
  // metaspace
  std::string replacement{};
  enum class Prepend { always, first, never } prepend = Prepend::always;
  bool split = true;
};

// One step of an HF decoder Sequence, applied to the list of token strings.
struct DecoderStep {
  enum class Kind { byte_level, replace, byte_fallback, fuse, strip, metaspace } kind;
  std::string text{}, with{};  // replace: text -> with; strip: text is the character; metaspace: text
  size_t start = 0, stop = 0;  // strip
  bool metaspace_prepends = true;
};

}  // namespace kotoba::tokenizer::internal

namespace kotoba::tokenizer {

struct Tokenizer::Impl {
  struct Added {
    std::string content;
    int32_t id = 0;
    bool special = true, lstrip = false, rstrip = false, normalized = false, single_word = false;
    std::string match{};  // what is searched for: content, or content normalized when `normalized`
  };

  std::vector<std::string> tokens;       // id -> stored token string
  std::vector<std::string> token_bytes;  // id -> the bytes it decodes to (byte-level models)
  std::vector<char> in_model_vocab;      // id -> listed in model.vocab (else only in added_tokens)
  internal::IdMap token_ids;             // every token, model and added
  internal::IdMap bytes_ids;             // byte-level model vocab by raw bytes (ignore_merges)
  std::vector<std::pair<int32_t, int32_t>> merges;  // by rank
  internal::PairTable merge_table;
  std::array<int32_t, 256> byte_ids{};     // byte-level: byte -> its token; else <0xXX> -> id or -1
  std::vector<Added> added;                // in file order
  std::vector<size_t> raw_added, normalized_added;  // indices into `added`, longest first

  // The model: byte-level (symbols are GPT-2 byte characters) or character-level with byte
  // fallback (symbols are UTF-8 characters; SentencePiece-style, Llama 2).
  bool byte_level = true, ignore_merges = false, byte_fallback = false, fuse_unk = false;
  std::optional<int32_t> unk_id;
  std::vector<internal::NormalizerStep> normalizer;
  std::vector<internal::PreTokenizerStep> pre_tokenizer;
  std::vector<internal::DecoderStep> decoder;
  bool has_decoder = true;  // false: HF joins the tokens with spaces
  std::vector<int32_t> prefix_ids, suffix_ids;  // the post-processor's template around $A
  std::optional<int32_t> bos, eos, pad;         // set by tokenizer_config.json or the file

  // SentencePiece .model: when set, encode/decode/vocabulary are SentencePiece's.
  std::shared_ptr<const SentencePieceModel> sentencepiece;
  // WordPiece tokenizer.json (BERT): when set, encode/decode/vocabulary are its.
  std::shared_ptr<const WordPiece> wordpiece;

  // Sections of a loaded file written back unchanged on save.
  nlohmann::json normalizer_json = nullptr, pre_tokenizer_json, post_processor = nullptr, decoder_json,
                 truncation = nullptr, padding = nullptr;
  uint64_t serial = internal::next_serial++;

  void finalize(const std::string& where);
  static std::string apply_normalizer(const internal::NormalizerStep& step, std::string_view text);
  std::string normalize(std::string_view text) const;  // the whole normalizer, growth-checked
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  std::string decode(std::span<const int32_t> ids) const;

 private:
  void encode_added(std::string_view text, bool at_start, const std::vector<size_t>& candidates, bool normalized_pass,
                    std::vector<int32_t>& out, internal::WordCache& cache) const;
  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out,
                      internal::WordCache& cache) const;
  void pre_tokenize(size_t step, std::string_view piece, bool at_start, std::vector<int32_t>& out,
                    internal::WordCache& cache) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out, internal::WordCache& cache) const;
  void word_symbols(std::string_view word, std::vector<int32_t>& syms) const;
  void remember(std::string_view word, const std::vector<int32_t>& out, size_t first,
                internal::WordCache& cache) const;
  void merge_small(std::vector<int32_t>& syms) const;
  void merge_large(std::vector<int32_t>& syms) const;
};

}  // namespace kotoba::tokenizer
