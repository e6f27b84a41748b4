// Strict UTF-8 validation, shared by the corpus readers and the tokenizer: every text kotoba
// reads is checked once, so a bad byte is reported by file and offset rather than deep inside.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace kotoba {

// Offset of the first byte that does not start a well-formed UTF-8 sequence (overlong forms,
// surrogates and code points above U+10FFFF are rejected), or npos when the text is valid.
size_t find_invalid_utf8(std::string_view text);

// `text` with every byte that does not start a well-formed sequence replaced by U+FFFD, as a
// terminal shows it (a model's byte-level output may stop or stray inside a character).
std::string replace_invalid_utf8(std::string_view text);

}  // namespace kotoba
