// Fine-tuning checkpoints (train/checkpoint.h).
#include "train/checkpoint.h"

#include <cmath>
#include <filesystem>
#include <map>

#include "core/atomic_file.h"
#include "core/rng.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "nn/lora.h"
#include "train/optim.h"

namespace kotoba::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kWeightsFile = "trainable.safetensors";
constexpr const char* kMomentsFile = "optimizer.safetensors";
}  // namespace

std::string trainer_checkpoint_dir(const std::string& out_dir) { return (fs::path(out_dir) / "checkpoint").string(); }

void save_trainer_checkpoint(const std::string& dir, AdamW& optimizer, const CheckpointKind& kind, json state) {
  state["format"] = kind.format;
  state["version"] = kind.version;
  state["adamw_step"] = optimizer.step_count();
  write_directory_atomically(dir, [&](const std::string& tmp) {
    std::map<std::string, Tensor> weights;
    for (auto& slot : optimizer.slots()) weights[slot.name] = slot.param.detach();
    save_safetensors((fs::path(tmp) / kWeightsFile).string(), weights, {{"format", "pt"}});
    save_adamw_moments(optimizer, (fs::path(tmp) / kMomentsFile).string());
    write_file_atomically((fs::path(tmp) / kStateFile).string(), state.dump(2) + "\n");
  });
}

json json_number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json generator_json(const Generator& g) { return {{"seed", g.seed()}, {"offset", g.offset()}}; }

json lora_dropout_generators_json(const nn::Module& model) {
  json generators = json::object();
  for (const auto& [name, linear] : nn::lora_layers(model))
    generators[name] = {linear->lora()->dropout_gen.seed(), linear->lora()->dropout_gen.offset()};
  return generators;
}

TrainerState::TrainerState(const std::string& out_dir, const CheckpointKind& kind)
    : kind_(kind), dir_(trainer_checkpoint_dir(out_dir)), path_((fs::path(dir_) / kStateFile).string()) {
  KOTOBA_CHECK(fs::is_regular_file(path_), "resume: no checkpoint in '", out_dir, "' (", path_, " is missing)");
  state_ = read_config_file(path_);
  KOTOBA_CHECK(state_.is_object() && state_.value("format", "") == kind_.format, path_, ": not a kotoba ", kind_.name,
               " checkpoint (key 'format' should be \"", kind_.format, "\")");
}

const json& TrainerState::config() const {
  auto it = state_.find("config");
  KOTOBA_CHECK(it != state_.end() && it->is_object(), path_, ": key 'config' is missing");
  return *it;
}

void TrainerState::check_version() const {
  KOTOBA_CHECK(state_.value("version", 0) == kind_.version, path_, ": version ", state_.value("version", nlohmann::json()).dump(),
               " is not supported (expected ", kind_.version, ")");
}

const json& TrainerState::number_field(const char* key) const {
  auto it = state_.find(key);
  KOTOBA_CHECK(it != state_.end() && it->is_number(), path_, ": key '", key, "' is missing or not a number");
  return *it;
}

int64_t TrainerState::integer(const char* key) const { return number_field(key).get<int64_t>(); }
double TrainerState::number(const char* key) const { return number_field(key).get<double>(); }

double TrainerState::optional_number(const char* key) const {
  auto it = state_.find(key);
  return it != state_.end() && it->is_number() ? it->get<double>() : std::nan("");
}

void TrainerState::restore_generator(const char* key, Generator& g) const {
  auto it = state_.find(key);
  const bool ok = it != state_.end() && it->is_object() && it->contains("seed") && (*it)["seed"].is_number() &&
                  it->contains("offset") && (*it)["offset"].is_number();
  KOTOBA_CHECK(ok, path_, ": key '", key, "' is missing");
  g.set_state((*it)["seed"].get<uint64_t>(), (*it)["offset"].get<uint64_t>());
}

void TrainerState::restore_lora_dropout_generators(const nn::Module& model) const {
  auto gens = state_.find("lora_dropout_generators");
  for (const auto& [name, linear] : nn::lora_layers(model)) {
    KOTOBA_CHECK(gens != state_.end() && gens->contains(name) && (*gens)[name].is_array() && (*gens)[name].size() == 2,
                 path_, ": key 'lora_dropout_generators' has no entry for adapter '", name, "'");
    linear->lora()->dropout_gen.set_state((*gens)[name][0].get<uint64_t>(), (*gens)[name][1].get<uint64_t>());
  }
}

void restore_trainer_checkpoint(const TrainerState& state, AdamW& optimizer) {
  const std::string weights_path = (fs::path(state.dir()) / kWeightsFile).string();
  SafeTensors weights = load_safetensors(weights_path);
  for (auto& slot : optimizer.slots()) restore_checkpoint_tensor(weights.tensors, weights_path, slot.name, slot.param);
  load_adamw_moments(optimizer, (fs::path(state.dir()) / kMomentsFile).string());
  optimizer.set_step_count(state.integer("adamw_step"));
}

void prepare_output_dir(const std::string& command, const std::string& out_dir, bool resuming) {
  fs::create_directories(out_dir);
  KOTOBA_CHECK(resuming || !fs::exists(trainer_checkpoint_dir(out_dir)), command, ": '", out_dir,
               "' already holds a checkpoint; pass --resume to continue it, or choose another --out");
  for (auto& entry : fs::directory_iterator(out_dir)) {  // leftovers of a run killed mid-checkpoint
    if (entry.path().filename().string().rfind(".checkpoint.tmp-", 0) == 0) {
      std::error_code ec;
      fs::remove_all(entry.path(), ec);
    }
  }
}

std::string last_good_checkpoint(const char* unit, int64_t last_checkpoint, const std::string& checkpoint_dir) {
  return last_checkpoint > 0 ? detail::concat("the last good checkpoint (", unit, " ", last_checkpoint, ") is in ",
                                              checkpoint_dir)
                             : std::string("no checkpoint was written yet");
}

std::string stopped_message(const std::string& command, const std::string& what, const char* unit,
                            int64_t last_checkpoint, const std::string& checkpoint_dir) {
  return command + ": " + what + "; stopped: " + last_good_checkpoint(unit, last_checkpoint, checkpoint_dir) +
         " (try a lower --lr or a longer --warmup)";
}

}  // namespace kotoba::train
