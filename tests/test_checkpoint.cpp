// train/checkpoint: a fine-tuning checkpoint round trips the optimizer's parameters, moments and
// step count; reading one names the file and the key at fault; metrics CSV rows round trip; the
// config checks the trainers share name the command and the key.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/tensor.h"
#include "train/checkpoint.h"
#include "train/loss_log.h"
#include "train/optim.h"
#include "test_util.h"
#include "train/ppo.h"
#include "train/reward.h"
#include "train/sft.h"

using namespace kotoba;
using namespace kotoba::train;
using nlohmann::json;

namespace {

constexpr CheckpointKind kKind{"kotoba-test-checkpoint", "test", 3};

struct Config {
  int64_t steps = 4;
  double lr = 0.1;
  std::string out;
};

std::span<const ConfigField<Config>> config_fields() {
  static const ConfigField<Config> fields[] = {
      {"steps", &Config::steps, "steps", true},
      {"lr", &Config::lr, "learning rate", true},
      {"out", &Config::out, "output directory", false},
  };
  return fields;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    out_ = kotoba::testing::scratch_path("checkpoint", ::testing::UnitTest::GetInstance()->current_test_info()->name())
               .string();
    std::filesystem::create_directories(out_);
  }
  void TearDown() override { std::filesystem::remove_all(out_); }

