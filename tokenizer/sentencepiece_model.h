// A SentencePiece .model (BPE or unigram) run by libsentencepiece, behind a small interface so
// that SentencePiece's headers stay out of the rest of kotoba.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kotoba::tokenizer {

class SentencePieceModel {
 public:
  // Reads a serialized ModelProto; `name` stands for the file in error messages.
  SentencePieceModel(std::string_view serialized, const std::string& name);
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> ids) const;  // ids checked by the caller
  int32_t size() const;
  std::optional<int32_t> piece_id(std::string_view piece) const;  // exact piece, never unk
  std::string piece(int32_t id) const;
  std::optional<int32_t> bos_id() const, eos_id() const, pad_id() const, unk_id() const;
  std::string serialized() const;
  const std::string& name() const { return name_; }

 private:
  struct Processor;
  std::unique_ptr<Processor> processor_;
  std::string name_;
};

}  // namespace kotoba::tokenizer
