// `kotoba quantize MODEL --to FORMAT --out DIR`: a model directory with its Linear layers
// quantised (int8, q8_0, q4_0 or nf4), loadable by every command that loads a model. Argument
// parsing only; the work is io/quantized_model.h.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "io/model_dir.h"
#include "io/quantized_model.h"
#include "tokenizer/tokenizer.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

const char* const kUsage =
    "kotoba quantize MODEL --to FORMAT --out DIR [--int8-threshold T]\n"
    "  Writes DIR: the model directory MODEL with every Linear layer held quantised (those of the\n"
    "  blocks and an untied LM head; the embeddings, norms and a head tied to the embeddings stay\n"
    "  as they are), which generate, chat, eval and the trainers (QLoRA: sft --lora-r on a\n"
    "  quantised model) load like any model. FORMAT:\n"
    "    int8   row-wise absmax, 8 bits (LLM.int8()'s weight format)\n"
    "    q8_0   blocks of 32 with one scale, 8.5 bits (llama.cpp's Q8_0)\n"
    "    q4_0   blocks of 32 with one scale, 4.5 bits (llama.cpp's Q4_0)\n"
    "    nf4    4-bit NormalFloat, blocks of 64 with double-quantised absmax (QLoRA, bitsandbytes)\n"
    "    llm_int8  int8 weights run as LLM.int8(): activations quantised to int8 per row too, the\n"
    "           input features where some |x| > T (--int8-threshold, default 6) kept in f32; T = 0:\n"
    "           no such features (bitsandbytes' Linear8bitLt)\n"
    "  A layer whose input width is not a whole number of blocks stays f32 and is listed.\n"
    "  DIR is replaced only once complete.\n";

int cmd_quantize(const cli::Args& args) {
  if (cli::wants_help(args) || args.empty()) {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  Flags f = Flags::parse(args, "quantize", {"to", "out", "int8-threshold"}, {}, 1);
  KOTOBA_CHECK(f.positional().size() == 1, "quantize: expected the model directory (kotoba quantize MODEL --to "
               "FORMAT --out DIR)");
  KOTOBA_CHECK(f.has("to"), "quantize: --to FORMAT is required (int8, q8_0, q4_0, nf4 or llm_int8)");
  KOTOBA_CHECK(f.has("out"), "quantize: --out DIR is required");
  Int8Activations act;
  act.enabled = f.str("to") == "llm_int8";
  KOTOBA_CHECK(act.enabled || !f.has("int8-threshold"), "quantize: --int8-threshold goes with --to llm_int8");
  if (f.has("int8-threshold")) {
    act.threshold = float(f.num("int8-threshold", 6.0));
    KOTOBA_CHECK(std::isfinite(act.threshold) && act.threshold >= 0,
                 "quantize: --int8-threshold must be a number >= 0 (0: no outlier columns), got ",
                 f.str("int8-threshold"));
  }
  quant::WeightFormat format = quant::WeightFormat::int8;
  if (!act.enabled) {
    try {
      format = quant::parse_weight_format(f.str("to"));
    } catch (const Error& e) {
      throw Error(detail::concat("quantize: --to: ", e.what(), " (or llm_int8: int8 with int8 activations)"));
    }
  }
  const std::string out = f.str("out");
  KOTOBA_CHECK(std::filesystem::weakly_canonical(out) != std::filesystem::weakly_canonical(f.positional()[0]),
               "quantize: --out must differ from MODEL (the model is read while DIR is written)");
  LoadedModel loaded = load_model_dir(f.positional()[0]);
  const QuantizeReport report = quantize_model(*loaded.model, format, act);
  if (std::filesystem::path(loaded.tokenizer_path).filename() == "tokenizer.json")
    save_model_dir(out, *loaded.model, loaded.tokenizer_path, loaded.generation);
  else
    save_model_dir(out, *loaded.model, tokenizer::Tokenizer::load_dir(loaded.dir), loaded.generation);
  std::printf("quantised %zu Linear layers to %s", report.quantized.size(), quant::weight_format_name(format));
  if (act.enabled) std::printf(" with int8 activations (LLM.int8(), outlier threshold %g)", double(act.threshold));
  if (!report.skipped.empty()) {
    std::printf("; kept f32 (width not a whole number of blocks):");
    for (const std::string& s : report.skipped) std::printf(" %s", s.c_str());
  }
  std::printf("\nweights in memory: %.2f MB -> %.2f MB (%.2fx)\nwrote %s\n", double(report.bytes_before) / 1e6,
              double(report.bytes_after) / 1e6, double(report.bytes_after) / double(report.bytes_before), out.c_str());
  return 0;
}

}  // namespace

KOTOBA_COMMAND("quantize", "quantise a model's Linear layers to int8, q8_0, q4_0, nf4 or llm_int8", cmd_quantize);
