// `kotoba lora merge BASE ADAPTER OUT` and `kotoba lora info BASE ADAPTER`: PEFT LoRA adapters
// merged into a plain model directory, or described. Argument parsing only; the work is
// nn/lora.h and io/peft.h.
#include <iostream>
#include <string>

#include "cli/command.h"
#include "io/model_dir.h"
#include "io/peft.h"
#include "nn/lora.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

const char* const kUsage =
    "kotoba lora merge BASE ADAPTER OUT\n"
    "  Loads the model directory BASE and the PEFT LoRA adapter directory ADAPTER\n"
    "  (adapter_config.json + adapter_model.safetensors), adds scaling * B A into every adapted\n"
    "  weight and writes OUT: a plain model directory (config.json, model.safetensors, tokenizer)\n"
    "  that transformers and kotoba open without PEFT. OUT is replaced only once complete.\n"
    "kotoba lora info BASE ADAPTER\n"
    "  Prints the adapted layers and PEFT's trainable-parameter line for the adapter on BASE.\n";

int cmd_lora(const cli::Args& args) {
  if (cli::wants_help(args) || args.empty()) {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string action = args[0];
  Flags flags = Flags::parse(cli::Args(args.begin() + 1, args.end()), "lora " + action, {}, {}, 3);
  const auto& pos = flags.positional();
  if (action == "merge") {
    KOTOBA_CHECK(pos.size() == 3, "lora merge: expected BASE ADAPTER OUT, got ", pos.size(), " arguments");
    LoadedModel base = load_model_dir(pos[0]);
    nn::LoraConfig config = load_peft_adapter(*base.model, pos[1]);
    const size_t layers = nn::lora_layers(*base.model).size();
    nn::merge_and_unload(*base.model);
    save_model_dir(pos[2], *base.model, base.tokenizer_path, base.generation);
    std::cout << "merged " << layers << " LoRA layers (r " << config.r << ", scaling " << config.scaling() << ") into "
              << pos[2] << std::endl;
    return 0;
  }
  if (action == "info") {
    KOTOBA_CHECK(pos.size() == 2, "lora info: expected BASE ADAPTER, got ", pos.size(), " arguments");
    LoadedModel base = load_model_dir(pos[0]);
    nn::LoraConfig config = load_peft_adapter(*base.model, pos[1]);
    std::cout << "r " << config.r << ", lora_alpha " << config.alpha << ", scaling " << config.scaling()
              << ", target_modules " << config.describe_targets() << "\n";
    for (auto& [name, linear] : nn::lora_layers(*base.model))
      std::cout << "  " << name << " (" << linear->out_features() << " x " << linear->in_features() << ")\n";
    std::cout << nn::trainable_parameters_report(*base.model) << std::endl;
    return 0;
  }
  throw Error("lora: unknown action '" + action + "' (expected merge or info; see kotoba lora --help)");
}

}  // namespace

KOTOBA_COMMAND("lora", "merge a PEFT LoRA adapter into a model directory, or describe one", cmd_lora);
