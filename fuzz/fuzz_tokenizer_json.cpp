// libFuzzer target: arbitrary bytes as an HF tokenizer.json; a tokenizer that loads must also
// encode and decode a fixed text without failing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto tokenizer = kotoba::tokenizer::Tokenizer::from_json(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/tokenizer.json");
    std::vector<int32_t> ids = tokenizer.encode("Hello, world! 123 <|endoftext|> naïve 日本語\n\t  x", true);
    tokenizer.decode(ids);
  } catch (const kotoba::Error&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
