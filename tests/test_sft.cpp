// Supervised fine-tuning: the masked loss and its gradients against transformers (padded and
// packed batches), a small model that learns to follow held-out instructions (full and LoRA),
// exact resume, and the errors a user meets.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/packing.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "io/peft.h"
#include "io/safetensors.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/sft.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace kt = kotoba::testing;
using namespace kotoba;
using nlohmann::json;

namespace {

fs::path scratch(const std::string& name) { return kotoba::testing::scratch_path("sft", name); }

using kotoba::testing::slurp;

// ---- against transformers ----

class SftLoss : public ::testing::TestWithParam<const char*> {};

TEST_P(SftLoss, PaddedAndPackedLossAndGradientsMatchTransformers) {
  const fs::path dir = kt::reference_dir() / "sft" / GetParam();
  ASSERT_TRUE(fs::exists(dir / "reference.safetensors")) << kt::reference_missing(dir / "reference.safetensors");
  SafeTensors ref = load_safetensors((dir / "reference.safetensors").string());
  const Tensor& ids_t = ref.tensors.at("ids");
  const Tensor& labels_t = ref.tensors.at("labels");
  const Tensor& lengths_t = ref.tensors.at("lengths");
  std::vector<data::PackingExample> examples;
  int64_t at = 0;
  for (int64_t e = 0; e < lengths_t.numel(); ++e) {
    const int64_t n = lengths_t.data<int32_t>()[e];
    examples.push_back({std::vector<int32_t>(ids_t.data<int32_t>() + at, ids_t.data<int32_t>() + at + n),
                        std::vector<int32_t>(labels_t.data<int32_t>() + at, labels_t.data<int32_t>() + at + n)});
    at += n;
  }
  const double want = ref.tensors.at("loss").to_vector()[0];

  LoadedModel loaded = load_model_dir(dir.string());
  nn::CausalLM& model = *loaded.model;
  model.train();
  auto check = [&](const char* layout, Tensor loss) {
    model.zero_grad();
    loss.backward();
    const double got = loss.to_vector()[0];
    EXPECT_NEAR(got, want, 1e-4 * std::abs(want)) << GetParam() << " " << layout;
    int checked = 0;
    for (auto& [name, p] : model.named_parameters()) {
      auto it = ref.tensors.find("grad." + name);
      ASSERT_NE(it, ref.tensors.end()) << "no reference gradient for " << name;
      kt::Comparison c = kt::compare_to_reference(p.grad(), it->second, {1e-4, 1e-4});
      EXPECT_TRUE(c.ok) << GetParam() << " " << layout << " " << name << ": " << c.describe();
      ++checked;
    }
    EXPECT_EQ(checked, int(model.named_parameters().size()));
  };

  std::vector<const data::PackingExample*> all;
  for (const auto& e : examples) all.push_back(&e);
  train::SftBatch padded = train::make_sft_batch(all, /*pad_id=*/3);
  check("padded", model.loss(padded.ids, padded.targets));

  // Packed into rows of 48 tokens: several examples share a row.
  data::PackedExamples packed = data::pack_examples(examples, 48, /*pad_id=*/5);
  ASSERT_LT(packed.rows.size(), examples.size()) << "the case should pack several examples into a row";
  check("packed", model.packed_loss(packed.batch));
}

INSTANTIATE_TEST_SUITE_P(Models, SftLoss, ::testing::Values("gpt2", "llama_gqa"),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

// ---- a task a test can score exactly ----

// Two instructions over strings of five letters: repeat them, or write them in capitals.
// Held-out prompts are strings never seen in training.
struct LetterTask {
  std::vector<data::SftExample> train, test;
  std::vector<std::string> expected;  // test answers
};

// 5 distinct letters of a-p, space-separated (one token each under the tests' tokenizer).
std::string letters_of(uint64_t seed, uint64_t index) {
  const int length = 5;
  std::string pool = "abcdefghijklmnop", s;
  for (int i = 0; i < length; ++i) {
    const size_t pick = size_t(mix64(seed + index * 131 + uint64_t(i)) % pool.size());
    if (i) s += ' ';
    s += pool[pick];
    pool.erase(pick, 1);
  }
  return s;
}

std::string answer_of(const std::string& instruction, const std::string& input) {
  std::string out = input;
  if (instruction.rfind("Write", 0) == 0)
    for (char& c : out)
      if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return out;
}

data::SftExample alpaca(const std::string& instruction, const std::string& input, const std::string& output) {
  data::SftExample e;
  e.messages.push_back({"user", instruction, input});
  e.messages.push_back({"assistant", output, ""});
  return e;
}

LetterTask make_letter_task(uint64_t seed, int n_train, int n_test) {
  LetterTask task;
  std::set<std::string> seen;
  const char* instructions[] = {"Repeat the letters.", "Write the letters in capitals."};
  uint64_t index = 0;
  while (int(task.train.size()) < n_train || int(task.test.size()) < n_test) {
    const std::string input = letters_of(seed, index++);
    const std::string instruction = instructions[mix64(seed ^ index) % 2];
    const std::string key = instruction + "|" + input;
    if (!seen.insert(key).second) continue;
    if (int(task.train.size()) < n_train) {
      task.train.push_back(alpaca(instruction, input, answer_of(instruction, input)));
    } else {
      task.test.push_back(alpaca(instruction, input, ""));
      task.expected.push_back(answer_of(instruction, input));
    }
  }
  return task;
}

void write_alpaca_jsonl(const fs::path& path, const std::vector<data::SftExample>& examples) {
  std::ofstream out(path);
  for (const auto& e : examples)
    out << json{{"instruction", e.messages[0].content}, {"input", e.messages[0].input},
                {"output", e.messages[1].content}}.dump()
        << "\n";
}

// A byte-level BPE trained on the task's text, and a random LLaMA-architecture model (RoPE) that has never seen it.
fs::path make_base_model(const fs::path& root, const LetterTask& task, uint64_t seed) {
  fs::create_directories(root);
  const fs::path corpus = root / "corpus.txt";
  {
    std::ofstream out(corpus);
    const chat::ChatTemplate plain(chat::TemplateStyle::plain, "", "<|endoftext|>");
    for (const auto& e : task.train)
      out << plain.render(data::template_messages(e.messages, chat::TemplateStyle::plain), false) << "\n";
  }
  tokenizer::TrainOptions options;
  options.vocab_size = 300;
  options.show_progress = false;
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::train({corpus.string()}, options);
  const fs::path tokenizer_json = root / "tokenizer.json";
  tok.save(tokenizer_json.string());
  nn::LlamaConfig mc;
  mc.vocab_size = tok.vocab_size();
  mc.hidden_size = 64;
  mc.intermediate_size = 128;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = mc.num_key_value_heads = 4;
  mc.max_position_embeddings = 192;
  mc.tie_word_embeddings = true;
  mc.seed = seed;
  nn::Llama model(mc);
  GenerationConfig generation;
  generation.eos_token_id = generation.bos_token_id = *tok.token_to_id("<|endoftext|>");
  const fs::path dir = root / "base";
  save_model_dir(dir.string(), model, tokenizer_json.string(), generation);
  return dir;
}

// The share of held-out prompts answered exactly (greedy decoding, the template's stop strings).
double exact_match(nn::CausalLM& model, const tokenizer::Tokenizer& tok, const chat::ChatTemplate& tmpl,
                   const LetterTask& task) {
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& e : task.test) {
    std::vector<chat::Message> user = data::template_messages({e.messages[0]}, tmpl.style());
    prompts.push_back(tok.encode(tmpl.render(user, /*add_generation_prompt=*/true), true));
  }
  infer::GenerationOptions o;
  o.max_new_tokens = 24;
  if (tok.eos_id()) o.eos_token_ids = {*tok.eos_id()};
  o.stop_strings = tmpl.stop_strings();
  o.detokenize = [&tok](std::span<const int32_t> ids) { return tok.decode(ids); };
  model.eval();
  std::vector<infer::GenerationResult> results = infer::generate_batch(model, prompts, o);
  int right = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const infer::GeneratedSequence& s = results[i].sequences[0];
    std::vector<int32_t> ids = s.ids;
    if (!ids.empty() && tok.eos_id() && ids.back() == *tok.eos_id()) ids.pop_back();
    std::string text = tok.decode(ids);
    if (s.text_end > 0) text = text.substr(0, s.text_end);
    for (const std::string& stop : o.stop_strings)
      if (text.size() >= stop.size() && text.compare(text.size() - stop.size(), stop.size(), stop) == 0)
        text.resize(text.size() - stop.size());
    right += chat::python_strip(text) == task.expected[i];
  }
  return double(right) / double(results.size());
}

