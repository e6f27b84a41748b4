// `kotoba grpo`: group-relative policy optimisation of a model directory on prompts, with a rule
// reward, a checker command or a trained reward model, fully or with LoRA. Every flag is a field of train::GrpoConfig
// (and a key of the --config file); the loop is train/grpo.
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
#include "train/grpo.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

int usage() {
  std::cout << "kotoba grpo --model SFT_DIR --data prompts.jsonl --out DIR\n"
               "            (--reward ends-with:WORD | --reward-cmd CMD | --reward-model RM_DIR)\n"
               "            [--num-generations 8] [--beta 0] [--loss-type dapo] [--lora-r 8] [--config cfg.json]\n"
               "            [flags] [--resume] [--json] [--quiet]\n"
               "  Group-relative policy optimisation (TRL's GRPO): for each prompt the model samples\n"
               "  num_generations completions (batched, with KV caches), a reward scores them, advantages are\n"
               "  the rewards relative to their group, and the model follows PPO's clipped surrogate (no value\n"
               "  model), optionally held to the starting model by a KL term (--beta). Rewards: --reward\n"
               "  ends-with:TEXT, contains:TEXT or regex:PATTERN (1 or 0), or --reward-cmd CMD, a checker that\n"
               "  reads {\"prompt\": [...], \"completion\": \"...\"} JSON lines on stdin and prints one score a line,\n"
               "  or --reward-model RM_DIR, a reward model (`kotoba reward`'s OUT/model) scoring prompt + completion\n"
               "  through its own chat template as `kotoba score` does. Exactly one of the three.\n"
               "  Data: JSONL/JSON records with a prompt (string or conversation). Writes OUT/model (full) or\n"
               "  OUT/adapter (LoRA), OUT/loss.csv, loss.png, metrics.csv (reward, kl, clip ratio), reward.png\n"
               "  and OUT/checkpoint (--resume continues it).\n"
               "  --json prints the final metrics as one JSON line, last on stdout.\n\nfields:\n";
  cli::print_config_flags(train::grpo_config_fields());
  return 0;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

int cmd_grpo(const cli::Args& args) {
  if (cli::wants_help(args)) return usage();
  const auto fields = train::grpo_config_fields();
  std::vector<std::string> valued = cli::config_flag_names(fields);
  valued.push_back("config");
  Flags flags = Flags::parse(args, "grpo", valued, {"resume", "json", "quiet"});
  const bool json_out = flags.has("json"), resume = flags.has("resume");

  train::GrpoConfig config;
  if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
  cli::apply_config_flags(config, flags, fields);
  if (resume) {
    config = train::GrpoTrainer::read_checkpoint_config(config.out);
    if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
    cli::apply_config_flags(config, flags, fields);
  }
  set_num_threads(int(config.threads));
  if (flags.has("quiet")) set_progress_quiet(true);

  std::ostream& log_stream = json_out ? std::cerr : std::cout;
  train::GrpoOptions options{.progress = !flags.has("quiet"),
                             .log = [&](const std::string& line) { log_stream << line << std::endl; }};
  train::GrpoTrainer trainer(config, options);
  if (resume) trainer.resume();
  log_stream << "model: " << trainer.model().model_type() << " from " << config.model << "; template "
             << chat::template_style_name(trainer.chat_template().style()) << "; "
             << trainer.trainable_parameters_report() << "; GRPO " << config.loss_type << ", "
             << config.num_generations << " completions per prompt, beta " << config.beta << ", epsilon "
             << config.epsilon << "; reward "
             << (!config.reward.empty()       ? config.reward
                 : !config.reward_cmd.empty() ? "command: " + config.reward_cmd
                                              : "model: " + config.reward_model)
             << "; " << trainer.total_steps() << " steps of " << config.batch << " prompts x " << config.grad_accum
             << " accumulated; " << num_threads() << " threads" << std::endl;
  train::GrpoResult result = trainer.run();
  log_stream << "done: step " << result.step << " of " << result.total_steps << ", mean reward " << result.train.reward
             << ", loss " << result.train.loss;
  if (std::isfinite(result.val_reward)) log_stream << "; validation reward " << result.val_reward;
  log_stream << "; " << result.train_prompts << " training and " << result.val_prompts << " validation prompts"
             << std::endl;
  if (json_out) {
    nlohmann::json j{{"step", result.step},
                     {"total_steps", result.total_steps},
                     {"finished", result.finished},
                     {"reward", number_or_null(result.train.reward)},
                     {"reward_std", number_or_null(result.train.reward_std)},
                     {"loss", number_or_null(result.train.loss)},
                     {"kl", number_or_null(result.train.kl)},
                     {"clip_ratio", number_or_null(result.train.clip_ratio)},
                     {"val_reward", number_or_null(result.val_reward)},
                     {"train_prompts", result.train_prompts},
                     {"val_prompts", result.val_prompts},
                     {"model_dir", result.model_dir},
                     {"adapter_dir", result.adapter_dir},
                     {"out", config.out}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("grpo", "RL from a reward: group-relative policy optimisation (GRPO, full or LoRA)", cmd_grpo);
