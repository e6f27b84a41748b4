// SentencePieceModel on libsentencepiece: its status codes become kotoba::Error naming the file.
#include "tokenizer/sentencepiece_model.h"

#include <sentencepiece_processor.h>

#include "core/error.h"

namespace kotoba::tokenizer {

struct SentencePieceModel::Processor {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceModel::SentencePieceModel(std::string_view serialized, const std::string& name)
    : processor_(std::make_unique<Processor>()), name_(name) {
  KOTOBA_CHECK(!serialized.empty(), "tokenizer.model '", name, "': the file is empty");
  auto status = processor_->sp.LoadFromSerializedProto(absl::string_view(serialized.data(), serialized.size()));
  KOTOBA_CHECK(status.ok(), "tokenizer.model '", name, "': not a valid SentencePiece model (", status.ToString(), ")");
  KOTOBA_CHECK(processor_->sp.GetPieceSize() > 0, "tokenizer.model '", name, "': the model has no pieces");
}

SentencePieceModel::~SentencePieceModel() = default;

std::vector<int32_t> SentencePieceModel::encode(std::string_view text) const {
  std::vector<int> ids;
  auto status = processor_->sp.Encode(absl::string_view(text.data(), text.size()), &ids);
  KOTOBA_CHECK(status.ok(), "tokenizer.model '", name_, "': encoding failed (", status.ToString(), ")");
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SentencePieceModel::decode(std::span<const int32_t> ids) const {
  std::vector<int> list(ids.begin(), ids.end());
  std::string text;
  auto status = processor_->sp.Decode(list, &text);
  KOTOBA_CHECK(status.ok(), "tokenizer.model '", name_, "': decoding failed (", status.ToString(), ")");
  return text;
}

int32_t SentencePieceModel::size() const { return processor_->sp.GetPieceSize(); }

std::optional<int32_t> SentencePieceModel::piece_id(std::string_view piece) const {
  int id = processor_->sp.PieceToId(absl::string_view(piece.data(), piece.size()));
  if (id < 0 || id >= size() || processor_->sp.IdToPiece(id) != piece) return std::nullopt;
  return id;
}

std::string SentencePieceModel::piece(int32_t id) const { return processor_->sp.IdToPiece(id); }

namespace {
std::optional<int32_t> valid(int id, int size) {
  if (id < 0 || id >= size) return std::nullopt;
  return id;
}
}  // namespace

std::optional<int32_t> SentencePieceModel::bos_id() const { return valid(processor_->sp.bos_id(), size()); }
std::optional<int32_t> SentencePieceModel::eos_id() const { return valid(processor_->sp.eos_id(), size()); }
std::optional<int32_t> SentencePieceModel::pad_id() const { return valid(processor_->sp.pad_id(), size()); }
std::optional<int32_t> SentencePieceModel::unk_id() const { return valid(processor_->sp.unk_id(), size()); }

std::string SentencePieceModel::serialized() const { return processor_->sp.serialized_model_proto(); }

}  // namespace kotoba::tokenizer