struct TaskRun {
  double base_score = 0, tuned_score = 0;
  train::SftResult result;
};

TaskRun run_letter_task(const std::string& name, train::SftConfig config) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch(name);
  LetterTask task = make_letter_task(seed, 3000, 200);
  const fs::path base = make_base_model(root, task, seed);
  write_alpaca_jsonl(root / "train.jsonl", task.train);
  config.model = base.string();
  config.data = (root / "train.jsonl").string();
  config.chat_template = "plain";
  config.out = (root / "run").string();
  TaskRun run;
  {
    LoadedModel loaded = load_model_dir(base.string());
    tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(base.string());
    run.base_score = exact_match(*loaded.model, tok, chat::ChatTemplate(chat::TemplateStyle::plain, "", "<|endoftext|>"),
                                 task);
  }
  train::SftTrainer trainer(config, {.progress = false});
  run.result = trainer.run();
  run.tuned_score = exact_match(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task);
  std::printf("%s: exact match %.1f%% before, %.1f%% after %lld steps (val loss %.4f)\n", name.c_str(),
              100 * run.base_score, 100 * run.tuned_score, (long long)run.result.step, run.result.val_loss);
  return run;
}

TEST(SftTask, FullFineTuningFollowsHeldOutInstructions) {
  train::SftConfig c;
  c.max_length = 64;
  c.pack = 1;
  c.batch = 16;  // packed rows of 64 tokens: about 32 examples
  c.steps = 3000;
  c.lr = 2.5e-3;  // 5e-3 left seed 8957636331341643868 at 78.5% (letters copied out of place); 97% at 2.5e-3
  c.warmup = 50;
  c.min_lr = 1e-4;
  c.checkpoint_every = 0;
  c.val_fraction = 0.02;
  TaskRun run = run_letter_task("full", c);
  EXPECT_LE(run.base_score, 0.05);
  EXPECT_GE(run.tuned_score, 0.95);
  EXPECT_TRUE(fs::exists(run.result.model_dir + "/model.safetensors"));
  // The tuned directory names its template, so `kotoba chat` renders what it learnt.
  json tc = json::parse(slurp(run.result.model_dir + "/tokenizer_config.json"));
  EXPECT_EQ(tc["chat_template"].get<std::string>(), chat::template_jinja(chat::TemplateStyle::plain));
}

