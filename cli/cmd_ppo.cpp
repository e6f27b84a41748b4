// `kotoba ppo`: RLHF with PPO on a model directory and prompts, rewarded by a reward model, a
// rule or a checker command, fully or with LoRA. Every flag is a field of train::PpoConfig (and a
// key of the --config file); the loop is train/ppo.
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
#include "train/ppo.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

int usage() {
  std::cout << "kotoba ppo --model SFT_DIR --data prompts.jsonl --out DIR (--reward-model RM_DIR | --reward RULE |\n"
               "           --reward-cmd CMD) [--batch 16] [--kl-coef 0.05] [--target-kl 0] [--num-ppo-epochs 4]\n"
               "           [--lora-r 8] [--config cfg.json] [flags] [--resume] [--json] [--quiet]\n"
               "  RLHF with PPO (TRL's PPOTrainer): every update samples one reply per prompt (batched, with KV\n"
               "  caches), scores it with the reward, gives each token a KL penalty to the starting model and\n"
               "  the score at the end, estimates advantages by GAE over a value head on the policy, and trains\n"
               "  policy and value head on PPO's clipped losses for num_ppo_epochs passes over minibatches.\n"
               "  --target-kl > 0 adapts the KL coefficient towards that KL per reply. Rewards: a reward model\n"
               "  (kotoba reward), a rule (ends-with:TEXT, contains:TEXT, regex:PATTERN) or a checker command\n"
               "  reading {\"prompt\": [...], \"completion\": \"...\"} JSON lines and printing one score a line.\n"
               "  Writes OUT/model (full) or OUT/adapter (LoRA), OUT/value_head.safetensors, loss.csv, loss.png,\n"
               "  metrics.csv (score, KL, entropy, clip fractions, value loss), reward.png, kl.png,\n"
               "  ppo_losses.png and OUT/checkpoint (--resume continues it).\n"
               "  --json prints the final metrics as one JSON line, last on stdout.\n\nfields:\n";
  cli::print_config_flags(train::ppo_config_fields());
  return 0;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

int cmd_ppo(const cli::Args& args) {
  if (cli::wants_help(args)) return usage();
  const auto fields = train::ppo_config_fields();
  std::vector<std::string> valued = cli::config_flag_names(fields);
  valued.push_back("config");
  Flags flags = Flags::parse(args, "ppo", valued, {"resume", "json", "quiet"});
  const bool json_out = flags.has("json"), resume = flags.has("resume");

  train::PpoConfig config;
  if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
  cli::apply_config_flags(config, flags, fields);
  if (resume) {
    config = train::PpoTrainer::read_checkpoint_config(config.out);
    if (flags.has("config")) train::apply_config_file(config, flags.str("config"), fields);
    cli::apply_config_flags(config, flags, fields);
  }
  set_num_threads(int(config.threads));
  if (flags.has("quiet")) set_progress_quiet(true);

  std::ostream& log_stream = json_out ? std::cerr : std::cout;
  train::PpoOptions options{.progress = !flags.has("quiet"),
                            .log = [&](const std::string& line) { log_stream << line << std::endl; }};
  train::PpoTrainer trainer(config, options);
  if (resume) trainer.resume();
  const std::string reward = !config.reward_model.empty() ? "reward model " + config.reward_model
                             : !config.reward.empty()     ? config.reward
                                                          : "command: " + config.reward_cmd;
  log_stream << "model: " << trainer.model().model_type() << " from " << config.model << "; template "
             << chat::template_style_name(trainer.chat_template().style()) << "; "
             << trainer.trainable_parameters_report() << "; PPO kl_coef " << config.kl_coef
             << (config.target_kl > 0 ? " (adaptive)" : "") << ", clip " << config.cliprange << ", "
             << config.num_ppo_epochs << " epochs x " << config.num_mini_batches << " minibatches; reward " << reward
             << "; " << trainer.total_updates() << " updates of " << config.batch << " prompts; " << num_threads()
             << " threads" << std::endl;
  train::PpoResult result = trainer.run();
  log_stream << "done: update " << result.update << " of " << result.total_updates << ", mean score "
             << result.train.score << ", KL " << result.train.kl;
  if (std::isfinite(result.val_reward)) log_stream << "; validation reward " << result.val_reward;
  log_stream << "; " << result.train_prompts << " training and " << result.val_prompts << " validation prompts"
             << std::endl;
  if (json_out) {
    const train::PpoUpdateMetrics& m = result.train;
    nlohmann::json j{{"update", result.update},
                     {"total_updates", result.total_updates},
                     {"finished", result.finished},
                     {"score", number_or_null(m.score)},
                     {"rlhf_reward", number_or_null(m.rlhf_reward)},
                     {"kl", number_or_null(m.kl)},
                     {"kl_coef", number_or_null(m.kl_coef)},
                     {"entropy", number_or_null(m.entropy)},
                     {"pg_loss", number_or_null(m.pg_loss)},
                     {"vf_loss", number_or_null(m.vf_loss)},
                     {"pg_clipfrac", number_or_null(m.pg_clipfrac)},
                     {"val_reward", number_or_null(result.val_reward)},
                     {"train_prompts", result.train_prompts},
                     {"val_prompts", result.val_prompts},
                     {"model_dir", result.model_dir},
                     {"adapter_dir", result.adapter_dir},
                     {"value_head", result.value_head_path},
                     {"out", config.out}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("ppo", "RLHF with PPO: policy + value head against a reward model or rule (full or LoRA)", cmd_ppo);
