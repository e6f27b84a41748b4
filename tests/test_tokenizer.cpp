// Byte-level BPE tests: parity with HF tokenizers (pre-tokens and ids from its own trained
// tokenizer.json; HF encoding kotoba's trained tokenizer.json), round trips, and error messages.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

using kotoba::tokenizer::Tokenizer;
using kotoba::tokenizer::TrainOptions;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path tokenizer_reference_dir() { return kotoba::testing::reference_dir() / "tokenizer"; }

json load_cases() {
  fs::path path = tokenizer_reference_dir() / "cases.json";
  if (!fs::exists(path))
    ADD_FAILURE() << "missing " << path
                  << ": it is written by the ctest fixture tests/reference/tokenizer_reference.py, which needs the "
                     "PyPI package `tokenizers` in the reference venv (scripts/test installs it; by hand: "
                     "~/.cache/kotoba-ref/bin/pip install tokenizers, then ~/.cache/kotoba-ref/bin/python "
                  << KOTOBA_SOURCE_DIR << "/tests/reference/tokenizer_reference.py " << KOTOBA_REFERENCE_DIR << ")";
  std::ifstream in(path);
  return json::parse(in);
}

std::string show_ids(const std::vector<int32_t>& ids, size_t around) {
  std::string s;
  size_t lo = around > 5 ? around - 5 : 0;
  for (size_t i = lo; i < ids.size() && i < around + 5; ++i) s += std::to_string(ids[i]) + " ";
  return s;
}

// Compares id lists and reports the first difference with the surrounding ids.
void expect_same_ids(const std::vector<int32_t>& got, const std::vector<int32_t>& want, const std::string& what) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  EXPECT_TRUE(i == got.size() && i == want.size())
      << what << ": ids differ at position " << i << " (kotoba " << got.size() << " ids, reference " << want.size()
      << ")\n  kotoba:    " << show_ids(got, i) << "\n  reference: " << show_ids(want, i);
}

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kotoba-test-" + name + "-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