// LoRA teaches a base that has the skills a new way of being asked for them, as instruction tuning
// does on a pretrained model. Stage 1 makes that base: the random model is fully fine-tuned on
// other instructions for the same skills ("copy", "capitals") and writes its answers with a full
// stop ("a b c d e ."). Under the task's own instructions ("Repeat the letters.", "Write the
// letters in capitals.") it scores near 0 on held-out prompts; LoRA adapters alone (the base
// frozen) must bring it to 90%, and the PEFT adapter written at the end, put back on the base,
// must give the tuned model's logits.
// What did not work, measured: LoRA on a random base (its frozen N(0, 0.02^2) head and embeddings
// bound the logits; PEFT stalls the same way), and a base that learnt the skills as plain text in
// another layout ("copy: a b c d e = a b c d e", 100% asked that way): LoRA stalled at 0% exact
// match (val loss ~1.8). Likely cause: the base copies by attending at a fixed relative offset, and
// moving a RoPE offset is a rotation of most of the query/key space, beyond a rank-16 update of a
// 64-wide layer. Here the layout is the task's; the wording and the reply's ending are not.
TEST(SftTask, LoraFollowsHeldOutInstructions) {
  const auto started = std::chrono::steady_clock::now();
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("lora");
  LetterTask task = make_letter_task(seed, 1000, 200);
  const fs::path base = make_base_model(root, task, seed);
  write_alpaca_jsonl(root / "train.jsonl", task.train);

  // Stage 1: 20,000 examples of the base's instructions over letter strings the task never uses
  // (fewer, seen for many epochs, left the base at 82-95% on unseen strings for some seeds), for
  // 4,000 steps: after 2,500 the base of seed 10456390601538743768 knew only 78% asked its own way
  // and LoRA reached 72%; after 4,000 both were at 100% (and on seeds 11, 12).
  std::set<std::string> task_inputs;
  for (const auto& e : task.train) task_inputs.insert(e.messages[0].input);
  for (const auto& e : task.test) task_inputs.insert(e.messages[0].input);
  std::vector<data::SftExample> skills;
  for (uint64_t index = 0; skills.size() < 20000; ++index) {
    const std::string input = letters_of(seed ^ 0x5c111ull, index);
    if (task_inputs.count(input)) continue;
    const bool capitals = mix64(seed ^ 0xca95ull ^ index) % 2;
    skills.push_back(alpaca(capitals ? "capitals" : "copy", input,
                            answer_of(capitals ? "Write" : "Repeat", input) + " ."));
  }
  write_alpaca_jsonl(root / "skills.jsonl", skills);
  train::SftConfig c1;
  c1.model = base.string();
  c1.data = (root / "skills.jsonl").string();
  c1.chat_template = "plain";
  c1.out = (root / "base_run").string();
  c1.max_length = 64;
  c1.pack = 1;
  c1.batch = 16;
  c1.steps = 4000;
  c1.lr = 3e-3;
  c1.warmup = 50;
  c1.min_lr = 1e-4;
  c1.checkpoint_every = 0;
  c1.val_fraction = 0.01;
  c1.seed = int64_t(seed % 1000003);
  const train::SftResult stage1 = train::SftTrainer(c1, {.progress = false}).run();
  ASSERT_TRUE(stage1.finished);
  const std::string tuned_base = stage1.model_dir;

  const chat::ChatTemplate plain(chat::TemplateStyle::plain, "", "<|endoftext|>");
  double base_score = 0, base_own_form = 0;
  {
    LoadedModel loaded = load_model_dir(tuned_base);
    tokenizer::Tokenizer tok = tokenizer::Tokenizer::load_dir(tuned_base);
    base_score = exact_match(*loaded.model, tok, plain, task);
    // The same held-out strings asked the base's way: it has the skills.
    LetterTask own = task;
    for (size_t i = 0; i < own.test.size(); ++i) {
      const bool capitals = own.test[i].messages[0].content.rfind("Write", 0) == 0;
      own.test[i].messages[0].content = capitals ? "capitals" : "copy";
      own.expected[i] += " .";
    }
    base_own_form = exact_match(*loaded.model, tok, plain, own);
  }

  // Stage 2: LoRA on the task.
  train::SftConfig c;
  c.model = tuned_base;
  c.data = (root / "train.jsonl").string();
  c.chat_template = "plain";
  c.out = (root / "run").string();
  c.max_length = 64;
  c.pack = 1;
  c.batch = 16;
  c.steps = 500;
  c.lr = 5e-3;
  c.warmup = 20;
  c.min_lr = 1e-4;
  c.checkpoint_every = 0;
  c.val_fraction = 0.05;
  c.lora_r = 16;
  c.lora_alpha = 32;
  c.lora_dropout = 0.0;
  c.lora_targets = "all-linear";
  c.seed = int64_t(seed % 1000003);
  train::SftTrainer trainer(c, {.progress = false});
  const double before = trainer.validation_loss();
  const train::SftResult result = trainer.run();
  const double tuned_score = exact_match(trainer.model(), trainer.tokenizer(), trainer.chat_template(), task);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("LoRA: exact match %.1f%% (base) -> %.1f%% after %lld steps (val loss %.4f -> %.4f); the base: %lld "
              "full steps (val loss %.4f), %.1f%% asked its way; %s; %.0f s\n",
              100 * base_score, 100 * tuned_score, (long long)result.step, before, result.val_loss,
              (long long)stage1.step, stage1.val_loss, 100 * base_own_form,
              trainer.trainable_parameters_report().c_str(), seconds);
  EXPECT_LE(base_score, 0.05);
  EXPECT_GE(tuned_score, 0.90);
  ASSERT_TRUE(fs::exists(result.adapter_dir + "/adapter_model.safetensors"));

  LoadedModel reloaded = load_model_dir(tuned_base);
  load_peft_adapter(*reloaded.model, result.adapter_dir);
  Tensor ids = Tensor::from_vector_i32({5, 9, 2, 7, 11, 3}, {1, 6});
  NoGradGuard no_grad;
  trainer.model().eval();
  reloaded.model->eval();
  const std::vector<float> a = trainer.model().logits(ids).to_vector(), b = reloaded.model->logits(ids).to_vector();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5) << i;
}

