// safetensors files (the Hugging Face tensor container): a validating, zero-copy reader, an
// atomic writer, HF's sharded checkpoints (model.safetensors.index.json) and dtype conversion
// for model loaders. Used for checkpoints, HF model import/export and the test references.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "core/tensor.h"

namespace kotoba {

struct SafeTensors {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" object
};

// Reads a safetensors file.
// Dtypes read: F32, BF16, F16, F64, I32, I64, I8 (each kept as it is in the file; to_f32 below
// turns the floating ones into f32). The other dtypes of the format (BOOL, U8, I16, U16, U32,
// U64, F8_E4M3, F8_E5M2, F8_E8M0, F4, F6_*, C64) have no kotoba element type: a file holding one
// is rejected with an error naming the tensor and its dtype, never read as something else.
// The file is memory-mapped copy-on-write (MAP_PRIVATE): tensors whose bytes are aligned
// to their element size point straight into the mapping (no copy; writing to them never
// touches the file), the rest are copied into aligned memory. Keep the file in place while its
// tensors live (replacing it by rename is fine; truncating it in place is not).
// Throws kotoba::Error naming the file and the tensor or field at fault for any malformed
// input: truncated file, absurd header length, bad JSON, unknown dtype, shape/byte-count
// mismatch, offsets out of range or overlapping.
SafeTensors load_safetensors(const std::string& path);

// The same parser over bytes in memory (`name` stands for the file in error messages). Every
// tensor is copied into its own memory, so `bytes` may go away afterwards.
SafeTensors parse_safetensors(std::span<const uint8_t> bytes, const std::string& name);

// Writes `tensors` (any layout; cpu; dtypes as above) and `metadata` to `path` atomically: a
// temporary file in the same directory is written, fsync'ed and renamed over `path`, so a
// reader sees either the old file or the complete new one.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A contiguous f32 copy of a floating tensor (f32, bf16, f16, f64; any layout, cpu), so that
// model loaders get f32 whatever the checkpoint holds. f64 rounds to nearest even; the 16-bit
// types convert exactly. Integer and packed tensors are refused; `name` labels the error.
Tensor to_f32(const Tensor& tensor, const std::string& name = "tensor");

// A contiguous copy of a floating tensor in `dtype` (f32, bf16, f16 or f64), rounding to
// nearest even, for writing checkpoints in the precision a user asks for.
Tensor from_f32(const Tensor& tensor, DType dtype, const std::string& name = "tensor");

// The weights of a Hugging Face model directory: `<dir>/model.safetensors` if it exists (as
// transformers prefers it), else `<dir>/model.safetensors.index.json` and every shard it names.
// The index must name plain files inside `dir`; every tensor it lists must be in the shard it
// names, and every tensor of a shard must be listed for that shard (so no tensor appears twice
// and a shard from another save is noticed). Errors name the file and the tensor at fault.
std::map<std::string, Tensor> load_model_weights(const std::string& dir);

// Writes `tensors` into `dir` (which must exist) as transformers does: one `model.safetensors`
// when max_shard_bytes is 0 or everything fits, else `model-00001-of-0000N.safetensors`... plus
// `model.safetensors.index.json` ({"metadata": {"total_size": bytes}, "weight_map": {...}}).
// Tensors fill shards in name order; one larger than max_shard_bytes gets a shard of its own.
// `metadata` goes into every file's __metadata__, with "format": "pt" added unless given (the
// transformers loader requires a format). Every file is written atomically; files of an earlier
// save of another layout (model.safetensors, the index, HF-named shards) are removed only after
// the new set is complete. A crash part-way leaves a directory that loads the old weights or
// the new ones, never a mix: when new shards would overwrite ones the old index names (same
// shard count), that index is removed first, so such a crash leaves no loadable weights.
void save_model_weights(const std::string& dir, const std::map<std::string, Tensor>& tensors,
                        int64_t max_shard_bytes = 0, const std::map<std::string, std::string>& metadata = {});

}  // namespace kotoba
