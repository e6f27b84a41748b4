// libFuzzer target: arbitrary bytes as a GGUF file (header, metadata key/values, tensor infos,
// alignment and data offsets).
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto file = kotoba::gguf_parse(std::span<const uint8_t>(data, size), "fuzz.gguf");
    (void)file;
  } catch (const kotoba::Error&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
