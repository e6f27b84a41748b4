// `kotoba generate --show-probs` and `--compare-temperatures` end to end, against transformers:
// the probabilities printed at each greedy step equal softmax of transformers' logits (after its
// RepetitionPenaltyLogitsProcessor when a penalty is in use) for the same prefix; the temperature
// comparison equals softmax(logits / T); the PNG is a well-formed 800x500 image; bad values
// fail naming their flag. Plus the scores observer of infer::GenerationOptions and the bar plot.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/error.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "io/png.h"
#include "test_util.h"
#include "train/plot.h"

namespace fs = std::filesystem;
using namespace kotoba;
using nlohmann::json;
namespace kt = kotoba::testing;

namespace {

fs::path model_dir() {
  fs::path p = kt::reference_dir() / "generate_hf" / "gpt2";
  if (!fs::exists(p)) throw std::runtime_error(kt::reference_missing(p));
  return p;
}

fs::path scratch() {
  fs::path d = fs::temp_directory_path() / ("kotoba_viz_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

using kotoba::testing::slurp;

std::string quote(const std::string& s) {  // for sh: single quotes, ' as '\''
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CmdRun {
  int code = -1;
  std::string out, err;
};

CmdRun sh(const std::string& cmd) {
  const fs::path out = scratch() / "stdout", err = scratch() / "stderr";
  const int status = std::system((cmd + " >" + quote(out.string()) + " 2>" + quote(err.string()) + " </dev/null").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

#ifdef KOTOBA_CLI_PATH
CmdRun kotoba(const std::string& args) {
  return sh(std::string("OMP_WAIT_POLICY=passive ") + quote(KOTOBA_CLI_PATH) + " generate " +
            quote(model_dir().string()) + " " + args);
}

json reference(const std::vector<std::string>& args) {
  std::string cmd = quote(KOTOBA_PYTHON) + " " + quote(std::string(KOTOBA_SOURCE_DIR) + "/tests/generate_viz_reference.py");
  for (const auto& a : args) cmd += " " + quote(a);
  CmdRun r = sh(cmd);
  if (r.code != 0) throw std::runtime_error("generate_viz_reference.py failed: " + r.err);
  return json::parse(r.out);
}

json last_json_line(const std::string& out) {
  const size_t end = out.find_last_not_of('\n');
  const size_t begin = out.rfind('\n', end);
  return json::parse(out.substr(begin == std::string::npos ? 0 : begin + 1, end + 1 - (begin == std::string::npos ? 0 : begin + 1)));
}

// The steps printed by --show-probs --json for greedy decoding, against transformers' softmax of
// its own logits for the same prefixes (the ids kotoba chose), after the repetition penalty.
void check_show_probs(const std::string& prompt, double penalty) {
  const int64_t K = 6;
  CmdRun r = kotoba("--prompt " + quote(prompt) + " --greedy --max-new-tokens 6 --show-probs " + std::to_string(K) +
                 " --repetition-penalty " + std::to_string(penalty) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json out = last_json_line(r.out);
  const auto ids = out["ids"].get<std::vector<int32_t>>();
  ASSERT_FALSE(ids.empty());
  ASSERT_EQ(out["steps"].size(), ids.size());
  const json ref = reference({"show", model_dir().string(), prompt, std::to_string(penalty), json(ids).dump()});
  ASSERT_EQ(ref["probs"].size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const json& step = out["steps"][i];
    const auto want = ref["probs"][i].get<std::vector<double>>();
    EXPECT_EQ(step["chosen"].get<int32_t>(), ids[i]);
    EXPECT_NEAR(step["chosen_prob"].get<double>(), want[size_t(ids[i])], 1e-5) << "step " << i;
    ASSERT_EQ(step["top"].size(), size_t(K));
    // Greedy: the chosen token is the first candidate; the candidates are transformers' K most
    // probable (up to near-ties) with its probabilities, in decreasing order.
    EXPECT_EQ(step["top"][0]["id"].get<int32_t>(), ids[i]) << "step " << i;
    std::vector<double> sorted = want;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    double previous = 1.0;
    for (size_t k = 0; k < size_t(K); ++k) {
      const int32_t id = step["top"][k]["id"].get<int32_t>();
      const double p = step["top"][k]["prob"].get<double>();
      EXPECT_NEAR(p, want[size_t(id)], 1e-5) << "step " << i << " candidate " << k;
      EXPECT_NEAR(p, sorted[k], 1e-5) << "step " << i << ": candidate " << k << " is not the " << k + 1
                                      << "-th most probable";
      EXPECT_LE(p, previous);
      previous = p;
      EXPECT_TRUE(step["top"][k]["text"].is_string());
    }
  }
}

TEST(GenerateHFViz, ShowProbsEqualTransformersSoftmax) { check_show_probs("the cat sat", 1.0); }

TEST(GenerateHFViz, ShowProbsFollowTheRepetitionPenalty) { check_show_probs("the dog ran on the mat", 1.7); }

TEST(GenerateHFViz, ShowProbsTextMarksTheChosenToken) {
  CmdRun r = kotoba("--prompt 'the cat' --greedy --max-new-tokens 3 --show-probs");  // K defaults to 5
  ASSERT_EQ(r.code, 0) << r.err;
  size_t steps = 0, marked = 0, rows = 0;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    steps += line.rfind("step ", 0) == 0;
    marked += line.rfind("  * ", 0) == 0;
    rows += line.rfind("  * ", 0) == 0 || line.rfind("    ", 0) == 0;
    if (line.rfind("step ", 0) == 0) {
      EXPECT_NE(line.find("chose \""), std::string::npos) << line;  // quoted, escaped text
    }
  }
  EXPECT_EQ(steps, 3u) << r.out;
  EXPECT_EQ(marked, 3u) << r.out;
  EXPECT_EQ(rows, 15u) << r.out;
}

TEST(GenerateHFViz, CompareTemperaturesEqualsTorchSoftmax) {
  const fs::path png = scratch() / "temps.png";
  fs::remove(png);
  const std::string prompt = "the cat sat on";
  CmdRun r = kotoba("--prompt " + quote(prompt) + " --compare-temperatures 0.5,1,2 --top-tokens 7 --png " +
                 quote(png.string()) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json out = last_json_line(r.out);
  const std::vector<double> temps = {0.5, 1, 2};
  EXPECT_EQ(out["temperatures"].get<std::vector<double>>(), temps);
  const json ref = reference({"temps", model_dir().string(), prompt, json(temps).dump()});
  ASSERT_EQ(out["tokens"].size(), 7u);
  std::vector<double> sorted = ref["probs"][1].get<std::vector<double>>();
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  for (size_t k = 0; k < 7; ++k) {
    const json& t = out["tokens"][k];
    const int32_t id = t["id"].get<int32_t>();
    ASSERT_EQ(t["probs"].size(), 3u);
    for (size_t j = 0; j < 3; ++j)
      EXPECT_NEAR(t["probs"][j].get<double>(), ref["probs"][j][size_t(id)].get<double>(), 1e-5)
          << "token " << id << " at T=" << temps[j];
    EXPECT_NEAR(t["probs"][1].get<double>(), sorted[k], 1e-5) << "token " << k << " out of order";
  }
  // A valid PNG of the stated size: signature, IHDR 800x500 8-bit RGB, every chunk's CRC right,
  // IEND last.
  const std::string bytes = slurp(png);
  ASSERT_GT(bytes.size(), 33u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  auto be32 = [&](size_t at) {
    return uint32_t(uint8_t(bytes[at])) << 24 | uint32_t(uint8_t(bytes[at + 1])) << 16 |
           uint32_t(uint8_t(bytes[at + 2])) << 8 | uint32_t(uint8_t(bytes[at + 3]));
  };
  EXPECT_EQ(bytes.substr(12, 4), "IHDR");
  EXPECT_EQ(be32(16), 800u);
  EXPECT_EQ(be32(20), 500u);
  EXPECT_EQ(uint8_t(bytes[24]), 8);  // bit depth
  EXPECT_EQ(uint8_t(bytes[25]), 2);  // RGB
  size_t at = 8;
  std::string last;
  while (at + 12 <= bytes.size()) {
    const uint32_t length = be32(at);
    ASSERT_LE(at + 12 + length, bytes.size());
    std::span<const uint8_t> typed(reinterpret_cast<const uint8_t*>(bytes.data()) + at + 4, length + 4);
    EXPECT_EQ(crc32(typed), be32(at + 8 + length)) << "chunk " << bytes.substr(at + 4, 4);
    last = bytes.substr(at + 4, 4);
    at += 12 + length;
  }
  EXPECT_EQ(at, bytes.size());
  EXPECT_EQ(last, "IEND");

  // The terminal form: for each token, one bar line per temperature.
  CmdRun text = kotoba("--prompt " + quote(prompt) + " --compare-temperatures 0.5,1,2 --top-tokens 4");
  ASSERT_EQ(text.code, 0) << text.err;
  size_t bars = 0;
  std::istringstream lines(text.out);
  for (std::string line; std::getline(lines, line);) bars += line.rfind("  T=", 0) == 0;
  EXPECT_EQ(bars, 12u) << text.out;
  EXPECT_NE(text.out.find("  T=0.5 #"), std::string::npos) << text.out;
}

TEST(GenerateHFViz, BadValuesNameTheirFlag) {
  const fs::path png = scratch() / "never.png";
  struct Case {
    std::string args, flag;
  } cases[] = {
      {"--prompt a --compare-temperatures 0,1", "--compare-temperatures"},
      {"--prompt a --compare-temperatures 1,abc", "--compare-temperatures"},
      {"--prompt a --compare-temperatures 1,,2", "--compare-temperatures"},
      {"--prompt a --compare-temperatures -1", "--compare-temperatures"},
      {"--prompt a --compare-temperatures inf", "--compare-temperatures"},
      {"--prompt a --prompt b --compare-temperatures 1", "--compare-temperatures"},
      {"--prompt a --compare-temperatures 1 --top-tokens 0", "--top-tokens"},
      {"--prompt a --compare-temperatures 1 --top-tokens 101", "--top-tokens"},
      {"--prompt a --png " + quote(png.string()), "--png"},
      {"--prompt a --top-tokens 3", "--top-tokens"},
      {"--prompt a --show-probs 0", "--show-probs"},
      {"--prompt a --show-probs 3 --num-beams 2", "--show-probs"},
      {"--prompt a --show-probs 3 --compare-temperatures 1", "--compare-temperatures"},
  };
  for (const Case& c : cases) {
    CmdRun r = kotoba(c.args);
    EXPECT_NE(r.code, 0) << c.args << " succeeded: " << r.out;
    EXPECT_NE(r.err.find(c.flag), std::string::npos) << c.args << ": stderr lacks " << c.flag << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(png));
}
#endif

// The observer sees each step's scores after the warpers (so sampling draws from them), is
// called once per generated token, and is refused with beam search.
TEST(GenerateHFViz, ObserverSeesProcessedScores) {
  LoadedModel loaded = load_model_dir(model_dir().string());
  const std::vector<int32_t> prompt = {5, 17, 42};
  infer::GenerationOptions o;
  o.max_new_tokens = 8;
  o.do_sample = true;
  o.top_k = 4;
  o.temperature = 0.7f;
  o.seed = 3;
  std::vector<int32_t> seen;
  o.observe_scores = [&](size_t p, size_t s, std::span<const float> scores, int32_t chosen) {
    EXPECT_EQ(p, 0u);
    EXPECT_EQ(s, 0u);
    size_t finite = 0;
    for (float x : scores) finite += std::isfinite(x);
    EXPECT_GE(finite, 4u);  // top-k keeps 4 (more only on exact ties)
    EXPECT_LE(finite, 5u);
    EXPECT_TRUE(std::isfinite(scores[size_t(chosen)]));
    seen.push_back(chosen);
  };
  infer::GenerationResult r = infer::generate(*loaded.model, prompt, o);
  EXPECT_EQ(seen, r.ids);

  o.do_sample = false;
  o.top_k = 0;
  seen.clear();
  o.observe_scores = [&](size_t, size_t, std::span<const float> scores, int32_t chosen) {
    EXPECT_EQ(chosen, infer::argmax(scores));
    seen.push_back(chosen);
  };
  r = infer::generate(*loaded.model, prompt, o);
  EXPECT_EQ(seen, r.ids);

  o.num_beams = 2;
  EXPECT_THROW(infer::generate(*loaded.model, prompt, o), Error);
}

TEST(BarPlot, RejectsBadSeriesAndWritesNothing) {
  const fs::path png = scratch() / "bars.png";
  fs::remove(png);
  EXPECT_THROW(train::write_bar_plot(png.string(), {"a", "b"}, {{"x", {1.0}}}, "t", "x", "y"), Error);
  EXPECT_THROW(train::write_bar_plot(png.string(), {"a"}, {{"x", {-1.0}}}, "t", "x", "y"), Error);
  EXPECT_THROW(train::write_bar_plot(png.string(), {"a"}, {{"x", {NAN}}}, "t", "x", "y"), Error);
  EXPECT_THROW(train::write_bar_plot(png.string(), {}, {}, "t", "x", "y"), Error);
  EXPECT_FALSE(fs::exists(png));
  train::write_bar_plot(png.string(), {"a", "long label that will not fit"}, {{"one", {0.25, 0.5}}, {"two", {0, 1}}},
                        "title", "x", "y", 320, 200);
  const std::string bytes = slurp(png);
  ASSERT_GT(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(12, 4), "IHDR");
  EXPECT_EQ(uint8_t(bytes[19]), 64);   // 320 = 0x140
  EXPECT_EQ(uint8_t(bytes[23]), 200);  // 200 = 0xC8
}

}  // namespace
