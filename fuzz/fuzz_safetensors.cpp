// libFuzzer target: arbitrary bytes as a safetensors file (header, offsets, dtypes, tensors),
// then every tensor read back, floating ones through to_f32 as a model loader would.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kotoba::SafeTensors file = kotoba::parse_safetensors(std::span<const uint8_t>(data, size), "fuzz.safetensors");
    for (const auto& [name, tensor] : file.tensors) {
      if (tensor.dtype() == kotoba::DType::f32 || tensor.dtype() == kotoba::DType::bf16 ||
          tensor.dtype() == kotoba::DType::f16 || tensor.dtype() == kotoba::DType::f64) {
        kotoba::Tensor wide = kotoba::to_f32(tensor, name);
        kotoba::from_f32(wide, kotoba::DType::f16, name);
      } else {
        tensor.to_vector();
      }
    }
  } catch (const kotoba::Error&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
