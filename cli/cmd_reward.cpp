// `kotoba reward`: trains a reward model (a language model with a scalar score head) on preference
// pairs. Every flag is a field of train::RewardConfig (and a key of the --config file); the loop
// is train/reward.
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/config_flags.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "nn/reward_model.h"
#include "train/reward.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

int usage() {
  std::cout << "kotoba reward --model DIR --data FILE --out DIR [--config cfg.json] [flags] [--resume] [--json]\n"
               "              [--quiet]\n"
               "  Trains a reward model on preference data: JSONL (or a JSON array) of prompt/chosen/rejected,\n"
               "  prompt/response_1/response_2/preference (1 or 2), or prompt/responses/ranks (every pair of\n"
               "  different rank). DIR is a causal LM (GPT-2 or LLaMA family; a score head is added) or a\n"
               "  reward model. Each reply is rendered after its prompt through the chat template; the reward\n"
               "  is the score of the last token, the loss -log sigmoid(r_chosen - r_rejected). Validation\n"
               "  reports the held-out accuracy (pairs ranked right) and mean margin. Writes OUT/model (opens\n"
               "  in transformers as AutoModelForSequenceClassification), OUT/loss.csv, OUT/loss.png and\n"
               "  OUT/checkpoint (--resume continues it exactly). With --lora-r the backbone stays frozen and\n"
               "  OUT/adapter is PEFT's SEQ_CLS adapter (score head included); OUT/model has it merged.\n"
               "  --json prints the final metrics as one JSON line, last on stdout.\n\nfields:\n";
  cli::print_config_flags(train::reward_config_fields());
  return 0;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

int cmd_reward(const cli::Args& args) {
  if (cli::wants_help(args)) return usage();
  const auto fields = train::reward_config_fields();
  std::vector<std::string> valued = cli::config_flag_names(fields);
  valued.push_back("config");
  Flags flags = Flags::parse(args, "reward", valued, {"resume", "json", "quiet"});
  const bool json_out = flags.has("json"), resume = flags.has("resume");

  train::RewardConfig config;
  if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
  cli::apply_config_flags(config, flags, fields);
  if (resume) {
    config = train::RewardTrainer::read_checkpoint_config(config.out);
    if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
    cli::apply_config_flags(config, flags, fields);
  }
  set_num_threads(int(config.threads));
  if (flags.has("quiet")) set_progress_quiet(true);

  std::ostream& log_stream = json_out ? std::cerr : std::cout;
  train::RewardOptions options{.progress = !flags.has("quiet"),
                               .log = [&](const std::string& line) { log_stream << line << std::endl; }};
  train::RewardTrainer trainer(config, options);
  if (resume) trainer.resume();
  log_stream << "reward model: " << trainer.model().model_type() << " from " << config.model << "; template "
             << chat::template_style_name(trainer.chat_template().style()) << "; "
             << trainer.model().parameter_count() << " parameters; " << trainer.total_steps() << " steps of "
             << config.batch << " pairs x " << config.grad_accum << " accumulated, at most " << trainer.config().max_length
             << " tokens each; " << num_threads() << " threads" << std::endl;
  train::RewardResult r = trainer.run();
  log_stream << "done: step " << r.step << " of " << r.total_steps << ", train loss " << r.train_loss
             << ", val loss " << r.val.loss << ", val accuracy " << 100 * r.val.accuracy << "%, mean margin "
             << r.val.mean_margin << "; " << r.train_pairs << " training and " << r.val_pairs
             << " validation pairs, " << r.truncated_sequences << " sequences cut at " << trainer.config().max_length
             << " tokens" << std::endl;
  if (json_out) {
    nlohmann::json j{{"step", r.step},
                     {"total_steps", r.total_steps},
                     {"finished", r.finished},
                     {"train_loss", number_or_null(r.train_loss)},
                     {"val_loss", number_or_null(r.val.loss)},
                     {"val_accuracy", number_or_null(r.val.accuracy)},
                     {"val_mean_margin", number_or_null(r.val.mean_margin)},
                     {"train_pairs", r.train_pairs},
                     {"val_pairs", r.val_pairs},
                     {"truncated_sequences", r.truncated_sequences},
                     {"dropped_pairs", r.dropped_pairs},
                     {"model_dir", r.model_dir},
                     {"adapter_dir", r.adapter_dir},
                     {"out", config.out}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("reward", "train a reward model on preference pairs (pairwise loss, held-out accuracy)", cmd_reward);
