// The checkpoint every fine-tuning trainer (SFT, reward, DPO, GRPO, PPO) writes to OUT/checkpoint
// and resumes from: trainable.safetensors (the optimizer's parameters by slot name),
// optimizer.safetensors (the AdamW moments) and trainer_state.json ({format, version, adamw_step,
// config, ...}, the other keys each trainer's own). The directory is replaced atomically, so a
// kill leaves the previous checkpoint whole.
#pragma once
#include <cstdint>
#include <span>
#include <string>

#include <nlohmann/json.hpp>

#include "train/config_fields.h"

namespace kotoba {
class Generator;
}
namespace kotoba::nn {
class Module;
}

namespace kotoba::train {

class AdamW;

// What a trainer's trainer_state.json says it is: its "format" and "version" keys, and the name
// its errors use ("not a kotoba NAME checkpoint").
struct CheckpointKind {
  const char* format;  // e.g. "kotoba-sft-checkpoint"
  const char* name;    // e.g. "SFT"
  int version;
};

// OUT/checkpoint.
std::string trainer_checkpoint_dir(const std::string& out_dir);

// Writes `dir` atomically: the optimizer's parameters and moments, and `state` with format,
// version and adamw_step added.
void save_trainer_checkpoint(const std::string& dir, AdamW& optimizer, const CheckpointKind& kind,
                             nlohmann::json state);

// A number for trainer_state.json: null where it is not finite (JSON has no NaN).
nlohmann::json json_number(double v);

// {seed, offset} of a generator, and those of each LoRA adapter's dropout generator by layer
// name (each adapter draws its own masks; their counters are part of the state).
nlohmann::json generator_json(const Generator& g);
nlohmann::json lora_dropout_generators_json(const nn::Module& model);

// A checkpoint's trainer_state.json, read and checked for the trainer's format. The accessors'
// errors name the file and the key.
class TrainerState {
 public:
  // Reads OUT/checkpoint/trainer_state.json: "resume: no checkpoint in ..." where it is missing,
  // "not a kotoba NAME checkpoint" where its format is another's.
  TrainerState(const std::string& out_dir, const CheckpointKind& kind);

  const std::string& dir() const { return dir_; }
  const std::string& path() const { return path_; }
  const nlohmann::json& data() const { return state_; }

  // The "config" object (an Error where it is missing).
  const nlohmann::json& config() const;
  // An Error unless the version is the kind's.
  void check_version() const;
  // A number that must be there: an Error "PATH: key 'KEY' is missing or not a number" otherwise.
  int64_t integer(const char* key) const;
  double number(const char* key) const;
  // A number that may be absent or null (a NaN then).
  double optional_number(const char* key) const;
  // Sets `g` from a {seed, offset} object under `key` (an Error where it is missing).
  void restore_generator(const char* key, Generator& g) const;
  // Sets each LoRA adapter's dropout generator of `model` from lora_dropout_generators.
  void restore_lora_dropout_generators(const nn::Module& model) const;

 private:
  const nlohmann::json& number_field(const char* key) const;

  CheckpointKind kind_;
  std::string dir_, path_;
  nlohmann::json state_;
};

// The config a checkpoint was trained with.
template <typename C>
C read_trainer_checkpoint_config(const TrainerState& state, std::span<const ConfigField<C>> fields) {
  C config;
  apply_config_json(config, state.config(), state.path() + " (config)", fields);
  return config;
}

// The checkpoint of OUT (config_now.out) for resuming: its config must match `config_now` in
// every field that affects the trajectory, and its version be the kind's.
template <typename C>
TrainerState read_resumable_trainer_state(const C& config_now, const CheckpointKind& kind,
                                          std::span<const ConfigField<C>> fields) {
  TrainerState state(config_now.out, kind);
  check_resumable(read_trainer_checkpoint_config(state, fields), config_now, state.path(), fields);
  state.check_version();
  return state;
}

// Loads trainable.safetensors into the optimizer's parameters, optimizer.safetensors into its
// moments, and its step count from adamw_step.
void restore_trainer_checkpoint(const TrainerState& state, AdamW& optimizer);

// Creates OUT for a run: an Error ("COMMAND: 'OUT' already holds a checkpoint; pass --resume ...")
// where it holds a checkpoint that the run does not resume. Removes the temporary directories
// (.checkpoint.tmp-PID) a run killed while writing a checkpoint left behind.
void prepare_output_dir(const std::string& command, const std::string& out_dir, bool resuming);

// "the last good checkpoint (UNIT N) is in DIR", or "no checkpoint was written yet" where N is 0.
std::string last_good_checkpoint(const char* unit, int64_t last_checkpoint, const std::string& checkpoint_dir);
// The message of a run stopped by divergence: "COMMAND: WHAT; stopped: " the above, and a hint.
std::string stopped_message(const std::string& command, const std::string& what, const char* unit,
                            int64_t last_checkpoint, const std::string& checkpoint_dir);

}  // namespace kotoba::train