// ---- resume, errors ----

// A small LoRA run with packing, stopped and resumed, ends with the same adapter as one run
// straight through.
// 12 steps of 4 x 2 packed rows on a letter task under `root` (a base model trained there first).
train::SftConfig short_run(const fs::path& root) {
  const uint64_t seed = kt::test_seed();
  LetterTask task = make_letter_task(seed, 200, 1);
  const fs::path base = make_base_model(root, task, seed);
  write_alpaca_jsonl(root / "train.jsonl", task.train);
  train::SftConfig c;
  c.model = base.string();
  c.data = (root / "train.jsonl").string();
  c.chat_template = "alpaca";
  c.max_length = 160;
  c.batch = 4;
  c.grad_accum = 2;
  c.steps = 12;
  c.pack = 1;
  return c;
}

TEST(SftTrainer, ResumedRunEqualsUninterruptedRun) {
  const fs::path root = scratch("resume");
  train::SftConfig c = short_run(root);
  c.lora_r = 4;
  c.lora_dropout = 0.1;
  c.checkpoint_every = 5;
  c.log_every = 1;
  c.out = (root / "straight").string();
  train::SftResult straight = train::SftTrainer(c, {.progress = false}).run();
  c.out = (root / "stopped").string();
  train::SftTrainer(c, {.progress = false}).run(/*stop_after_step=*/7);
  train::SftTrainer resumed(c, {.progress = false});
  resumed.resume();
  train::SftResult after = resumed.run();
  ASSERT_TRUE(straight.finished && after.finished);
  EXPECT_EQ(straight.train_loss, after.train_loss);
  SafeTensors a = load_safetensors(straight.adapter_dir + "/adapter_model.safetensors");
  SafeTensors b = load_safetensors(after.adapter_dir + "/adapter_model.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    EXPECT_EQ(t.to_vector(), b.tensors.at(name).to_vector()) << name;
  }
  // The loss curve of the resumed run is the straight run's.
  EXPECT_EQ(slurp(root / "straight" / "loss.csv").substr(0, 40), slurp(root / "stopped" / "loss.csv").substr(0, 40));
  EXPECT_TRUE(fs::exists(root / "stopped" / "loss.png"));
}

