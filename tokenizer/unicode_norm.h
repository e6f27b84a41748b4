// Unicode normalization forms (NFC, NFD, NFKC, NFKD) through ICU, for HF normalizers (Qwen2 uses NFC).
#pragma once
#include <string>
#include <string_view>

namespace kotoba::tokenizer {

enum class NormalForm { nfc, nfd, nfkc, nfkd };

// `text` must be valid UTF-8; the result is too.
std::string normalize_unicode(std::string_view text, NormalForm form);

}  // namespace kotoba::tokenizer