  std::string state_path() const { return trainer_checkpoint_dir(out_) + "/trainer_state.json"; }
  void write_state(const json& state) const {
    std::filesystem::create_directories(trainer_checkpoint_dir(out_));
    std::ofstream(state_path()) << state.dump(2);
  }
  template <typename F>
  std::string error_of(F f) const {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  std::string out_;
};

TEST_F(CheckpointTest, SaveThenRestoreRoundTrips) {
  Tensor w = Tensor::from_vector({1.0f, 2.0f, 3.0f}, {3});
  w.set_requires_grad(true);  // AdamW keeps slots for trainable tensors only
  AdamW optimizer({{"w", w}}, AdamWConfig{});
  optimizer.set_step_count(7);
  // Moments a run would have by now (fresh ones are zero, and would round trip by accident).
  optimizer.slots()[0].m.copy_from(Tensor::from_vector({0.1f, -0.2f, 0.3f}, {3}));
  optimizer.slots()[0].v.copy_from(Tensor::from_vector({0.01f, 0.04f, 0.09f}, {3}));
  Config config;
  config.out = out_;
  save_trainer_checkpoint(trainer_checkpoint_dir(out_), optimizer, kKind,
                          {{"step", 2}, {"loss", json_number(std::nan(""))},
                           {"config", config_to_json(config, config_fields())}});

  Tensor w2 = Tensor::from_vector({0.0f, 0.0f, 0.0f}, {3});
  w2.set_requires_grad(true);
  AdamW restored({{"w", w2}}, AdamWConfig{});
  const TrainerState state = read_resumable_trainer_state(config, kKind, config_fields());
  EXPECT_EQ(state.data()["format"], kKind.format);
  EXPECT_EQ(state.data()["version"], kKind.version);
  EXPECT_EQ(state.integer("step"), 2);
  EXPECT_TRUE(state.data()["loss"].is_null());
  EXPECT_TRUE(std::isnan(state.optional_number("loss")));
  EXPECT_TRUE(std::isnan(state.optional_number("absent")));
  restore_trainer_checkpoint(state, restored);
  EXPECT_EQ(restored.step_count(), 7);
  EXPECT_EQ(w2.to_vector(), (std::vector<float>{1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(restored.slots()[0].m.to_vector(), (std::vector<float>{0.1f, -0.2f, 0.3f}));
  EXPECT_EQ(restored.slots()[0].v.to_vector(), (std::vector<float>{0.01f, 0.04f, 0.09f}));

  config.lr = 0.2;  // a field that affects the trajectory
  EXPECT_NE(error_of([&] { read_resumable_trainer_state(config, kKind, config_fields()); }).find("'lr'"),
            std::string::npos);
}

TEST_F(CheckpointTest, ErrorsNameTheFileAndTheKey) {
  EXPECT_NE(error_of([&] { (void)TrainerState(out_, kKind); }).find("resume: no checkpoint in '" + out_ + "'"),
            std::string::npos);

  write_state({{"format", "kotoba-other-checkpoint"}});
  EXPECT_NE(error_of([&] { (void)TrainerState(out_, kKind); }).find(state_path() + ": not a kotoba test checkpoint"),
            std::string::npos);

  write_state({{"format", kKind.format}, {"version", 2}, {"step", "three"}});
  const TrainerState state(out_, kKind);
  EXPECT_NE(error_of([&] { state.check_version(); }).find(state_path() + ": version 2 is not supported (expected 3)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { state.config(); }).find(state_path() + ": key 'config' is missing"), std::string::npos);
  EXPECT_NE(error_of([&] { state.integer("step"); }).find(state_path() + ": key 'step' is missing or not a number"),
            std::string::npos);
  EXPECT_NE(error_of([&] { state.number("kl_coef"); }).find(state_path() + ": key 'kl_coef' is missing"),
            std::string::npos);
}

TEST_F(CheckpointTest, OutputDirWithACheckpointNeedsResume) {
  const std::string out = out_ + "/run";
  prepare_output_dir("sft", out, false);
  EXPECT_TRUE(std::filesystem::is_directory(out));
  std::filesystem::create_directories(trainer_checkpoint_dir(out));
  EXPECT_NE(error_of([&] { prepare_output_dir("sft", out, false); })
                .find("sft: '" + out + "' already holds a checkpoint; pass --resume to continue it"),
            std::string::npos);
  prepare_output_dir("sft", out, true);
}

TEST_F(CheckpointTest, StoppedMessageNamesTheLastGoodCheckpoint) {
  EXPECT_EQ(stopped_message("ppo", "the loss became nan", "update", 20, "OUT/checkpoint"),
            "ppo: the loss became nan; stopped: the last good checkpoint (update 20) is in OUT/checkpoint (try a "
            "lower --lr or a longer --warmup)");
  EXPECT_EQ(last_good_checkpoint("step", 0, "OUT/checkpoint"), "no checkpoint was written yet");
}

TEST_F(CheckpointTest, CsvRowsRoundTripAndSkipCutRows) {
  const std::string path = out_ + "/metrics.csv";
  std::ofstream(path) << "step,a,b\n";
  const double first[] = {0.5, std::nan("")}, second[] = {1e-9, 2.0};
  append_csv_line(path, csv_line(1, first));
  append_csv_line(path, csv_line(2, second));
  append_csv_line(path, "3,0.25");  // cut short by a kill
  EXPECT_EQ(csv_line(1, first), "1,0.5,\n");
  const std::vector<CsvRow> rows = read_csv_rows(path, 3, 10);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].step, 1);
  EXPECT_EQ(rows[0].values[0], 0.5);
  EXPECT_TRUE(std::isnan(rows[0].values[1]));
  EXPECT_EQ(rows[1].values, (std::vector<double>{1e-9, 2.0}));
  EXPECT_EQ(read_csv_rows(path, 3, 1).size(), 1u);
}

TEST_F(CheckpointTest, SharedConfigChecksNameTheCommandAndTheKey) {
  train::SftConfig sft;
  sft.model = sft.data = "x";
  sft.beta2 = 1;
  EXPECT_NE(error_of([&] { validate_sft_config(sft); }).find("sft config: 'beta2' must be in [0, 1), got 1"),
            std::string::npos);
  sft.beta2 = 0.999;
  sft.lr = 1e-4;
  sft.min_lr = 1e-3;
  EXPECT_NE(error_of([&] { validate_sft_config(sft); }).find("sft config: 'min_lr' (0.001) must not exceed 'lr' (0.0001)"),
            std::string::npos);
  train::RewardConfig reward;
  reward.model = reward.data = "x";
  reward.lr = 0;
  EXPECT_NE(error_of([&] { validate_reward_config(reward); }).find("reward config: 'lr' must be positive, got 0"),
            std::string::npos);
  train::PpoConfig ppo;
  ppo.model = "x";
  ppo.threads = -1;
  EXPECT_NE(error_of([&] { validate_ppo_config(ppo); }).find("ppo config: 'threads' must not be negative, got -1"),
            std::string::npos);
  ppo.threads = 0;
  ppo.lora_alpha = 0;
  EXPECT_NE(error_of([&] { validate_ppo_config(ppo); }).find("ppo config: 'lora_alpha' must be positive, got 0"),
            std::string::npos);
}

}  // namespace