TEST(SftErrors, BadInputsAreNamed) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("errors");
  LetterTask task = make_letter_task(seed, 20, 1);
  const fs::path base = make_base_model(root, task, seed);
  {
    std::ofstream bad(root / "bad.jsonl");
    bad << R"({"instruction": "a", "output": "b"})" << "\n" << R"({"instruction": "a", "outp)" << "\n";
  }
  train::SftConfig c;
  c.model = base.string();
  c.data = (root / "bad.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.max_length = 64;
  try {
    train::SftTrainer trainer(c, {.progress = false});
    FAIL() << "a malformed JSONL line was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  write_alpaca_jsonl(root / "train.jsonl", task.train);
  c.data = (root / "train.jsonl").string();
  c.max_length = 100000;
  EXPECT_THROW(train::SftTrainer(c, {.progress = false}), Error);  // beyond the model's context
  c.max_length = 64;
  c.lora_targets = "c_attn";
  c.lora_r = 4;
  try {
    train::SftTrainer trainer(c, {.progress = false});
    FAIL() << "a LoRA target that names no layer of a LLaMA was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c_attn"), std::string::npos) << e.what();
  }
  c.lora_targets = "";
  c.device = "gpu";
  EXPECT_THROW(
      {
        try {
          train::validate_sft_config(c);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("'device': expected \"cpu\" or \"cuda\", got \"gpu\""),
                    std::string::npos)
              << e.what();
          throw;
        }
      },
      Error);
  c.device = "cuda";
  c.quantize = "nf4";
  c.lora_r = 4;
  EXPECT_NO_THROW(train::validate_sft_config(c)) << "QLoRA runs on a GPU too";
}