void write_file(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

// Random text from all planes plus Japanese, emoji and whitespace runs.
std::string random_utf8(std::mt19937_64& rng, size_t chars) {
  auto utf8 = [](char32_t cp) {
    std::string s;
    if (cp < 0x80) s += char(cp);
    else if (cp < 0x800) s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
    else if (cp < 0x10000)
      s += char(0xE0 | (cp >> 12)), s += char(0x80 | ((cp >> 6) & 0x3F)), s += char(0x80 | (cp & 0x3F));
    else
      s += char(0xF0 | (cp >> 18)), s += char(0x80 | ((cp >> 12) & 0x3F)), s += char(0x80 | ((cp >> 6) & 0x3F)),
          s += char(0x80 | (cp & 0x3F));
    return s;
  };
  std::string out;
  for (size_t i = 0; i < chars; ++i) {
    char32_t cp;
    switch (rng() % 6) {
      case 0: cp = char32_t(0x20 + rng() % 95); break;
      case 1: cp = char32_t(0x3040 + rng() % 0x60); break;        // hiragana
      case 2: cp = char32_t(0x4E00 + rng() % 0x5000); break;      // CJK
      case 3: cp = char32_t(0x1F300 + rng() % 0x300); break;      // emoji
      case 4: cp = U" \n\t\u00a0"[rng() % 4]; break;
      default: cp = char32_t(rng() % 0x10FFFF); break;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
    out += utf8(cp);
  }
  return out;
}

std::string small_corpus() {
  std::string text;
  std::mt19937_64 rng(7);
  const char* words[] = {"the", "quick", "brown", "fox", "東京", "の", "天気", "🙂", "naïve", "42", "don't", "  ", "\n"};
  for (int i = 0; i < 20000; ++i) {
    text += words[rng() % 13];
    text += rng() % 4 ? " " : "\n";
  }
  return text;
}

}  // namespace

TEST(TokenizerReference, PreTokenizerMatchesHF) {
  json cases = load_cases();
  for (const auto& c : cases["cases"]) {
    std::string text = c["text"];
    std::vector<std::string> got;
    kotoba::tokenizer::pretokenize_gpt2(text, [&](std::string_view p) { got.emplace_back(p); });
    auto want = c["pieces"].get<std::vector<std::string>>();
    size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    EXPECT_TRUE(i == got.size() && i == want.size())
        << "pre-tokens differ at piece " << i << ": kotoba '" << (i < got.size() ? got[i] : "(end)") << "' vs HF '"
        << (i < want.size() ? want[i] : "(end)") << "' in text of " << text.size() << " bytes";
  }
}

TEST(TokenizerReference, EncodesLikeHFWithItsTokenizerJson) {
  json cases = load_cases();
  Tokenizer tok = Tokenizer::load((tokenizer_reference_dir() / "hf_tokenizer.json").string());
  EXPECT_EQ(tok.vocab_size(), 1200);
  EXPECT_EQ(tok.eos_id(), 0);
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> want;
  for (const auto& c : cases["cases"]) {
    texts.push_back(c["text"]);
    want.push_back(c["ids"].get<std::vector<int32_t>>());
    std::vector<int32_t> got = tok.encode(texts.back());
    expect_same_ids(got, want.back(), "case " + std::to_string(texts.size() - 1));
    EXPECT_EQ(tok.decode(got), texts.back());
  }
  std::vector<std::string_view> views(texts.begin(), texts.end());
  auto batch = tok.encode_batch(views, 2);
  for (size_t i = 0; i < texts.size(); ++i) expect_same_ids(batch[i], want[i], "batch case " + std::to_string(i));

  // Saved by kotoba and read back, the tokenizer encodes the same.
  fs::path copy = temp_dir("hf-copy") / "tokenizer.json";
  tok.save(copy.string());
  Tokenizer again = Tokenizer::load(copy.string());
  for (size_t i = 0; i < texts.size(); ++i) expect_same_ids(again.encode(texts[i]), want[i], "reloaded case " + std::to_string(i));
  fs::remove_all(copy.parent_path());
}

TEST(TokenizerReference, HFEncodesLikeKotobaWithKotobasTokenizerJson) {
  json cases = load_cases();
  fs::path dir = tokenizer_reference_dir();
  TrainOptions options{.vocab_size = 1200, .special_tokens = {"<|endoftext|>", "<|pad|>"}, .threads = 2,
                       .show_progress = false};
  Tokenizer tok = Tokenizer::train({(dir / "corpus.txt").string()}, options);
  EXPECT_EQ(tok.vocab_size(), 1200);
  fs::path saved = dir / "kotoba_tokenizer.json";
  tok.save(saved.string());
  json texts = json::array();
  for (const auto& c : cases["cases"]) texts.push_back(c["text"]);
  write_file(dir / "kotoba_texts.json", texts.dump());
  fs::path out = dir / "kotoba_hf_ids.json";
  fs::remove(out);
  std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR + "/tests/hf_tokenizer_encode.py\" \"" +
                    saved.string() + "\" \"" + (dir / "kotoba_texts.json").string() + "\" \"" + out.string() + "\"";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "failed: " << cmd;
  std::ifstream in(out);
  json hf = json::parse(in);
  ASSERT_EQ(hf.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    expect_same_ids(tok.encode(texts[i].get<std::string>()), hf[i]["ids"].get<std::vector<int32_t>>(),
                    "kotoba's tokenizer.json, case " + std::to_string(i));
    EXPECT_TRUE(hf[i]["decoded_equal"].get<bool>()) << "HF does not decode case " << i << " back to its text";
  }
}

TEST(Tokenizer, RoundTripsRandomUtf8) {
  fs::path dir = temp_dir("roundtrip");
  write_file(dir / "corpus.txt", small_corpus());
  Tokenizer tok = Tokenizer::train({(dir / "corpus.txt").string()},
                                   {.vocab_size = 300, .threads = 2, .show_progress = false});
  EXPECT_EQ(tok.vocab_size(), 300);
  std::mt19937_64 rng(kotoba::testing::test_seed());
  for (int trial = 0; trial < 50; ++trial) {
    std::string text = random_utf8(rng, size_t(rng() % 300));
    if (trial % 5 == 0) text += "<|endoftext|>" + random_utf8(rng, 20);
    auto ids = tok.encode(text);
    ASSERT_EQ(tok.decode(ids), text) << "trial " << trial;
  }
  std::string corpus = small_corpus();
  auto ids = tok.encode(corpus);
  EXPECT_EQ(tok.decode(ids), corpus);
  EXPECT_LT(ids.size(), corpus.size() / 2) << "the merges should compress their own training text";
  fs::remove_all(dir);
}

TEST(Tokenizer, TrainingIsDeterministicAcrossThreadCounts) {
  fs::path dir = temp_dir("determinism");
  write_file(dir / "a.txt", small_corpus());
  write_file(dir / "b.jsonl", "{\"text\": \"hello world, hello again\"}\n{\"text\": \"東京の天気\\n\"}\n");
  std::vector<std::string> files = {(dir / "a.txt").string(), (dir / "b.jsonl").string()};
  Tokenizer one = Tokenizer::train(files, {.vocab_size = 350, .threads = 1, .show_progress = false});
  Tokenizer two = Tokenizer::train(files, {.vocab_size = 350, .threads = 2, .show_progress = false});
  one.save((dir / "one.json").string());
  two.save((dir / "two.json").string());
  std::ifstream a(dir / "one.json"), b(dir / "two.json");
  std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa, sb);
  EXPECT_FALSE(fs::exists(dir / "one.json.tmp"));
  // The special token is never merged into words: it is one id wherever it appears.
  auto ids = one.encode("x<|endoftext|>y");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[1], *one.eos_id());
  EXPECT_EQ(one.id_to_token(*one.eos_id()), "<|endoftext|>");
  EXPECT_EQ(one.token_to_id("Ġthe").has_value(), true);
  fs::remove_all(dir);
}

