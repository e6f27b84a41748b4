// normalize_unicode on ICU's unorm2 (UTF-16 in and out), with a fast path for text that is
// already in the form (ASCII always is).
#include "tokenizer/unicode_norm.h"

#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <vector>

#include "core/error.h"

namespace kotoba::tokenizer {

namespace {

const UNormalizer2* instance(NormalForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* n = nullptr;
  switch (form) {
    case NormalForm::nfc: n = unorm2_getNFCInstance(&status); break;
    case NormalForm::nfd: n = unorm2_getNFDInstance(&status); break;
    case NormalForm::nfkc: n = unorm2_getNFKCInstance(&status); break;
    case NormalForm::nfkd: n = unorm2_getNFKDInstance(&status); break;
  }
  KOTOBA_CHECK(U_SUCCESS(status) && n, "tokenizer: ICU has no Unicode normalizer (", u_errorName(status), ")");
  return n;
}

std::vector<UChar> to_utf16(std::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  int32_t length = 0;
  u_strFromUTF8(nullptr, 0, &length, text.data(), int32_t(text.size()), &status);
  std::vector<UChar> out(size_t(length) + 1);
  status = U_ZERO_ERROR;
  u_strFromUTF8(out.data(), int32_t(out.size()), &length, text.data(), int32_t(text.size()), &status);
  KOTOBA_CHECK(U_SUCCESS(status), "tokenizer: cannot convert text to UTF-16 (", u_errorName(status), ")");
  out.resize(size_t(length));
  return out;
}

}  // namespace

std::string normalize_unicode(std::string_view text, NormalForm form) {
  bool ascii = true;
  for (unsigned char c : text) ascii = ascii && c < 0x80;
  if (ascii) return std::string(text);
  KOTOBA_CHECK(text.size() < (size_t(1) << 30), "tokenizer: text of ", text.size(), " bytes is too long to normalize");
  const UNormalizer2* n = instance(form);
  std::vector<UChar> wide = to_utf16(text);
  UErrorCode status = U_ZERO_ERROR;
  if (unorm2_isNormalized(n, wide.data(), int32_t(wide.size()), &status) && U_SUCCESS(status)) return std::string(text);
  status = U_ZERO_ERROR;
  int32_t length = unorm2_normalize(n, wide.data(), int32_t(wide.size()), nullptr, 0, &status);
  std::vector<UChar> normal(size_t(length) + 1);
  status = U_ZERO_ERROR;
  length = unorm2_normalize(n, wide.data(), int32_t(wide.size()), normal.data(), int32_t(normal.size()), &status);
  KOTOBA_CHECK(U_SUCCESS(status), "tokenizer: Unicode normalization failed (", u_errorName(status), ")");
  std::string out;
  int32_t bytes = 0;
  status = U_ZERO_ERROR;
  u_strToUTF8(nullptr, 0, &bytes, normal.data(), length, &status);
  out.resize(size_t(bytes) + 1);
  status = U_ZERO_ERROR;
  u_strToUTF8(out.data(), int32_t(out.size()), &bytes, normal.data(), length, &status);
  KOTOBA_CHECK(U_SUCCESS(status), "tokenizer: cannot convert normalized text to UTF-8 (", u_errorName(status), ")");
  out.resize(size_t(bytes));
  return out;
}

}  // namespace kotoba::tokenizer
