// `kotoba pretrain`: GPT-2 / LLaMA (next-token) or BERT (masked-LM, --objective mlm) pretraining
// on the token shards of `kotoba prepare`. Every flag is a
// field of train::PretrainConfig (and a key of the --config JSON file); the loop is train/trainer.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/config_flags.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "train/trainer.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

int usage() {
  std::cout << "kotoba pretrain --data DIR --tokenizer tokenizer.json --out DIR [--config cfg.json] [flags] [--resume]\n"
               "                [--json] [--quiet]\n"
               "  Pretrains a GPT-2 or LLaMA (--objective clm) or a BERT masked LM (--objective mlm --arch bert,\n"
               "  with a WordPiece tokenizer) on the token shards written by `kotoba prepare` (DIR/meta.json). Writes\n"
               "  OUT/loss.csv and OUT/loss.png, a checkpoint in OUT/checkpoint every --checkpoint-every steps\n"
               "  (--resume continues it exactly), and the final model directory OUT/model (HF layout).\n"
               "  --config reads a JSON object of the same fields (keys with underscores); flags override it.\n"
               "  With --resume the checkpoint's settings are the defaults.\n"
               "  --json prints the final metrics as one JSON line, last on stdout.\n\nfields:\n";
  cli::print_config_flags(train::pretrain_config_fields());
  return 0;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

int cmd_pretrain(const cli::Args& args) {
  if (cli::wants_help(args)) return usage();
  std::vector<std::string> valued = cli::config_flag_names(train::pretrain_config_fields());
  valued.push_back("config");
  Flags flags = Flags::parse(args, "pretrain", valued, {"resume", "json", "quiet"});
  const bool json_out = flags.has("json"), resume = flags.has("resume");

  // Defaults, then (resuming) the checkpoint's settings, then the config file, then the flags.
  train::PretrainConfig config;
  if (flags.has("config")) apply_pretrain_config_file(config, flags.str("config"));
  cli::apply_config_flags(config, flags, train::pretrain_config_fields());
  if (resume) {
    config = train::Pretrainer::read_checkpoint_config(config.out);
    if (flags.has("config")) apply_pretrain_config_file(config, flags.str("config"));
    cli::apply_config_flags(config, flags, train::pretrain_config_fields());
  }
  // --objective mlm alone means BERT, the one masked-LM architecture.
  if (config.objective == "mlm" && !flags.has("arch") && config.arch == "gpt2") config.arch = "bert";
  set_num_threads(int(config.threads));
  if (flags.has("quiet")) set_progress_quiet(true);

  std::ostream& log_stream = json_out ? std::cerr : std::cout;
  train::PretrainerOptions options{.progress = !flags.has("quiet"),
                                   .log = [&](const std::string& line) { log_stream << line << std::endl; }};
  train::Pretrainer trainer(config, options);
  if (resume) trainer.resume();
  log_stream << "model: " << config.arch << ", " << config.n_layer << " layers x " << config.n_embd << " wide, "
             << config.n_head << " heads, context " << trainer.model_max_positions() << ", vocabulary "
             << trainer.model_vocab_size() << ", " << double(trainer.module().parameter_count()) / 1e6 << "M parameters; batch " << config.batch << " x "
             << config.seq << " x " << config.grad_accum << " accumulated; " << num_threads() << " threads"
             << (config.device == "cpu" ? "" : ", on " + config.device)
             << std::endl;
  train::PretrainResult result = trainer.run();
  log_stream << "done: step " << result.step << ", train loss " << result.train_loss << ", val loss "
             << result.val_loss << " (perplexity " << result.val_perplexity << "), " << result.tokens
             << " tokens; model in " << result.model_dir << std::endl;
  if (json_out) {
    nlohmann::json j{{"step", result.step},
                     {"finished", result.finished},
                     {"train_loss", number_or_null(result.train_loss)},
                     {"val_loss", number_or_null(result.val_loss)},
                     {"val_perplexity", number_or_null(result.val_perplexity)},
                     {"tokens", result.tokens},
                     {"model_dir", result.model_dir},
                     {"out", config.out}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("pretrain", "pretrain a GPT-2, LLaMA or BERT (masked LM) on token shards from `kotoba prepare`",
               cmd_pretrain);
