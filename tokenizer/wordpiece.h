// WordPiece (BERT): the BERT normalizer (clean text, CJK splitting, accent stripping,
// lowercasing) and pre-tokenizer (whitespace and punctuation), greedy longest-match-first
// encoding with "##" continuations and [UNK] for words it cannot cover, [CLS] ... [SEP]
// post-processing, decoding, a trainer, and HF tokenizer.json / vocab.txt files. The Tokenizer
// class (tokenizer/tokenizer.h) loads WordPiece tokenizer.json files through this.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace kotoba::tokenizer {

// HF BertNormalizer's settings; strip_accents unset follows lowercase, as in HF.
struct BertNormalizerOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  std::optional<bool> strip_accents;
  bool lowercase = true;
};

struct WordPieceTrainOptions {
  int32_t vocab_size = 30000;  // specials, the alphabet and the learned pieces
  int64_t min_frequency = 2;   // a pair seen fewer times (over the corpus) is never merged
  std::vector<std::string> special_tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  BertNormalizerOptions normalizer;
  int64_t max_input_chars_per_word = 100;
  bool show_progress = true;
};

class WordPiece {
 public:
  // Learns a vocabulary from text files (plain text read line by line, or JSONL with a "text"
  // field when the name ends in .jsonl). Words are counted after normalisation and
  // pre-tokenisation; each starts as its characters (the first plain, the rest "##"-prefixed),
  // and pairs of adjacent pieces are merged greedily by the WordPiece likelihood score
  // count(ab) / (count(a) count(b)) (ties: the more frequent pair, then the smaller string)
  // until vocab_size pieces exist or no pair reaches min_frequency. Ids: the special tokens,
  // the alphabet (most frequent characters first, truncated to fit), then the pieces in the
  // order they were learned.
  static WordPiece train(const std::vector<std::string>& files, const WordPieceTrainOptions& options);
  // A tokenizer.json document whose model.type is "WordPiece"; `name` labels errors, which name
  // the field at fault.
  static WordPiece from_json(const nlohmann::json& doc, const std::string& name);
  // BERT's vocab.txt: one token per line, the line number is its id; specials are the bracketed
  // names [PAD] [UNK] [CLS] [SEP] [MASK] found in it.
  static WordPiece from_vocab_txt(const std::string& path, const BertNormalizerOptions& normalizer = {});

  nlohmann::ordered_json to_json() const;  // HF tokenizer.json
  void save(const std::string& path) const;  // tokenizer.json, atomically
  void save_vocab_txt(const std::string& path) const;

  std::string normalize(std::string_view text) const;
  // The words of normalised text: split on whitespace (dropped) and around punctuation.
  std::vector<std::string_view> pre_tokenize(std::string_view normalized) const;
  // Ids of `text` (valid UTF-8) without the post-processor's [CLS]/[SEP]; special tokens written
  // in the text are matched as such.
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // HF's WordPiece decoder: "##" pieces join the previous one, others are space-separated, and
  // the cleanup rules remove spaces before punctuation and in contractions. Specials are kept.
  std::string decode(std::span<const int32_t> ids) const;

  int32_t size() const { return int32_t(tokens_.size()); }
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;
  const std::vector<int32_t>& prefix_ids() const { return prefix_ids_; }  // [CLS]
  const std::vector<int32_t>& suffix_ids() const { return suffix_ids_; }  // [SEP]
  std::vector<int32_t> special_ids() const;
  int32_t unk_id() const { return unk_id_; }
  const BertNormalizerOptions& normalizer() const { return normalizer_; }

 private:
  struct Added {
    std::string content;
    int32_t id;
    bool special;
  };
  static WordPiece from_json_checked(const nlohmann::json& doc, const std::string& name);
  void finalize(const std::string& where);
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<Added> added_;  // matched in raw text, longest first
  BertNormalizerOptions normalizer_;
  std::string prefix_ = "##", unk_token_ = "[UNK]";
  int32_t unk_id_ = -1;
  int64_t max_input_chars_per_word_ = 100;
  bool has_normalizer_ = true, has_pre_tokenizer_ = true, has_decoder_ = true, decoder_cleanup_ = true;
  std::string decoder_prefix_ = "##";
  std::vector<int32_t> prefix_ids_, suffix_ids_;
  bool post_processor_ = true;  // write a TemplateProcessing ([CLS] $A [SEP])
};

}  // namespace kotoba::tokenizer