// On a GPU, LoRA and full fine-tuning reach the CPU's losses (f32 on both; other summation orders
// and Adam's normalised steps, hence 1 %), and a LoRA run checkpointed on the CPU resumes on the
// GPU. The adapter and model written from the GPU load back on the CPU.
// --precision bf16 (LoRA and full): close to the f32 run (3 %) but not identical, so the
// products did run in bf16; the saved adapter and model are f32.
TEST(SftTrainer, Bf16MixedPrecisionTracksTheF32Run) {
  const fs::path root = scratch("bf16");
  const train::SftConfig short_config = short_run(root);
  for (const int64_t lora_r : {4, 0}) {
    SCOPED_TRACE(lora_r ? "LoRA" : "full");
    train::SftConfig c = short_config;
    c.lora_r = lora_r;
    c.out = (root / ("f32_" + std::to_string(lora_r))).string();
    const train::SftResult f32 = train::SftTrainer(c, {.progress = false}).run();
    c.precision = "bf16";
    c.out = (root / ("bf16_" + std::to_string(lora_r))).string();
    const train::SftResult bf16 = train::SftTrainer(c, {.progress = false}).run();
    ASSERT_TRUE(f32.finished && bf16.finished);
    EXPECT_NEAR(bf16.train_loss, f32.train_loss, 0.03 * f32.train_loss);
    EXPECT_NEAR(bf16.val_loss, f32.val_loss, 0.03 * f32.val_loss);
    EXPECT_NE(bf16.train_loss, f32.train_loss) << "bit-identical to f32: nothing ran in bf16";
    const fs::path saved = lora_r ? fs::path(bf16.adapter_dir) / "adapter_model.safetensors"
                                  : fs::path(bf16.model_dir) / "model.safetensors";
    for (auto& [name, t] : load_safetensors(saved.string()).tensors) EXPECT_EQ(t.dtype(), DType::f32) << name;
  }
  train::SftConfig bad = short_config;
  bad.precision = "half";
  try {
    train::validate_sft_config(bad);
    ADD_FAILURE() << "precision \"half\" was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sft config: 'precision': expected \"f32\" or \"bf16\", got \"half\""),
              std::string::npos)
        << e.what();
  }
}

TEST(SftTrainer, CudaRunMatchesTheCpuRun) {
  KOTOBA_SKIP_WITHOUT_CUDA();
  const fs::path root = scratch("cuda");
  const train::SftConfig short_config = short_run(root);
  for (const int64_t lora_r : {4, 0}) {
    SCOPED_TRACE(lora_r ? "LoRA" : "full");
    train::SftConfig c = short_config;
    c.lora_r = lora_r;
    c.checkpoint_every = 5;
    c.out = (root / ("cpu" + std::to_string(lora_r))).string();
    const train::SftResult cpu = train::SftTrainer(c, {.progress = false}).run();
    c.device = "cuda";
    c.out = (root / ("gpu" + std::to_string(lora_r))).string();
    const train::SftResult gpu = train::SftTrainer(c, {.progress = false}).run();
    ASSERT_TRUE(cpu.finished && gpu.finished);
    EXPECT_NEAR(gpu.train_loss, cpu.train_loss, 0.01 * cpu.train_loss);
    EXPECT_NEAR(gpu.val_loss, cpu.val_loss, 0.01 * cpu.val_loss);
    if (lora_r == 0) {
      load_model_dir(gpu.model_dir);
      continue;
    }
    LoadedModel reloaded = load_model_dir(c.model);
    load_peft_adapter(*reloaded.model, gpu.adapter_dir);
    c.device = "cpu";
    c.out = (root / "mixed").string();
    train::SftTrainer(c, {.progress = false}).run(/*stop_after_step=*/7);
    c.device = "cuda";
    train::SftTrainer resumed(c, {.progress = false});
    resumed.resume();
    const train::SftResult mixed = resumed.run();
    EXPECT_NEAR(mixed.train_loss, cpu.train_loss, 0.01 * cpu.train_loss);
  }
  // QLoRA: an nf4 base, its codes on the GPU, LoRA adapters trained there.
  train::SftConfig c = short_config;
  c.lora_r = 4;
  c.quantize = "nf4";
  c.out = (root / "qlora_cpu").string();
  const train::SftResult cpu = train::SftTrainer(c, {.progress = false}).run();
  c.device = "cuda";
  c.out = (root / "qlora_gpu").string();
  const train::SftResult gpu = train::SftTrainer(c, {.progress = false}).run();
  ASSERT_TRUE(cpu.finished && gpu.finished);
  EXPECT_NEAR(gpu.train_loss, cpu.train_loss, 0.01 * cpu.train_loss);
  EXPECT_NEAR(gpu.val_loss, cpu.val_loss, 0.01 * cpu.val_loss);
}

