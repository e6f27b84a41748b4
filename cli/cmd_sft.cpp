// `kotoba sft`: supervised fine-tuning of a model directory on instruction data, fully or with
// LoRA. Every flag is a field of train::SftConfig (and a key of the --config file); the loop is
// train/sft.
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/config_flags.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "train/sft.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

int usage() {
  std::cout << "kotoba sft --model DIR --data FILE --out DIR [--lora-r 8] [--config cfg.json] [flags] [--resume]\n"
               "           [--json] [--quiet]\n"
               "  Fine-tunes the model directory DIR (GPT-2 or LLaMA family) on instruction examples: Alpaca\n"
               "  JSON/JSONL (instruction/input/output), chat JSONL (messages), QA (question/answer/context),\n"
               "  summarization (document/summary) or plain text. Each example is rendered through the chat\n"
               "  template and the loss is taken on the assistant's replies only. Full fine-tuning writes\n"
               "  OUT/model; with --lora-r the base stays frozen and OUT/adapter is a PEFT LoRA adapter (and\n"
               "  OUT/model the merged model with --merge 1). OUT/loss.csv, OUT/loss.png and OUT/checkpoint\n"
               "  (--resume continues it exactly) as in pretraining.\n"
               "  --json prints the final metrics as one JSON line, last on stdout.\n\nfields:\n";
  cli::print_config_flags(train::sft_config_fields());
  return 0;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

int cmd_sft(const cli::Args& args) {
  if (cli::wants_help(args)) return usage();
  const auto fields = train::sft_config_fields();
  std::vector<std::string> valued = cli::config_flag_names(fields);
  valued.push_back("config");
  Flags flags = Flags::parse(args, "sft", valued, {"resume", "json", "quiet"});
  const bool json_out = flags.has("json"), resume = flags.has("resume");

  // Defaults, then (resuming) the checkpoint's settings, then the config file, then the flags.
  train::SftConfig config;
  if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
  cli::apply_config_flags(config, flags, fields);
  if (resume) {
    config = train::SftTrainer::read_checkpoint_config(config.out);
    if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
    cli::apply_config_flags(config, flags, fields);
  }
  set_num_threads(int(config.threads));
  if (flags.has("quiet")) set_progress_quiet(true);

  std::ostream& log_stream = json_out ? std::cerr : std::cout;
  train::SftOptions options{.progress = !flags.has("quiet"),
                            .log = [&](const std::string& line) { log_stream << line << std::endl; }};
  train::SftTrainer trainer(config, options);
  if (resume) trainer.resume();
  log_stream << "model: " << trainer.model().model_type() << " from " << config.model << "; template "
             << chat::template_style_name(trainer.chat_template().style()) << "; "
             << trainer.trainable_parameters_report() << "; " << trainer.total_steps() << " steps of " << config.batch
             << (config.pack ? " packed rows" : " examples") << " x " << config.grad_accum << " accumulated, at most "
             << config.max_length << " tokens each; " << num_threads() << " threads" << std::endl;
  train::SftResult result = trainer.run();
  log_stream << "done: step " << result.step << " of " << result.total_steps << ", train loss " << result.train_loss
             << ", val loss " << result.val_loss << "; " << result.train_examples << " training and "
             << result.val_examples << " validation examples, " << result.truncated_examples << " cut at "
             << config.max_length << " tokens" << std::endl;
  if (json_out) {
    nlohmann::json j{{"step", result.step},
                     {"total_steps", result.total_steps},
                     {"finished", result.finished},
                     {"train_loss", number_or_null(result.train_loss)},
                     {"val_loss", number_or_null(result.val_loss)},
                     {"train_examples", result.train_examples},
                     {"val_examples", result.val_examples},
                     {"truncated_examples", result.truncated_examples},
                     {"model_dir", result.model_dir},
                     {"adapter_dir", result.adapter_dir},
                     {"out", config.out}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("sft", "fine-tune a model on instruction data (full or LoRA; loss on the replies only)", cmd_sft);
