// `kotoba dpo`: direct preference optimisation of a model directory on preference pairs, fully or
// with LoRA. Every flag is a field of train::DpoConfig (and a key of the --config file); the loop
// is train/dpo.
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "cli/command.h"
#include "cli/config_flags.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "nn/causal_lm.h"
#include "train/dpo.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

int usage() {
  std::cout << "kotoba dpo --model SFT_DIR --data prefs.jsonl --out DIR [--beta 0.1] [--loss-type sigmoid]\n"
               "           [--lora-r 8] [--config cfg.json] [flags] [--resume] [--json] [--quiet]\n"
               "  Direct preference optimisation (TRL's DPO): the model learns from pairs of a prompt, a chosen\n"
               "  and a rejected reply to prefer the chosen one, relative to a frozen reference (the starting\n"
               "  model; with --lora-r, the base with the adapters off). Data: JSONL or JSON of\n"
               "  {prompt, chosen, rejected}, {prompt, response_1, response_2, preference} or\n"
               "  {prompt, responses, ranks}; prompts are strings or conversations. Reference log-probabilities\n"
               "  are computed once before training (--precompute-ref 0: on the fly). Writes OUT/model (full) or\n"
               "  OUT/adapter (LoRA, PEFT layout), OUT/loss.csv and loss.png, OUT/metrics.csv and rewards.png\n"
               "  (TRL's rewards/chosen, rejected, accuracies, margins) and OUT/checkpoint (--resume continues it).\n"
               "  --json prints the final metrics as one JSON line, last on stdout.\n\nfields:\n";
  cli::print_config_flags(train::dpo_config_fields());
  return 0;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json metrics_json(const train::DpoMetrics& m) {
  if (m.pairs == 0) return nullptr;
  return {{"loss", number_or_null(m.loss)},
          {"rewards_chosen", number_or_null(m.rewards_chosen)},
          {"rewards_rejected", number_or_null(m.rewards_rejected)},
          {"rewards_accuracy", number_or_null(m.accuracy)},
          {"rewards_margin", number_or_null(m.margin)}};
}

int cmd_dpo(const cli::Args& args) {
  if (cli::wants_help(args)) return usage();
  const auto fields = train::dpo_config_fields();
  std::vector<std::string> valued = cli::config_flag_names(fields);
  valued.push_back("config");
  Flags flags = Flags::parse(args, "dpo", valued, {"resume", "json", "quiet"});
  const bool json_out = flags.has("json"), resume = flags.has("resume");

  train::DpoConfig config;
  if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
  cli::apply_config_flags(config, flags, fields);
  if (resume) {
    config = train::DpoTrainer::read_checkpoint_config(config.out);
    if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
    cli::apply_config_flags(config, flags, fields);
  }
  set_num_threads(int(config.threads));
  if (flags.has("quiet")) set_progress_quiet(true);

  std::ostream& log_stream = json_out ? std::cerr : std::cout;
  train::DpoOptions options{.progress = !flags.has("quiet"),
                            .log = [&](const std::string& line) { log_stream << line << std::endl; }};
  train::DpoTrainer trainer(config, options);
  if (resume) trainer.resume();
  log_stream << "model: " << trainer.model().model_type() << " from " << config.model << "; template "
             << chat::template_style_name(trainer.chat_template().style()) << "; "
             << trainer.trainable_parameters_report() << "; DPO " << config.loss_type << ", beta " << config.beta
             << ", reference " << (config.precompute_ref ? "precomputed" : "on the fly") << "; "
             << trainer.total_steps() << " steps of " << config.batch << " pairs x " << config.grad_accum
             << " accumulated; " << num_threads() << " threads" << std::endl;
  train::DpoResult result = trainer.run();
  log_stream << "done: step " << result.step << " of " << result.total_steps << ", train loss " << result.train.loss
             << ", reward accuracy " << result.train.accuracy << ", margin " << result.train.margin;
  if (result.val.pairs > 0)
    log_stream << "; validation loss " << result.val.loss << ", reward accuracy " << result.val.accuracy
               << ", margin " << result.val.margin;
  log_stream << "; " << result.train_pairs << " training and " << result.val_pairs << " validation pairs, "
             << result.dropped_pairs << " left out" << std::endl;
  if (json_out) {
    nlohmann::json j{{"step", result.step},
                     {"total_steps", result.total_steps},
                     {"finished", result.finished},
                     {"train", metrics_json(result.train)},
                     {"val", metrics_json(result.val)},
                     {"train_pairs", result.train_pairs},
                     {"val_pairs", result.val_pairs},
                     {"dropped_pairs", result.dropped_pairs},
                     {"truncated_pairs", result.truncated_pairs},
                     {"model_dir", result.model_dir},
                     {"adapter_dir", result.adapter_dir},
                     {"out", config.out}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("dpo", "preference optimisation on chosen/rejected pairs (DPO, full or LoRA)", cmd_dpo);