// A learning rate that overflows the weights makes the loss non-finite at the second step: the run
// stops with a message naming the last good checkpoint (step 1), which stays, and writes no model.
TEST(SftErrors, NonFiniteLossStopsAndKeepsTheCheckpoint) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("nan");
  LetterTask task = make_letter_task(seed, 100, 1);
  const fs::path base = make_base_model(root, task, seed);
  write_alpaca_jsonl(root / "train.jsonl", task.train);
  train::SftConfig c;
  c.model = base.string();
  c.data = (root / "train.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.max_length = 64;
  c.batch = 8;
  c.steps = 20;
  c.checkpoint_every = 1;
  c.lr = 1e30;  // AdamW moves every weight by about lr: squares overflow f32
  c.clip = 0;
  try {
    train::SftTrainer(c, {.progress = false}).run();
    FAIL() << "a run whose loss became non-finite did not stop";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stopped"), std::string::npos) << what;
    EXPECT_NE(what.find("last good checkpoint (step 1)"), std::string::npos) << what;
  }
  EXPECT_TRUE(fs::exists(root / "run" / "checkpoint" / "trainer_state.json"));
  EXPECT_EQ(json::parse(slurp(root / "run" / "checkpoint" / "trainer_state.json"))["step"].get<int64_t>(), 1);
  EXPECT_FALSE(fs::exists(root / "run" / "model"));
}

// A learning rate that is large but not overflowing makes the second step's loss finite but far
// beyond a uniform guess (ln V): the run stops as diverged, keeping the step-1 checkpoint.
TEST(SftErrors, ExplodingLossStopsAndKeepsTheCheckpoint) {
  const uint64_t seed = kt::test_seed();
  const fs::path root = scratch("explode");
  LetterTask task = make_letter_task(seed, 100, 1);
  const fs::path base = make_base_model(root, task, seed);
  write_alpaca_jsonl(root / "train.jsonl", task.train);
  train::SftConfig c;
  c.model = base.string();
  c.data = (root / "train.jsonl").string();
  c.out = (root / "run").string();
  c.chat_template = "plain";
  c.max_length = 64;
  c.batch = 8;
  c.steps = 20;
  c.checkpoint_every = 1;
  c.lr = 100;  // AdamW's first step moves every weight by about 100: logits of ~1e5, still finite
  c.clip = 0;
  try {
    train::SftTrainer(c, {.progress = false}).run();
    FAIL() << "a run whose loss exploded did not stop";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("exploded"), std::string::npos) << what;
    EXPECT_NE(what.find("4 ln V"), std::string::npos) << what;
    EXPECT_NE(what.find("last good checkpoint (step 1)"), std::string::npos) << what;
  }
  EXPECT_EQ(json::parse(slurp(root / "run" / "checkpoint" / "trainer_state.json"))["step"].get<int64_t>(), 1);
  EXPECT_FALSE(fs::exists(root / "run" / "model"));
}

}  // namespace
