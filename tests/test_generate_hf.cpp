// Decoding against transformers' generate() (tests/reference/generate_hf_reference.py): on
// random-initialised GPT-2 and LLaMA (GQA) models saved by transformers, greedy decoding and beam
// search give the same tokens, token for token, and beam search the same sequence scores (within
// 5e-4 + 1e-4 relative: float32 sums of log-probabilities); a batch of prompts gives what each
// prompt gives alone; transformers' logits processors and warpers leave the same scores (-inf at
// the same places, finite ones within 1e-6 relative) and the same softmax probabilities (within
// 1e-6 absolute); `kotoba generate` exposes it all.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "infer/generate.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace kotoba;
using nlohmann::json;
namespace kt = kotoba::testing;

namespace {

fs::path fixture(const std::string& name) {
  fs::path p = kt::reference_dir() / "generate_hf" / name;
  if (!fs::exists(p)) throw std::runtime_error(kt::reference_missing(p));
  return p;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

// The saved models, loaded once per process.
nn::CausalLM& model_named(const std::string& name) {
  static std::map<std::string, LoadedModel> models;
  auto it = models.find(name);
  if (it == models.end()) it = models.emplace(name, load_model_dir(fixture(name).string())).first;
  return *it->second.model;
}

infer::GenerationOptions options_of(const json& c) {
  const json& o = c["options"];
  infer::GenerationOptions g;
  g.max_new_tokens = o.value("max_new_tokens", int64_t(0));
  g.max_length = o.value("max_length", int64_t(0));
  g.repetition_penalty = o.value("repetition_penalty", 1.0f);
  g.no_repeat_ngram_size = o.value("no_repeat_ngram_size", int64_t(0));
  g.num_beams = o.value("num_beams", int64_t(1));
  g.length_penalty = o.value("length_penalty", 1.0);
  if (o.contains("early_stopping")) g.early_stopping = infer::parse_early_stopping(o["early_stopping"]);
  g.num_return_sequences = o.value("num_return_sequences", int64_t(1));
  g.eos_token_ids = c["eos_token_ids"].get<std::vector<int32_t>>();
  return g;
}

std::string describe(const json& c) { return c["model"].get<std::string>() + " " + c["options"].dump(); }

// kotoba's sequences against transformers'. transformers ends an EOS-finished beam hypothesis with
// eos_token_id[0] whichever EOS id ended it; kotoba keeps the id that did.
void expect_same_sequences(const infer::GenerationResult& got, const json& c, const std::string& seed) {
  const auto want = c["sequences"].get<std::vector<std::vector<int32_t>>>();
  const auto eos = c["eos_token_ids"].get<std::vector<int32_t>>();
  const bool beams = c["options"].value("num_beams", 1) > 1;
  ASSERT_EQ(got.sequences.size(), want.size()) << describe(c);
  for (size_t i = 0; i < want.size(); ++i) {
    std::vector<int32_t> ids = got.sequences[i].ids;
    if (beams && got.sequences[i].finish_reason == infer::FinishReason::eos) {
      ASSERT_FALSE(ids.empty());
      EXPECT_NE(std::find(eos.begin(), eos.end(), ids.back()), eos.end());
      ids.back() = eos.at(0);
    }
    EXPECT_EQ(ids, want[i]) << "sequence " << i << " of " << describe(c) << ", prompt " << c["prompt"].dump()
                            << ", reference seed " << seed;
  }
  const auto scores = c["scores"].get<std::vector<double>>();
  for (size_t i = 0; i < scores.size() && i < got.sequences.size(); ++i)
    EXPECT_NEAR(got.sequences[i].score, scores[i], 5e-4 + 1e-4 * std::abs(scores[i]))
        << "score of sequence " << i << " of " << describe(c);
}

TEST(GenerateHF, GreedyAndBeamSearchMatchTransformersTokenForToken) {
  json ref = read_json(fixture("cases.json"));
  const std::string seed = std::to_string(ref["seed"].get<uint64_t>());
  int beam_cases = 0, eos_ended = 0, ended_early = 0;
  for (const json& c : ref["cases"]) {
    eos_ended += c["coverage"]["eos_hypotheses"].get<int>() > 0;
    ended_early += c["coverage"]["done_early"].get<int>() > 0;
    nn::CausalLM& model = model_named(c["model"]);
    auto prompt = c["prompt"].get<std::vector<int32_t>>();
    infer::GenerationOptions o = options_of(c);
    expect_same_sequences(infer::generate(model, prompt, o), c, seed);
    beam_cases += o.num_beams > 1;
    // The plain path: every row recomputed from scratch each step.
    o.use_kv_cache = false;
    expect_same_sequences(infer::generate(model, prompt, o), c, seed);
  }
  EXPECT_GE(beam_cases, 10);
  // The cases reach beam search's EOS and stopping rules (the reference prefers prompts that do).
  EXPECT_GE(eos_ended, 6) << "cases where an EOS ends a beam hypothesis";
  EXPECT_GE(ended_early, 2) << "cases where beam search ends before its length limit";
}

// All the reference prompts of a model as one batch (lengths 2-8), for each reference setting:
// every prompt's result equals its result alone, and for the setting the prompt was made with,
// transformers' tokens.
TEST(GenerateHF, BatchedPromptsMatchOneByOne) {
  json ref = read_json(fixture("cases.json"));
  const std::string seed = std::to_string(ref["seed"].get<uint64_t>());
  for (const std::string name : {"gpt2", "llama_gqa"}) {
    nn::CausalLM& model = model_named(name);
    std::vector<const json*> cases;
    std::vector<std::vector<int32_t>> prompts;
    for (const json& c : ref["cases"])
      if (c["model"] == name) {
        cases.push_back(&c);
        prompts.push_back(c["prompt"].get<std::vector<int32_t>>());
      }
    for (const json* setting : cases) {
      infer::GenerationOptions o = options_of(*setting);
      o.max_length = 0;  // max_length would be too short for the longer prompts
      if (o.max_new_tokens == 0) o.max_new_tokens = 10;
      std::vector<infer::GenerationResult> batch = infer::generate_batch(model, prompts, o);
      ASSERT_EQ(batch.size(), prompts.size());
      for (size_t p = 0; p < prompts.size(); ++p) {
        infer::GenerationResult alone = infer::generate(model, prompts[p], o);
        ASSERT_EQ(batch[p].sequences.size(), alone.sequences.size());
        for (size_t s = 0; s < alone.sequences.size(); ++s) {
          EXPECT_EQ(batch[p].sequences[s].ids, alone.sequences[s].ids)
              << "prompt " << p << " sequence " << s << " in a batch, " << describe(*setting);
          EXPECT_EQ(batch[p].sequences[s].finish_reason, alone.sequences[s].finish_reason);
          EXPECT_NEAR(batch[p].sequences[s].score, alone.sequences[s].score,
                      1e-5 + 1e-6 * std::abs(alone.sequences[s].score));
        }
        if (cases[p] == setting && !setting->at("options").contains("max_length"))
          expect_same_sequences(batch[p], *setting, seed);
      }
    }
  }
}

// Each row: transformers' processor(s) applied to random scores; kotoba's the same way.
TEST(GenerateHF, LogitsProcessorsMatchTransformers) {
  json ref = read_json(fixture("processors.json"));
  SafeTensors tensors = load_safetensors(fixture("processors.safetensors").string());
  const std::string seed = std::to_string(ref["seed"].get<uint64_t>());
  std::map<std::string, int> removed_some;
  int row = 0;
  for (const json& r : ref["rows"]) {
    const std::string key = std::to_string(row++), kind = r["kind"];
    const json& p = r["params"];
    std::vector<float> scores = tensors.tensors.at(key + ".scores").to_vector();
    const Tensor& ids_t = tensors.tensors.at(key + ".ids");
    std::vector<int32_t> ids(ids_t.data<int32_t>(), ids_t.data<int32_t>() + ids_t.numel());
    std::vector<float> want = tensors.tensors.at(key + ".out").to_vector();
    const Tensor& probs_t = tensors.tensors.at(key + ".probs");
    const double* want_probs = probs_t.data<double>();
    infer::GenerationOptions o{.do_sample = true};
    o.temperature = p.value("temperature", 1.0f);
    o.top_k = p.value("top_k", int64_t(0));
    o.top_p = p.value("top_p", 1.0f);
    o.min_p = p.value("min_p", 0.0f);
    o.repetition_penalty = p.value("repetition_penalty", 1.0f);
    o.no_repeat_ngram_size = p.value("no_repeat_ngram_size", int64_t(0));
    infer::LogitsProcessorList processors = infer::make_logits_processors(o);
    std::vector<float> got = scores;
    infer::apply_processors(processors, ids, got);
    ASSERT_EQ(got.size(), want.size());
    const std::string where = "row " + key + " (" + kind + " " + p.dump() + "), reference seed " + seed;
    double top = -INFINITY;
    for (float g : got) top = std::max(top, double(g));
    double total = 0;
    for (float g : got) total += std::exp(double(g) - top);
    bool removed = false;
    // A processor may remove every token (no_repeat_ngram_size 1 over a context that used the whole
    // vocabulary); the distribution is then undefined on both sides (NaN), and only the removals compare.
    const bool all_removed = std::all_of(want.begin(), want.end(), [](float w) { return std::isinf(w); });
    for (size_t v = 0; v < got.size(); ++v) {
      ASSERT_EQ(std::isinf(got[v]), std::isinf(want[v])) << "token " << v << " kept by one side only, " << where;
      removed = removed || std::isinf(want[v]);
      if (!std::isinf(want[v])) {
        ASSERT_NEAR(got[v], want[v], 1e-6 * std::max(1.0f, std::abs(want[v]))) << "token " << v << ", " << where;
      }
      if (all_removed) continue;
      ASSERT_NEAR(std::exp(double(got[v]) - top) / total, want_probs[v], 1e-6) << "probability of token " << v
                                                                             << ", " << where;
    }
    removed_some[kind] += removed;
  }
  EXPECT_GE(row, 200);
  // The comparison means something: each filter removed tokens in some rows.
  for (const char* kind : {"top_k", "top_p", "min_p", "no_repeat_ngram_size", "chain"})
    EXPECT_GT(removed_some[kind], 3) << kind;
}

#ifdef KOTOBA_CLI_PATH
using kotoba::testing::slurp;

struct CliRun {
  int code;
  std::string out, err;
};

CliRun kotoba_cli(const std::string& args) {
  fs::path dir = fs::temp_directory_path() / ("kotoba_generate_hf_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::path out = dir / "stdout", err = dir / "stderr";
  std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' " + args + " >'" + out.string() +
                    "' 2>'" + err.string() + "' </dev/null";
  int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

std::vector<json> json_lines(const std::string& text) {
  std::vector<json> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] == '{') lines.push_back(json::parse(line));
  return lines;
}

// `kotoba generate` with several prompts and beam search prints what the library computes for
// the tokenizer's encoding of the prompts; bad flags fail naming the flag.
TEST(GenerateHFCli, BatchedBeamSearchFlagsReachTheLibrary) {
  const std::string dir = fixture("gpt2").string();
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::load((fixture("gpt2") / "tokenizer.json").string());
  const std::vector<std::string> texts = {"The city was", "Kotoba tokenizer and the first game of the season"};
  CliRun run = kotoba_cli("generate '" + dir + "' --prompt '" + texts[0] + "' --prompt '" + texts[1] +
                          "' --num-beams 3 --num-return-sequences 2 --length-penalty 0.7 --early-stopping never "
                          "--no-repeat-ngram-size 2 --repetition-penalty 1.1 --max-new-tokens 7 --json");
  ASSERT_EQ(run.code, 0) << run.err;
  std::vector<json> lines = json_lines(run.out);
  ASSERT_EQ(lines.size(), 2u) << run.out;
  infer::GenerationOptions o{.max_new_tokens = 7,
                             .repetition_penalty = 1.1f,
                             .no_repeat_ngram_size = 2,
                             .num_beams = 3,
                             .length_penalty = 0.7,
                             .early_stopping = infer::EarlyStopping::never,
                             .num_return_sequences = 2};
  if (auto eos = tok.eos_id()) o.eos_token_ids = {*eos};
  std::vector<std::vector<int32_t>> prompts = {tok.encode(texts[0]), tok.encode(texts[1])};
  auto results = infer::generate_batch(model_named("gpt2"), prompts, o);
  for (size_t p = 0; p < 2; ++p) {
    ASSERT_EQ(lines[p]["sequences"].size(), 2u);
    for (size_t s = 0; s < 2; ++s) {
      EXPECT_EQ(lines[p]["sequences"][s]["ids"].get<std::vector<int32_t>>(), results[p].sequences[s].ids);
      EXPECT_NEAR(lines[p]["sequences"][s]["score"].get<double>(), results[p].sequences[s].score, 1e-9);
    }
  }

  // A stop string: one printable ASCII character of the greedy text, the first after its first
  // token (random models also emit stray bytes, and repeat themselves: no token twice keeps the
  // text varied); the sequence ends with the token that completes it and the text after it.
  infer::GenerationOptions greedy{.max_new_tokens = 12, .no_repeat_ngram_size = 1};
  if (auto eos = tok.eos_id()) greedy.eos_token_ids = {*eos};
  std::vector<int32_t> free = infer::generate(model_named("gpt2"), prompts[0], greedy).ids;
  ASSERT_FALSE(free.empty());
  const std::string text = tok.decode(free);
  size_t at = tok.decode(std::span<const int32_t>(free.data(), 1)).size();
  while (at < text.size() && !std::isgraph(static_cast<unsigned char>(text[at]))) ++at;
  if (at < text.size() && text[at] != '\'') {
    const std::string stop = text.substr(at, 1);
    greedy.stop_strings = {stop};
    greedy.detokenize = [&tok](std::span<const int32_t> ids) { return tok.decode(ids); };
    infer::GenerationResult want = infer::generate(model_named("gpt2"), prompts[0], greedy);
    ASSERT_EQ(want.finish_reason, infer::FinishReason::stop_string);
    CliRun stopped = kotoba_cli("generate '" + dir + "' --prompt '" + texts[0] +
                                "' --greedy --max-new-tokens 12 --no-repeat-ngram-size 1 --stop '" + stop + "' --json");
    ASSERT_EQ(stopped.code, 0) << stopped.err;
    json line = json_lines(stopped.out).at(0);
    EXPECT_EQ(line["finish_reason"], "stop_string");
    EXPECT_EQ(line["ids"].get<std::vector<int32_t>>(), want.ids);
    const std::string cut = line["text"];
    ASSERT_GE(cut.size(), stop.size());
    EXPECT_EQ(cut.substr(cut.size() - stop.size()), stop) << "the text ends with the stop string";
  } else {
    std::printf("note: no printable ASCII character after the first token of %s; the --stop check is skipped\n",
                text.c_str());
  }

  for (auto [flags, fragment] : std::vector<std::pair<std::string, std::string>>{
           {"--num-beams 0", "--num-beams"},
           {"--num-beams 2 --num-return-sequences 3", "--num-return-sequences"},
           {"--greedy --num-return-sequences 2", "--num-return-sequences"},
           {"--min-p 1.5", "--min-p"},
           {"--no-repeat-ngram-size -1", "--no-repeat-ngram-size"},
           {"--early-stopping maybe", "--early-stopping"},
           {"--max-length 10 --max-new-tokens 3", "--max-length"},
           {"--max-length 1", "--max-length"},
           {"--stop ''", "--stop"},
           {"--prompts-file /nonexistent/prompts.txt", "--prompts-file"}}) {
    CliRun bad = kotoba_cli("generate '" + dir + "' --prompt '" + texts[0] + "' " + flags);
    EXPECT_NE(bad.code, 0) << flags;
    EXPECT_NE(bad.err.find(fragment), std::string::npos) << flags << ": " << bad.err;
  }
}
#endif

}  // namespace
