// The regex pre-tokenizers of byte-level BPEs as hand-written scanners (an HF Split/ByteLevel
// pre-tokenizer is recognised by its exact pattern), and UTF-8 decoding. GPT-2's split is
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Llama 3's (cl100k's) and, with \p{N} in place of \p{N}{1,3}, Qwen2's is
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// with \p{L}/\p{N} the Unicode general categories L*/N* and \s the White_Space property.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/utf8.h"

namespace kotoba::tokenizer {

// The Split regexes of HF tokenizer.json files that kotoba's hand-written scanners implement,
// recognised by their exact text (GPT-2's is also ByteLevel's built-in one).
inline constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
inline constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
inline constexpr const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

enum class CharClass : uint8_t { other = 0, letter = 1, number = 2, space = 3 };

// The class of a code point under the table in unicode_ranges.inc (Unicode 16.0, as HF tokenizers 0.23).
CharClass char_class(char32_t cp);

// Calls piece(std::string_view) for each pre-token of `text`, in order; the pieces concatenate
// to `text`. The text must be valid UTF-8 (check with find_invalid_utf8, core/utf8.h, first).
template <typename Piece>
void pretokenize_gpt2(std::string_view text, Piece&& piece);

// Llama 3 / Qwen2 split (see the top of this file); max_digits is 3 (Llama 3) or 1 (Qwen2).
template <typename Piece>
void pretokenize_llama3(std::string_view text, size_t max_digits, Piece&& piece);

namespace detail {
// Decodes the code point starting at text[i] (valid UTF-8 assumed); sets len to its byte count.
[[gnu::always_inline]] inline char32_t decode_utf8(const unsigned char* s, size_t& len) {
  unsigned char c = s[0];
  if (c < 0x80) { len = 1; return c; }
  if (c < 0xE0) { len = 2; return char32_t(c & 0x1F) << 6 | (s[1] & 0x3F); }
  if (c < 0xF0) { len = 3; return char32_t(c & 0x0F) << 12 | char32_t(s[1] & 0x3F) << 6 | (s[2] & 0x3F); }
  len = 4;
  return char32_t(c & 0x07) << 18 | char32_t(s[1] & 0x3F) << 12 | char32_t(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}
extern const CharClass ascii_class[128];
// Always inlined: the scanners call it per character, and inside a large caller GCC may not.
[[gnu::always_inline]] inline CharClass class_at(const unsigned char* s, size_t& len) {
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

namespace detail {
// Length after the apostrophe of a case-insensitive contraction ('s 't 're 've 'm 'll 'd) at s,
// or 0. Oniguruma's case folding also lets U+017F (long s) stand for 's'.
inline size_t contraction_length(const unsigned char* s, size_t n) {
  if (n == 0) return 0;
  auto lower = [](unsigned char c) { return (c >= 'A' && c <= 'Z') ? char(c + 32) : char(c); };
  char a = lower(s[0]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 1;
  if (n >= 2 && s[0] == 0xC5 && s[1] == 0xBF) return 2;
  if (n >= 2) {
    char b = lower(s[1]);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 2;
  }
  return 0;
}
// End of the run of `cls` characters starting at k.
inline size_t run_end(const unsigned char* s, size_t n, size_t k, CharClass cls) {
  while (k < n) {
    size_t l = 0;
    if (class_at(s + k, l) != cls) break;
    k += l;
  }
  return k;
}
}  // namespace detail

template <typename Piece>
void pretokenize_llama3(std::string_view text, size_t max_digits, Piece&& piece) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  auto emit = [&](size_t end) {
    piece(text.substr(i, end - i));
    i = end;
  };
  while (i < n) {
    if (s[i] == '\'') {
      if (size_t len = detail::contraction_length(s + i + 1, n - i - 1)) {
        emit(i + 1 + len);
        continue;
      }
    }
    size_t len = 0;
    const CharClass cls = detail::class_at(s + i, len);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (cls == CharClass::letter) {
      emit(detail::run_end(s, n, i, CharClass::letter));
      continue;
    }
    if (cls != CharClass::number && s[i] != '\r' && s[i] != '\n' && i + len < n) {
      size_t len2 = 0;
      if (detail::class_at(s + i + len, len2) == CharClass::letter) {
        emit(detail::run_end(s, n, i + len, CharClass::letter));
        continue;
      }
    }
    // \p{N}{1,3} (or \p{N})
    if (cls == CharClass::number) {
      size_t k = i + len, digits = 1;
      while (k < n && digits < max_digits) {
        size_t l = 0;
        if (detail::class_at(s + k, l) != CharClass::number) break;
        k += l;
        ++digits;
      }
      emit(k);
      continue;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    size_t other_at = cls == CharClass::other ? i : n;
    if (s[i] == ' ' && i + 1 < n) {
      size_t len2 = 0;
      if (detail::class_at(s + i + 1, len2) == CharClass::other) other_at = i + 1;
    }
    if (other_at < n) {
      size_t k = detail::run_end(s, n, other_at, CharClass::other);
      while (k < n && (s[k] == '\r' || s[k] == '\n')) ++k;
      emit(k);
      continue;
    }
    // A whitespace run. '\s*[\r\n]+' ends it after its last line break when it has one;
    // otherwise '\s+(?!\S)' leaves the last character to a following non-space, as in GPT-2.
    size_t k = i, last = i, chars = 0, after_break = 0;
    while (k < n) {
      size_t l = 0;
      if (detail::class_at(s + k, l) != CharClass::space) break;
      if (s[k] == '\r' || s[k] == '\n') after_break = k + 1;
      last = k;
      k += l;
      ++chars;
    }
    if (after_break) emit(after_break);
    else emit((k < n && chars >= 2) ? last : k);
  }
}

}  // namespace kotoba::tokenizer
