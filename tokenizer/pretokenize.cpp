// Unicode tables and UTF-8 validation behind the GPT-2 pre-tokenizer (pretokenize.h). The
// ranges come from scripts/gen-unicode-ranges; the BMP is expanded into a flat table.
#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <array>
#include <memory>

namespace kotoba::tokenizer {

namespace {
struct Range {
  char32_t first, last;
  int cls;
};
constexpr Range kRanges[] = {
#include "tokenizer/unicode_ranges.inc"
};

// Two bits per BMP code point would do; a byte each (64 KiB) keeps the lookup one load.
const std::array<CharClass, 0x10000>& bmp_table() {
  static const auto table = [] {
    auto t = std::make_unique<std::array<CharClass, 0x10000>>();
    t->fill(CharClass::other);
    for (const Range& r : kRanges)
      for (char32_t c = r.first; c <= r.last && c < 0x10000; ++c) (*t)[c] = CharClass(r.cls);
    return t;
  }();
  return *table;
}
}  // namespace

namespace detail {
const CharClass ascii_class[128] = {
#define O CharClass::other
#define L CharClass::letter
#define N CharClass::number
#define S CharClass::space
    O, O, O, O, O, O, O, O, O, S, S, S, S, S, O, O,  // 0x00: \t \n \v \f \r are White_Space
    O, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,  // 0x10: 0x1C-0x1F are not
    S, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,  // 0x20
    N, N, N, N, N, N, N, N, N, N, O, O, O, O, O, O,  // 0x30
    O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,  // 0x40
    L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,  // 0x50
    O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,  // 0x60
    L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,  // 0x70
#undef O
#undef L
#undef N
#undef S
};
}  // namespace detail

CharClass char_class(char32_t cp) {
  if (cp < 0x10000) return bmp_table()[cp];
  auto it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                             [](char32_t c, const Range& r) { return c < r.first; });
  if (it == std::begin(kRanges)) return CharClass::other;
  --it;
  return cp <= it->last ? CharClass(it->cls) : CharClass::other;
}

}  // namespace kotoba::tokenizer
