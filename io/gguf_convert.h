// Hugging Face model directory <-> GGUF for the architectures llama.cpp and kotoba share: gpt2,
// llama (and mistral, which llama.cpp runs as llama) and qwen2, with llama.cpp's tensor names,
// layouts, hyperparameter keys and tokenizer metadata, so that llama.cpp runs the export.
#pragma once
#include <string>

#include "io/gguf.h"

namespace kotoba {

// Writes the model directory `model_dir` (config.json, safetensors weights, tokenizer.json,
// optional tokenizer_config.json and generation_config.json) to `gguf_path` atomically. Matrices
// are stored as `weight_type` (F32, F16, BF16, Q8_0 or Q4_0; the block types fall back to F16 for a matrix whose
// rows are not a multiple of 32, as llama.cpp's converter does); norms, biases, other 1-D tensors
// and GPT-2's position table stay F32. A setting llama.cpp would compute differently (e.g. a
// sliding window shorter than the context, Llama 3 RoPE scaling) or a tokenizer it cannot
// reproduce is an error naming the file and key.
void export_gguf(const std::string& model_dir, const std::string& gguf_path, GGMLType weight_type);

// Writes a GGUF file of one of these architectures as a model directory (weights dequantised to
// f32; LLaMA's rotary row order and GPT-2's Conv1D layout restored; tokenizer.json rebuilt from
// the byte-level BPE vocabulary and merges; tokenizer_config.json and generation_config.json from
// the special tokens). The directory is replaced atomically. SentencePiece-style ("llama")
// vocabularies and unknown pre-tokenizers are refused with an error saying so.
void import_gguf(const std::string& gguf_path, const std::string& model_dir);

// llama.cpp's general.file_type for a file whose matrices are `weight_type`.
uint32_t gguf_file_type(GGMLType weight_type);

}  // namespace kotoba
