// The GPT-2 pre-tokenizer as a hand-written scanner, and strict UTF-8 decoding. It splits text
// exactly where HF tokenizers' ByteLevel pre-tokenizer (use_regex=true) splits it, i.e. by
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \p{L}/\p{N} the Unicode general categories L*/N* and \s the White_Space property.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/utf8.h"

namespace kotoba::tokenizer {

enum class CharClass : uint8_t { other = 0, letter = 1, number = 2, space = 3 };

// The class of a code point under the table in unicode_ranges.inc (Unicode 16.0, as HF tokenizers 0.23).
CharClass char_class(char32_t cp);

// Calls piece(std::string_view) for each pre-token of `text`, in order; the pieces concatenate
// to `text`. The text must be valid UTF-8 (check with find_invalid_utf8, core/utf8.h, first).
template <typename Piece>
void pretokenize_gpt2(std::string_view text, Piece&& piece);

namespace detail {
// Decodes the code point starting at text[i] (valid UTF-8 assumed); sets len to its byte count.
inline char32_t decode_utf8(const unsigned char* s, size_t& len) {
  unsigned char c = s[0];
  if (c < 0x80) { len = 1; return c; }
  if (c < 0xE0) { len = 2; return char32_t(c & 0x1F) << 6 | (s[1] & 0x3F); }
  if (c < 0xF0) { len = 3; return char32_t(c & 0x0F) << 12 | char32_t(s[1] & 0x3F) << 6 | (s[2] & 0x3F); }
  len = 4;
  return char32_t(c & 0x07) << 18 | char32_t(s[1] & 0x3F) << 12 | char32_t(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}
extern const CharClass ascii_class[128];
inline CharClass class_at(const unsigned char* s, size_t& len) {
  if (s[0] < 0x80) { len = 1; return ascii_class[s[0]]; }
  return char_class(decode_utf8(s, len));
}
}  // namespace detail

template <typename Piece>
void pretokenize_gpt2(std::string_view text, Piece&& piece) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const size_t start = i;
    // Contractions come first in the alternation (case-sensitive, as in GPT-2).
    if (s[i] == '\'' && i + 1 < n) {
      unsigned char a = s[i + 1];
      size_t len = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') len = 2;
      else if (i + 2 < n && ((a == 'r' && s[i + 2] == 'e') || (a == 'v' && s[i + 2] == 'e') ||
                             (a == 'l' && s[i + 2] == 'l')))
        len = 3;
      if (len) {
        piece(text.substr(start, len));
        i += len;
        continue;
      }
    }
    size_t len = 0;
    CharClass cls = detail::class_at(s + i, len);
    size_t j = i;
    if (s[i] == ' ' && i + 1 < n) {  // ' ?' joins a space to a following non-space run
      size_t len2 = 0;
      CharClass next = detail::class_at(s + i + 1, len2);
      if (next != CharClass::space) {
        j = i + 1;
        cls = next;
        len = len2;
      }
    }
    if (cls != CharClass::space) {  // ' ?\p{L}+', ' ?\p{N}+' or ' ?[^\s\p{L}\p{N}]+'
      size_t k = j + len;
      while (k < n) {
        size_t l = 0;
        if (detail::class_at(s + k, l) != cls) break;
        k += l;
      }
      piece(text.substr(start, k - start));
      i = k;
      continue;
    }
    // A whitespace run: '\s+(?!\S)' leaves its last character to the next piece when a
    // non-space follows and the run has two or more characters; otherwise '\s+' takes it all.
    size_t k = i, last = i, chars = 0;
    while (k < n) {
      size_t l = 0;
      if (detail::class_at(s + k, l) != CharClass::space) break;
      last = k;
      k += l;
      ++chars;
    }
    size_t end = (k < n && chars >= 2) ? last : k;
    piece(text.substr(start, end - start));
    i = end;
  }
}

}  // namespace kotoba::tokenizer
