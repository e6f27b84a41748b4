// safetensors files (the Hugging Face tensor container): a validating, zero-copy reader and
// an atomic writer. Used for checkpoints, HF model import/export and the test references.
#pragma once
#include <map>
#include <string>

#include "core/tensor.h"

namespace kotoba {

struct SafeTensors {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" object
};

// Reads a safetensors file. Supported dtypes: F32, BF16, F16 (kept as raw f16), F64, I32, I64,
// I8. The file is memory-mapped copy-on-write (MAP_PRIVATE): tensors whose bytes are aligned
// to their element size point straight into the mapping (no copy; writing to them never
// touches the file), the rest are copied into aligned memory. Keep the file in place while its
// tensors live (replacing it by rename is fine; truncating it in place is not).
// Throws kotoba::Error naming the file and the tensor or field at fault for any malformed
// input: truncated file, absurd header length, bad JSON, unknown dtype, shape/byte-count
// mismatch, offsets out of range or overlapping.
SafeTensors load_safetensors(const std::string& path);

// Writes `tensors` (any layout; cpu; dtypes as above) and `metadata` to `path` atomically: a
// temporary file in the same directory is written, fsync'ed and renamed over `path`, so a
// reader sees either the old file or the complete new one.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace kotoba
