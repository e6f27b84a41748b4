// `kotoba info`: a model directory's architecture, parameter count and the memory its weights
// take at fp32, fp16/bf16, int8 and 4-bit NF4, with the formulas used for the quantized sizes.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "io/model_dir.h"
#include "io/safetensors.h"

using namespace kotoba;
using kotoba::cli::Flags;
namespace fs = std::filesystem;

namespace {

bool is_linear_weight(const std::string& name) {
  for (const char* s : {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"}) {
    std::string suffix = s;
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  }
  return false;
}

std::string human_bytes(double bytes) {
  char buf[32];
  if (bytes >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f MB", bytes / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.1f kB", bytes / 1e3);
  return buf;
}

int cmd_info(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba info MODEL [--json]\n"
                 "  Architecture, parameter count and weight memory of the model directory MODEL at fp32,\n"
                 "  fp16/bf16, int8 and 4-bit NF4. Quantized sizes assume what LLM.int8 / QLoRA loaders do:\n"
                 "  the Linear weights (c_attn, c_proj, c_fc) are quantized, embeddings, biases and norms stay\n"
                 "  at 16 bits. With L = Linear weight elements, R = their output rows, O = the other elements:\n"
                 "    int8 (row-wise absmax)      L + 4 R + 2 O bytes\n"
                 "    NF4 (blocksize 64)          L/2 + 4 ceil(L/64) + 2 O bytes    (4.5 bits per weight)\n"
                 "    NF4 + double quantization   L/2 + ceil(L/64) + 4 ceil(L/64/256) + 2 O bytes (~4.13 bits)\n"
                 "  (ceil per tensor). Training with AdamW in fp32 needs 16 bytes per parameter (weights, grads,\n"
                 "  two moments) before activations.\n";
    return 0;
  }
  Flags f = Flags::parse(args, "info", {}, {"json"}, 1);
  KOTOBA_CHECK(f.positional().size() == 1, "info: expected the model directory (kotoba info MODEL)");
  const std::string dir = f.positional()[0];
  KOTOBA_CHECK(fs::is_directory(dir), dir, ": not a model directory");
  std::string config_path = (fs::path(dir) / "config.json").string();
  std::string weights_path = (fs::path(dir) / "model.safetensors").string();
  nn::GPT2Config config = read_gpt2_config(config_path);
  SafeTensors weights = load_safetensors(weights_path);  // memory-mapped: only the header is read here

  double linear = 0, linear_rows = 0, other = 0, nf4_blocks = 0, dq_groups = 0;
  for (auto& [name, t] : weights.tensors) {
    if (name == "lm_head.weight") continue;  // tied to wte: the same memory
    double n = double(t.numel());
    if (is_linear_weight(name) && t.ndim() == 2) {
      linear += n;
      linear_rows += double(t.size(1));  // HF Conv1D (in, out): one scale per output feature
      double blocks = std::ceil(n / 64.0);
      nf4_blocks += blocks;
      dq_groups += std::ceil(blocks / 256.0);
    } else {
      other += n;
    }
  }
  const double params = linear + other;
  struct Row {
    const char* name;
    double bytes;
  };
  const Row rows[] = {
      {"fp32", 4 * params},
      {"fp16 / bf16", 2 * params},
      {"int8 (row-wise absmax)", linear + 4 * linear_rows + 2 * other},
      {"nf4 (blocksize 64)", linear / 2 + 4 * nf4_blocks + 2 * other},
      {"nf4 + double quant", linear / 2 + nf4_blocks + 4 * dq_groups + 2 * other},
      {"training (AdamW fp32)", 16 * params},
  };
  if (f.has("json")) {
    nlohmann::json memory = nlohmann::json::object();
    for (const Row& r : rows) memory[r.name] = int64_t(std::llround(r.bytes));
    nlohmann::json j{{"model_type", "gpt2"},
                     {"vocab_size", config.vocab_size},
                     {"n_positions", config.n_positions},
                     {"n_embd", config.n_embd},
                     {"n_layer", config.n_layer},
                     {"n_head", config.n_head},
                     {"parameters", int64_t(params)},
                     {"linear_parameters", int64_t(linear)},
                     {"memory_bytes", memory}};
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::printf("%s: GPT-2, %lld layers, n_embd %lld, %lld heads, context %lld, vocabulary %lld\n", dir.c_str(),
              (long long)config.n_layer, (long long)config.n_embd, (long long)config.n_head,
              (long long)config.n_positions, (long long)config.vocab_size);
  std::printf("parameters: %lld (%.2fM; %lld in Linear weights, %lld in embeddings, biases and norms; LM head tied)\n\n",
              (long long)params, params / 1e6, (long long)linear, (long long)other);
  std::printf("  %-24s %14s %12s %14s\n", "precision", "bytes", "size", "bits/param");
  for (const Row& r : rows)
    std::printf("  %-24s %14lld %12s %14.2f\n", r.name, (long long)std::llround(r.bytes), human_bytes(r.bytes).c_str(),
                8 * r.bytes / params);
  std::printf("\nQuantized rows: Linear weights quantized, everything else at 16 bits; NF4 stores 4 bits per weight\n"
              "plus one fp32 absmax per 64-weight block (4 + 32/64 = 4.5 bits); double quantization stores that\n"
              "absmax in 8 bits with one fp32 constant per 256 blocks (4 + 8/64 + 32/16384 = 4.127 bits).\n");
  return 0;
}

}  // namespace

KOTOBA_COMMAND("info", "parameter count and memory of a model directory at fp32/fp16/int8/nf4", cmd_info);
