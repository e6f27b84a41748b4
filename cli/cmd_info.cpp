// `kotoba info`: a model directory's architecture, parameter count and the memory its weights
// take at fp32, fp16/bf16, int8 and 4-bit NF4, with the formulas used for the quantized sizes.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/gguf_info.h"
#include "io/json_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "quant/packed.h"

using namespace kotoba;
using kotoba::cli::Flags;
namespace fs = std::filesystem;

namespace {

// The weights a quantising loader (LLM.int8, QLoRA) quantises: the blocks' Linear layers, not
// the embeddings, norms or LM head. GPT-2's are HF Conv1D (in, out), the LLaMA family's (out, in).
bool is_linear_weight(const std::string& name) {
  for (const char* s : {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight",
                        "_proj.weight"}) {
    std::string suffix = s;
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  }
  return false;
}

bool is_conv1d_layout(const std::string& name) { return name.find("_proj.weight") == std::string::npos; }

// Parses config.json the way loading the model would (same checks and errors), without building
// the model: info must not allocate the weights of a model it only describes.
std::string describe_architecture(const nlohmann::json& config, const std::string& file) {
  char buf[512];
  const std::string type = config.value("model_type", std::string());
  if (type == "gpt2") {
    const nn::GPT2Config c = gpt2_config_from_json(config, file);
    std::snprintf(buf, sizeof buf, "GPT-2, %lld layers, n_embd %lld, %lld heads, context %lld, vocabulary %lld",
                  (long long)c.n_layer, (long long)c.n_embd, (long long)c.n_head, (long long)c.n_positions,
                  (long long)c.vocab_size);
  } else if (type == "llama" || type == "mistral" || type == "qwen2") {
    const nn::LlamaConfig c = llama_config_from_json(config, file);
    const char* scaling[] = {"", ", linear RoPE scaling", ", llama3 RoPE scaling"};
    std::snprintf(buf, sizeof buf,
                  "%s, %lld layers, hidden %lld, %lld heads (%lld key/value heads, head_dim %lld), MLP %lld, "
                  "context %lld, vocabulary %lld, rope_theta %g%s%s%s",
                  c.model_type.c_str(), (long long)c.num_hidden_layers, (long long)c.hidden_size,
                  (long long)c.num_attention_heads, (long long)c.num_key_value_heads, (long long)c.resolved_head_dim(),
                  (long long)c.intermediate_size, (long long)c.max_position_embeddings, (long long)c.vocab_size,
                  c.rope_theta, scaling[int(c.rope_scaling.type)],
                  c.sliding_window > 0 ? (", sliding window " + std::to_string(c.sliding_window)).c_str() : "",
                  c.tie_word_embeddings ? ", tied embeddings" : "");
  } else {
    build_model(config, file);  // throws the error naming the missing or unsupported model_type
    return type;
  }
  return buf;
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
                 "  the blocks' Linear weights (GPT-2's c_attn, c_proj, c_fc; the LLaMA family's *_proj) are\n"
                 "  quantized, embeddings, biases, norms and the LM head stay at 16 bits.\n"
                 "  With L = Linear weight elements, R = their output rows, O = the other elements:\n"
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
  if (fs::is_regular_file(dir) && cli::is_gguf_file(dir)) return cli::print_gguf_info(dir, f.has("json"));
  KOTOBA_CHECK(fs::is_directory(dir), dir, ": not a model directory");
  std::string config_path = (fs::path(dir) / "config.json").string();
  const nlohmann::json config = json_util::read_json_file(config_path);
  const std::string description = describe_architecture(config, config_path);
  // memory-mapped (model.safetensors or the shards of its index): only the headers are read here
  const std::map<std::string, Tensor> tensors = load_model_weights(dir);
  const bool tied = config.value("tie_word_embeddings", config.value("model_type", std::string()) == "gpt2");

  double linear = 0, linear_rows = 0, other = 0, nf4_blocks = 0, dq_groups = 0, stored = 0;
  // A quantised directory (kotoba quantize): its Linear weights are in quantized.safetensors.
  std::string quantized_format;
  std::string activation_mode;  // LLM.int8(): ", int8 activations (LLM.int8(), outlier threshold T)"
  bool head_quantized = false;  // `kotoba quantize` quantises an untied LM head: counted with the Linear weights
  if (config.contains("quantization_config") && config["quantization_config"].is_object()) {
    const nlohmann::json& qc = config["quantization_config"];
    quantized_format = qc.value("format", std::string("?"));
    if (qc.value("activations", std::string()) == "int8" && qc.contains("llm_int8_threshold") &&
        qc["llm_int8_threshold"].is_number())
      activation_mode = detail::concat(" with int8 activations (LLM.int8(), outlier threshold ",
                                       qc["llm_int8_threshold"].get<double>(), ")");
    const int bits = quant::weight_format_bits(quant::parse_weight_format(quantized_format));
    const SafeTensors q = load_safetensors((fs::path(dir) / "quantized.safetensors").string());
    head_quantized = q.tensors.count("lm_head.codes") > 0;
    for (auto& [name, t] : q.tensors) {
      stored += double(t.nbytes());
      if (name.size() < 6 || name.compare(name.size() - 6, 6, ".codes") != 0 || t.ndim() != 2) continue;
      const double n = double(t.size(0)) * double(t.size(1)) * (bits == 4 ? 2 : 1);
      linear += n;
      linear_rows += double(t.size(0));
      const double blocks = std::ceil(n / 64.0);
      nf4_blocks += blocks;
      dq_groups += std::ceil(blocks / 256.0);
    }
  }
  for (auto& [name, t] : tensors) {
    stored += double(t.nbytes());
    if (name == "lm_head.weight" && tied) continue;  // the embeddings' memory
    double n = double(t.numel());
    if (is_linear_weight(name) && t.ndim() == 2) {
      linear += n;
      linear_rows += double(is_conv1d_layout(name) ? t.size(1) : t.size(0));  // one scale per output feature
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
    nlohmann::json j = config;
    if (!quantized_format.empty()) memory["stored (" + quantized_format + ")"] = int64_t(std::llround(stored));
    j.update(nlohmann::json{{"parameters", int64_t(params)},
                     {"linear_parameters", int64_t(linear)},
                     {"memory_bytes", memory}});
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::printf("%s: %s\n", dir.c_str(), description.c_str());
  std::printf("parameters: %lld (%.2fM; %lld in Linear weights%s, %lld in embeddings, biases, norms%s)\n\n",
              (long long)params, params / 1e6, (long long)linear,
              head_quantized ? " (the quantised LM head's included)" : "", (long long)other,
              tied ? "; LM head tied" : head_quantized ? "" : " and the LM head");
  std::printf("  %-24s %14s %12s %14s\n", "precision", "bytes", "size", "bits/param");
  for (const Row& r : rows)
    std::printf("  %-24s %14lld %12s %14.2f\n", r.name, (long long)std::llround(r.bytes), human_bytes(r.bytes).c_str(),
                8 * r.bytes / params);
  if (!quantized_format.empty())
    std::printf("\nthis directory holds its Linear weights as %s%s: %s of weights stored (%.2f bits/param)\n",
                quantized_format.c_str(), activation_mode.c_str(), human_bytes(stored).c_str(), 8 * stored / params);
  std::printf("\nQuantized rows: Linear weights quantized, everything else at 16 bits; NF4 stores 4 bits per weight\n"
              "plus one fp32 absmax per 64-weight block (4 + 32/64 = 4.5 bits); double quantization stores that\n"
              "absmax in 8 bits with one fp32 constant per 256 blocks (4 + 8/64 + 32/16384 = 4.127 bits).\n");
  return 0;
}

}  // namespace

KOTOBA_COMMAND("info", "parameter count and memory of a model directory at fp32/fp16/int8/nf4", cmd_info);
