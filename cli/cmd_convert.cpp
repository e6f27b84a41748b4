// `kotoba convert SRC DST`: between a HF model directory and GGUF (either way), and from one HF
// directory to another in a new dtype or shard size. Argument parsing only; the work is
// io/gguf_convert.h and io/safetensors.h.
#include <cctype>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/gguf_info.h"
#include "core/atomic_file.h"
#include "io/gguf_convert.h"
#include "io/json_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"

using namespace kotoba;
using kotoba::cli::Flags;
namespace fs = std::filesystem;

namespace {

const char* const kUsage =
    "kotoba convert SRC DST [--type f32|f16|bf16|q8_0|q4_0] [--dtype f32|bf16|f16] [--shard-size SIZE] [--json]\n"
    "  SRC a model directory, DST ending in .gguf: writes llama.cpp's GGUF (gpt2, llama, mistral, qwen2);\n"
    "    --type stores the matrices as f32 (default), f16, bf16, q8_0 or q4_0 (norms and biases stay f32).\n"
    "  SRC a .gguf file, DST a directory: writes a HF model directory (weights dequantised to f32,\n"
    "    tokenizer.json rebuilt from the GGUF vocabulary).\n"
    "  SRC and DST model directories: rewrites the weights in --dtype (default: as they are stored)\n"
    "    and shards them at --shard-size (e.g. 2GB, 500MB, 1GiB; default: one file); the other files are\n"
    "    copied, config.json's torch_dtype updated.\n"
    "  Every output is written beside its destination and renamed into place: an existing DST is\n"
    "  replaced only once the new one is complete. --json prints {\"source\", \"destination\", \"format\",\n"
    "  \"bytes\"} as the last line.\n";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

GGMLType parse_gguf_type(const std::string& s) {
  if (s == "f32") return GGMLType::f32;
  if (s == "f16") return GGMLType::f16;
  if (s == "bf16") return GGMLType::bf16;
  if (s == "q8_0") return GGMLType::q8_0;
  if (s == "q4_0") return GGMLType::q4_0;
  throw Error("convert: --type must be f32, f16, bf16, q8_0 or q4_0, got '" + s + "'");
}

DType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return DType::f32;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  if (s == "f16" || s == "float16") return DType::f16;
  throw Error("convert: --dtype must be f32, bf16 or f16, got '" + s + "'");
}

const char* torch_dtype_name(DType d) {
  return d == DType::bf16 ? "bfloat16" : d == DType::f16 ? "float16" : "float32";
}

// "2GB" = 2e9 bytes as transformers counts; KiB/MiB/GiB are powers of two; a bare number is bytes.
int64_t parse_size(const std::string& s) {
  size_t digits = 0;
  while (digits < s.size() && (std::isdigit(static_cast<unsigned char>(s[digits])) || s[digits] == '.')) ++digits;
  KOTOBA_CHECK(digits > 0, "convert: --shard-size '", s, "' must start with a number (e.g. 2GB)");
  double number = 0;
  try {
    number = std::stod(s.substr(0, digits));
  } catch (const std::exception&) {
    throw Error("convert: --shard-size '" + s + "' is not a number followed by a unit");
  }
  std::string unit = s.substr(digits);
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  else if (unit == "KIB") scale = 1024.0;
  else if (unit == "MIB") scale = 1024.0 * 1024;
  else if (unit == "GIB") scale = 1024.0 * 1024 * 1024;
  KOTOBA_CHECK(scale > 0, "convert: --shard-size unit '", s.substr(digits), "' is not one of B, KB, MB, GB, KiB, MiB, GiB");
  double bytes = number * scale;
  KOTOBA_CHECK(bytes >= 1 && bytes < 9e18, "convert: --shard-size '", s, "' must be at least one byte");
  return int64_t(std::llround(bytes));
}

bool is_weights_file(const std::string& name) {
  return ends_with(name, ".safetensors") || name == "model.safetensors.index.json";
}