TEST(Tokenizer, RejectsInvalidUtf8) {
  fs::path dir = temp_dir("utf8");
  write_file(dir / "ok.txt", small_corpus());
  Tokenizer tok = Tokenizer::train({(dir / "ok.txt").string()}, {.vocab_size = 300, .show_progress = false});
  for (std::string bad : {std::string("abc\xff"), std::string("abc\xc0\x80"), std::string("abc\xed\xa0\x80"),
                          std::string("abc\xe6\x97")}) {
    try {
      tok.encode(bad);
      ADD_FAILURE() << "no error for invalid UTF-8";
    } catch (const kotoba::Error& e) {
      EXPECT_NE(std::string(e.what()).find("offset 3"), std::string::npos) << e.what();
    }
  }
  write_file(dir / "bad.txt", "fine text\nthen \xfe here\n");
  try {
    Tokenizer::train({(dir / "bad.txt").string()}, {.vocab_size = 300, .show_progress = false});
    ADD_FAILURE() << "no error for a non-UTF-8 training file";
  } catch (const kotoba::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("bad.txt"), std::string::npos) << m;
    EXPECT_NE(m.find("offset 15"), std::string::npos) << m;
  }
  std::vector<int32_t> out_of_range = {0, tok.vocab_size()};
  EXPECT_THROW(tok.decode(out_of_range), kotoba::Error);
  fs::remove_all(dir);
}

TEST(Tokenizer, MalformedTokenizerJsonNamesTheField) {
  fs::path dir = temp_dir("malformed");
  write_file(dir / "ok.txt", small_corpus());
  Tokenizer tok = Tokenizer::train({(dir / "ok.txt").string()}, {.vocab_size = 300, .show_progress = false});
  tok.save((dir / "good.json").string());
  std::ifstream in(dir / "good.json");
  const json good = json::parse(in);
  struct Case {
    std::function<void(json&)> edit;
    std::string expected;
  };
  std::vector<Case> cases = {
      {[](json& j) { j.erase("model"); }, "field model: missing"},
      {[](json& j) { j["model"].erase("vocab"); }, "model.vocab"},
      {[](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type"},
      {[](json& j) { j["model"]["merges"][0] = "nospace"; }, "model.merges[0]"},
      {[](json& j) { j["model"]["merges"][1] = json::array({"Ġ", "not-a-token"}); }, "model.merges[1]"},
      {[](json& j) { j["model"]["vocab"]["Ġ"] = "seven"; }, "model.vocab[\"Ġ\"]"},
      {[](json& j) { j["added_tokens"][0].erase("content"); }, "added_tokens[0].content"},
      {[](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "pre_tokenizer.type"},
      {[](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }, "normalizer.type"},
      {[](json& j) { j["model"]["vocab"].erase("!"); }, "model"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    json j = good;
    cases[i].edit(j);
    fs::path path = dir / ("bad" + std::to_string(i) + ".json");
    write_file(path, j.dump());
    try {
      Tokenizer::load(path.string());
      ADD_FAILURE() << "case " << i << ": no error";
    } catch (const kotoba::Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find(path.string()), std::string::npos) << m;
      EXPECT_NE(m.find(cases[i].expected), std::string::npos) << "case " << i << ": " << m;
    }
  }
  write_file(dir / "truncated.json", "{\"model\": {");
  EXPECT_THROW(Tokenizer::load((dir / "truncated.json").string()), kotoba::Error);
  EXPECT_THROW(Tokenizer::load((dir / "missing.json").string()), kotoba::Error);
  // Merges in the pair form ([a, b], newer HF versions) load like the string form.
  json pairs = good;
  for (auto& m : pairs["model"]["merges"]) {
    std::string s = m;
    m = json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  write_file(dir / "pairs.json", pairs.dump());
  Tokenizer p = Tokenizer::load((dir / "pairs.json").string());
  std::string text = small_corpus();
  text.resize(text.find('\n', 2000));
  EXPECT_EQ(p.encode(text), tok.encode(text));
  fs::remove_all(dir);
}
