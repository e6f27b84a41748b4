// QLoRA: LoRA adapters trained on a base held as NF4 (kotoba sft --quantize nf4) reach the
// validation loss of the same adapters trained on the f32 base (within 2 %), with the base's
// weights in a fraction of the memory; the saved adapter is an ordinary PEFT adapter.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/model_dir.h"
#include "io/peft.h"
#include "io/quantized_model.h"
#include "nn/llama.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/sft.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

// Alpaca records "Name a colour." (or an animal, a fruit, a number) answered with one of eight
// words drawn at random: a task with an entropy floor (ln 8 per answer), which both runs reach, so
// their validation losses compare the adapters' fit rather than how far each got.
void write_task(const fs::path& path, const fs::path& corpus_path, uint64_t seed, int n) {
  const char* instructions[] = {"Name a colour.", "Name an animal.", "Name a fruit.", "Name a number."};
  const char* words[4][8] = {{"red", "green", "blue", "yellow", "black", "white", "pink", "brown"},
                             {"cat", "dog", "horse", "mouse", "bird", "fish", "sheep", "goat"},
                             {"apple", "pear", "plum", "grape", "lemon", "melon", "peach", "cherry"},
                             {"one", "two", "three", "four", "five", "six", "seven", "eight"}};
  std::ofstream out(path), corpus(corpus_path);
  for (int i = 0; i < n; ++i) {
    const size_t kind = mix64(seed ^ uint64_t(i)) % 4, pick = mix64(seed + 7919 * uint64_t(i)) % 8;
    out << json{{"instruction", instructions[kind]}, {"input", ""}, {"output", words[kind][pick]}}.dump() << "\n";
    corpus << instructions[kind] << "\n" << words[kind][pick] << "\n";
  }
}

TEST(QLoRA, Nf4BaseReachesTheF32BasesValidationLoss) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = fs::temp_directory_path() / ("kotoba_qlora_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  write_task(root / "train.jsonl", root / "corpus.txt", seed, 800);
  tokenizer::TrainOptions to;
  to.vocab_size = 300;
  to.show_progress = false;
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::train({(root / "corpus.txt").string()}, to);
  tok.save((root / "tokenizer.json").string());
  nn::LlamaConfig mc;
  mc.vocab_size = tok.vocab_size();
  mc.hidden_size = 64;
  mc.intermediate_size = 128;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = mc.num_key_value_heads = 4;
  mc.max_position_embeddings = 128;
  mc.tie_word_embeddings = true;
  mc.initializer_range = 0.1f;  // a random base with weights of a trained one's scale (see SftTask)
  mc.seed = seed;
  nn::Llama base(mc);
  GenerationConfig generation;
  generation.eos_token_id = generation.bos_token_id = *tok.token_to_id("<|endoftext|>");
  save_model_dir((root / "base").string(), base, (root / "tokenizer.json").string(), generation);
  const size_t f32_bytes = model_weight_bytes(base);

  auto run = [&](const std::string& quantize) {
    train::SftConfig c;
    c.model = (root / "base").string();
    c.data = (root / "train.jsonl").string();
    c.chat_template = "plain";
    c.out = (root / ("run-" + (quantize.empty() ? std::string("f32") : quantize))).string();
    c.max_length = 48;
    c.batch = 16;
    c.steps = 400;
    c.lr = 5e-3;
    c.warmup = 10;
    c.checkpoint_every = 0;
    c.val_fraction = 0.1;
    c.lora_r = 16;
    c.lora_alpha = 32;
    c.lora_dropout = 0.0;
    c.lora_targets = "all-linear";
    c.quantize = quantize;
    train::SftTrainer trainer(c, {.progress = false});
    const double before = trainer.validation_loss();
    train::SftResult r = trainer.run();
    const size_t bytes = model_weight_bytes(trainer.model());
    std::printf("%s base: validation loss %.4f -> %.4f; weights %.1f kB (f32 base %.1f kB)\n",
                quantize.empty() ? "f32" : quantize.c_str(), before, r.val_loss, bytes / 1e3, f32_bytes / 1e3);
    EXPECT_LT(r.val_loss, 0.8 * before) << "the adapters should learn the task";
    EXPECT_TRUE(fs::exists(r.adapter_dir + "/adapter_model.safetensors"));
    return std::pair{r.val_loss, bytes};
  };
  const auto [lora_loss, lora_bytes] = run("");
  const auto [qlora_loss, qlora_bytes] = run("nf4");
  EXPECT_LE(qlora_loss, 1.02 * lora_loss) << "QLoRA " << qlora_loss << " vs LoRA " << lora_loss;
  EXPECT_LT(qlora_bytes, lora_bytes);

  // Errors: QLoRA needs LoRA, and cannot merge into the quantised base.
  train::SftConfig bad;
  bad.model = (root / "base").string();
  bad.data = (root / "train.jsonl").string();
  bad.quantize = "nf4";
  EXPECT_THROW(train::validate_sft_config(bad), Error);
  bad.lora_r = 8;
  bad.merge = 1;
  EXPECT_THROW(train::validate_sft_config(bad), Error);
  bad.merge = 0;
  bad.quantize = "nf5";
  EXPECT_THROW(train::validate_sft_config(bad), Error);
  fs::remove_all(root);
}

}  // namespace
