// The `kotoba` program end to end as a user runs it: a tokenizer, shards, a short pretraining
// run and its model directory, then every kind of bad input — each must exit non-zero with a
// message naming the file and field at fault, and leave no partial output behind.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "ops/backend.h"
#include "test_util.h"

namespace fs = std::filesystem;

#ifdef KOTOBA_CLI_PATH
namespace {

struct CliRun {
  int code = -1;
  std::string out, err;
};

using kotoba::testing::slurp;

// Why this machine has no CUDA backend, as the backend says it; "" when it has one.
using kotoba::testing::cuda_missing_reason;

class Cli : public ::testing::Test {
 protected:
  static fs::path dir;

  static CliRun kotoba(const std::string& args) {
    fs::path out = dir / "stdout", err = dir / "stderr";
    std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' " + args + " >'" +
                      out.string() + "' 2>'" + err.string() + "' </dev/null";
    int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  }
  static void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }
  static std::string path(const std::string& name) { return "'" + (dir / name).string() + "'"; }

  // One tokenizer, data set and model for the whole suite.
  static void SetUpTestSuite() {
    dir = fs::temp_directory_path() / ("kotoba_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::string corpus;
    const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"};
    for (int i = 0; i < 600; ++i) {
      corpus += words[(i * 7) % 12];
      corpus += (i % 9 == 8) ? ".\n%\n" : " ";
    }
    write(dir / "corpus.txt", corpus);
    write(dir / "turns.jsonl", "{\"role\": \"user\", \"content\": \"the cat\"}\n");
    ASSERT_EQ(kotoba("tokenizer train --input " + path("corpus.txt") + " --vocab-size 300 --out " +
                     path("tok.json")).code, 0);
    ASSERT_EQ(kotoba("prepare --tokenizer " + path("tok.json") + " --input " + path("corpus.txt") +
                     " --separator % --val-fraction 0.1 --out " + path("data")).code, 0);
    CliRun r = kotoba("pretrain --data " + path("data") + " --tokenizer " + path("tok.json") + " --out " + path("run") +
                   " --n-layer 1 --n-head 2 --n-embd 16 --seq 16 --batch 4 --steps 4 --warmup 1 --eval-every 0"
                   " --checkpoint-every 2 --eval-batches 1 --quiet --json");
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }

  static void expect_error(const CliRun& r, std::initializer_list<std::string> parts) {
    EXPECT_NE(r.code, 0) << "expected a failure; stdout: " << r.out;
    for (const auto& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "stderr lacks '" << p << "': " << r.err;
  }
};
fs::path Cli::dir;

TEST_F(Cli, JsonFlagMakesTheLastLineOneObject) {
  CliRun r = kotoba("tokenizer encode --tokenizer " + path("tok.json") + " --json 'the cat sat'");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(j["tokens"], j["ids"].size());
  r = kotoba("eval " + path("run/model") + " --data " + path("corpus.txt") + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_NEAR(std::exp(j["loss"].get<double>()), j["perplexity"].get<double>(), 1e-3 * j["perplexity"].get<double>());
}

TEST_F(Cli, DeviceFlagTakesCpuOrCuda) {
  const std::string generate = "generate " + path("run/model") + " --prompt 'the cat' --max-new-tokens 3 --greedy --json";
  CliRun on_cpu = kotoba(generate + " --device cpu"), plain = kotoba(generate);
  ASSERT_EQ(on_cpu.code, 0) << on_cpu.err;
  ASSERT_EQ(plain.code, 0) << plain.err;
  auto ids = [](std::string out) {  // of the JSON line, stdout's last
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return nlohmann::json::parse(out.substr(out.rfind('\n') + 1))["ids"];
  };
  EXPECT_EQ(ids(on_cpu.out), ids(plain.out)) << "the CPU is the default";
  const std::string eval = "eval " + path("run/model") + " --data " + path("corpus.txt");
  EXPECT_EQ(kotoba(eval + " --device cpu").code, 0);
  expect_error(kotoba(generate + " --device tpu"), {"generate", "'--device'", "\"cpu\" or \"cuda\"", "\"tpu\""});
  expect_error(kotoba(eval + " --device gpu"), {"eval", "'--device'", "\"cpu\" or \"cuda\"", "\"gpu\""});
}

TEST_F(Cli, DeviceCudaWithoutAGpuFailsSayingWhy) {
  const std::string why = cuda_missing_reason();
  if (why.empty()) GTEST_SKIP() << "a CUDA device is present (Cli.DeviceCudaRunsWhereAGpuIs runs it)";
  for (const std::string& command :
       {"generate " + path("run/model") + " --prompt 'the cat' --max-new-tokens 3 --greedy",
        "eval " + path("run/model") + " --data " + path("corpus.txt"),
        "chat " + path("run/model") + " --template plain --input " + path("turns.jsonl")}) {
    CliRun r = kotoba(command + " --device cuda");
    EXPECT_EQ(r.code, 1) << "an error, not a crash: " << r.err;
    // The command and flag, then the backend's own reason (e.g. cudaGetDeviceCount's error).
    expect_error(r, {command.substr(0, command.find(' ')) + ": --device cuda: ", why});
  }
}

TEST_F(Cli, DeviceCudaRunsWhereAGpuIs) {
  const std::string why = cuda_missing_reason();
  if (!why.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  const std::string eval = "eval " + path("run/model") + " --data " + path("corpus.txt") + " --json";
  CliRun cpu = kotoba(eval), gpu = kotoba(eval + " --device cuda");
  ASSERT_EQ(cpu.code, 0) << cpu.err;
  ASSERT_EQ(gpu.code, 0) << gpu.err;
  auto loss = [](const std::string& out) {
    return nlohmann::json::parse(out.substr(out.rfind('{')))["loss"].get<double>();
  };
  EXPECT_NEAR(loss(gpu.out), loss(cpu.out), 1e-4 * loss(cpu.out)) << "f32 on both: rounding only";
  // Greedy ids may part at a near tie, so only that it decodes is checked here (test_cuda_decode.cpp
  // compares the logits step by step).
  CliRun r = kotoba("generate " + path("run/model") + " --prompt 'the cat' --max-new-tokens 3 --greedy --json"
                    " --device cuda");
  ASSERT_EQ(r.code, 0) << r.err;
  while (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
  EXPECT_FALSE(nlohmann::json::parse(r.out.substr(r.out.rfind('\n') + 1))["ids"].empty());
  r = kotoba("chat " + path("run/model") + " --template plain --input " + path("turns.jsonl") +
             " --max-new-tokens 3 --greedy --json --device cuda");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(nlohmann::json::parse(r.out.substr(r.out.rfind('{'))).contains("reply"));
}

TEST_F(Cli, UnknownFlagAndUnknownCommand) {
  expect_error(kotoba("prepare --frobnicate 3"), {"prepare", "--frobnicate"});
  expect_error(kotoba("frobnicate"), {"unknown command", "frobnicate"});
}

TEST_F(Cli, EmptyCorpusNamesTheInputAndWritesNothing) {
  write(dir / "empty.txt", "  \n\n");
  expect_error(kotoba("prepare --tokenizer " + path("tok.json") + " --input " + path("empty.txt") + " --out " +
                      path("empty-data")),
               {"empty.txt"});
  EXPECT_FALSE(fs::exists(dir / "empty-data"));
}

TEST_F(Cli, NonUtf8NamesTheFileAndOffset) {
  write(dir / "latin1.txt", "caf\xe9 au lait\n");
  expect_error(kotoba("prepare --tokenizer " + path("tok.json") + " --input " + path("latin1.txt") + " --out " +
                      path("latin1-data")),
               {"latin1.txt", "UTF-8", "offset 3"});
  EXPECT_FALSE(fs::exists(dir / "latin1-data"));
  expect_error(kotoba("tokenizer train --input " + path("latin1.txt") + " --vocab-size 300 --out " + path("t2.json")),
               {"latin1.txt", "UTF-8"});
  EXPECT_FALSE(fs::exists(dir / "t2.json"));
}

TEST_F(Cli, ConfigWithMistypedOrUnknownKeyNamesFileAndKey) {
  write(dir / "bad-type.json", R"({"n_layer": "two"})");
  expect_error(kotoba("pretrain --data " + path("data") + " --tokenizer " + path("tok.json") + " --out " +
                      path("bad-run") + " --config " + path("bad-type.json")),
               {"bad-type.json", "n_layer"});
  write(dir / "bad-key.json", R"({"n_layerz": 2})");
  expect_error(kotoba("pretrain --data " + path("data") + " --tokenizer " + path("tok.json") + " --out " +
                      path("bad-run") + " --config " + path("bad-key.json")),
               {"bad-key.json", "n_layerz"});
  EXPECT_FALSE(fs::exists(dir / "bad-run" / "model"));
}

TEST_F(Cli, TruncatedCheckpointNamesTheFile) {
  fs::copy(dir / "run", dir / "run-trunc", fs::copy_options::recursive);
  fs::path weights = dir / "run-trunc" / "checkpoint" / "model.safetensors";
  ASSERT_TRUE(fs::exists(weights));
  fs::resize_file(weights, fs::file_size(weights) / 2);
  expect_error(kotoba("pretrain --data " + path("data") + " --tokenizer " + path("tok.json") + " --out " +
                      path("run-trunc") + " --resume --steps 6"),
               {"model.safetensors"});
}

TEST_F(Cli, TokenizerModelVocabularyMismatchNamesBothSizes) {
  ASSERT_EQ(kotoba("tokenizer train --input " + path("corpus.txt") + " --vocab-size 280 --out " + path("small.json")).code,
            0);
  // A tokenizer with more tokens than the model has embedding rows cannot be its tokenizer (fewer
  // is legal: HF models often pad their vocabulary). Here one added token has id 400.
  auto large = nlohmann::json::parse(slurp(dir / "tok.json"));
  large["added_tokens"].push_back({{"id", 400}, {"content", "<|extra|>"}, {"single_word", false}, {"lstrip", false},
                                   {"rstrip", false}, {"normalized", false}, {"special", true}});
  fs::copy(dir / "run" / "model", dir / "model-mismatch", fs::copy_options::recursive);
  write(dir / "model-mismatch" / "tokenizer.json", large.dump());
  CliRun r = kotoba("eval " + path("model-mismatch") + " --data " + path("corpus.txt"));
  expect_error(r, {"tokenizer.json", "vocab"});
  // Shards made with one tokenizer cannot train with another.
  expect_error(kotoba("pretrain --data " + path("data") + " --tokenizer " + path("small.json") + " --out " +
                      path("mismatch-run") + " --steps 2"),
               {"vocab"});
  EXPECT_FALSE(fs::exists(dir / "mismatch-run" / "model"));
}

}  // namespace
#endif