// HF directory -> HF directory: new dtype and/or sharding; the other files travel along.
void convert_hf_dir(const std::string& src, const std::string& dst, const Flags& f) {
  std::map<std::string, Tensor> tensors = load_model_weights(src);
  std::optional<DType> dtype;
  if (f.has("dtype")) dtype = parse_dtype(f.str("dtype"));
  const int64_t shard = f.has("shard-size") ? parse_size(f.str("shard-size")) : 0;
  for (auto& [name, t] : tensors) {
    bool floating = t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f16 ||
                    t.dtype() == DType::f64;
    // Copies: the source files may be the ones being replaced.
    t = floating && dtype ? from_f32(t, *dtype, name) : t.clone();
  }
  write_directory_atomically(dst, [&](const std::string& tmp_dir) {
    const fs::path tmp(tmp_dir);
    for (const fs::directory_entry& e : fs::directory_iterator(src)) {
      std::string name = e.path().filename().string();
      if (!e.is_regular_file() || is_weights_file(name)) continue;
      if (name == "config.json" && dtype) {
        nlohmann::json config = json_util::read_json_file(e.path().string());
        config["torch_dtype"] = torch_dtype_name(*dtype);
        write_file_atomically((tmp / name).string(), config.dump(2) + "\n");
      } else {
        fs::copy_file(e.path(), tmp / name);
      }
    }
    save_model_weights(tmp_dir, tensors, shard);
  });
}

int64_t path_bytes(const std::string& path) {
  if (fs::is_regular_file(path)) return int64_t(fs::file_size(path));
  int64_t total = 0;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(path))
    if (e.is_regular_file()) total += int64_t(e.file_size());
  return total;
}

int cmd_convert(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << kUsage;
    return 0;
  }
  Flags f = Flags::parse(args, "convert", {"type", "dtype", "shard-size"}, {"json"}, 2);
  KOTOBA_CHECK(f.positional().size() == 2, "convert: expected a source and a destination (kotoba convert SRC DST)");
  const std::string src = f.positional()[0], dst = f.positional()[1];
  KOTOBA_CHECK(fs::exists(src), "convert: source '", src, "' does not exist");
  std::string format;
  if (fs::is_regular_file(src)) {
    KOTOBA_CHECK(cli::is_gguf_file(src), "convert: source '", src,
                 "' is a file but not GGUF; a HF model is given as its directory");
    KOTOBA_CHECK(!ends_with(dst, ".gguf"), "convert: GGUF to GGUF is not a conversion kotoba does; give a directory as DST");
    KOTOBA_CHECK(!f.has("type") && !f.has("dtype") && !f.has("shard-size"), "convert: --type, --dtype and --shard-size "
                 "do not apply to GGUF import (weights are written as f32; convert the directory afterwards)");
    import_gguf(src, dst);
    format = "hf";
  } else if (ends_with(dst, ".gguf")) {
    KOTOBA_CHECK(!f.has("dtype") && !f.has("shard-size"), "convert: --dtype and --shard-size apply to HF outputs; "
                 "use --type for GGUF");
    export_gguf(src, dst, parse_gguf_type(f.str("type", "f32")));
    format = "gguf";
  } else {
    KOTOBA_CHECK(!f.has("type"), "convert: --type applies to GGUF outputs (DST ending in .gguf); use --dtype");
    convert_hf_dir(src, dst, f);
    format = "hf";
  }
  const int64_t bytes = path_bytes(dst);
  if (f.has("json")) {
    std::cout << nlohmann::json{{"source", src}, {"destination", dst}, {"format", format}, {"bytes", bytes}}.dump()
              << std::endl;
  } else {
    std::cout << "wrote " << dst << " (" << format << ", " << bytes << " bytes)" << std::endl;
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("convert", "convert a model between HF directories (dtype, shards) and GGUF", cmd_convert);
