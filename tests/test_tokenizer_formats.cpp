// Tokenizer formats against their Python references, trained fresh each run by
// tests/tokenizer_formats_reference.py: HF tokenizer.json in every style kotoba reads (GPT-2, Llama 3,
// Qwen2, Llama 2 byte fallback, Metaspace), SentencePiece .model files, a transformers model directory
// with tokenizer_config.json; ids and decodes must be identical. Also save round trips through HF
// and clear errors for corrupt files.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"

using kotoba::tokenizer::Tokenizer;
using kotoba::tokenizer::TokenizerConfig;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_text(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

std::string run_python(const std::string& args) {
  std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                    "/tests/tokenizer_formats_reference.py\" " + args;
  return std::system(cmd.c_str()) == 0 ? "" : "failed: " + cmd;
}

// The reference, made once per process into a temporary directory from the test seed.
struct Reference {
  fs::path dir;
  json doc;
  std::vector<std::string> texts;
  std::string error;
};
const Reference& reference() {
  static const Reference ref = [] {
    Reference r;
    r.dir = fs::temp_directory_path() / ("kotoba-test-formats-" + std::to_string(::getpid()));
    fs::create_directories(r.dir);
    uint64_t seed = kotoba::testing::test_seed() % 1000000007;
    r.error = run_python("\"" + r.dir.string() + "\" " + std::to_string(seed));
    if (!r.error.empty()) {
      r.error += " (it needs `tokenizers`, `sentencepiece` and `transformers` in " KOTOBA_PYTHON
                 "; scripts/test installs them)";
      return r;
    }
    std::ifstream in(r.dir / "formats.json");
    r.doc = json::parse(in);
    r.texts = r.doc["texts"].get<std::vector<std::string>>();
    return r;
  }();
  return ref;
}

// Removes the reference directory when the test program ends.
struct CleanUp {
  ~CleanUp() {
    std::error_code ec;
    fs::remove_all(fs::temp_directory_path() / ("kotoba-test-formats-" + std::to_string(::getpid())), ec);
  }
} clean_up;

std::string show_ids(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s + "]";
}

// The first differing position and both id lists.
void expect_same_ids(const std::vector<int32_t>& got, const std::vector<int32_t>& want, const std::string& what) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  EXPECT_TRUE(i == got.size() && i == want.size())
      << what << ": ids differ at position " << i << " (kotoba " << got.size() << " ids, reference " << want.size()
      << ")\n  kotoba:    " << show_ids(got) << "\n  reference: " << show_ids(want);
}

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD. HF's
// ByteLevel decoder ends with it, where kotoba keeps the raw bytes.
std::string lossy_utf8(const std::string& s) {
  std::string out;
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = b[i];
    size_t need = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    size_t k = 1;
    if (need > 1) {
      unsigned char lo = 0x80, hi = 0xBF;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
      while (k < need && i + k < n && b[i + k] >= (k == 1 ? lo : 0x80) && b[i + k] <= (k == 1 ? hi : 0xBF)) ++k;
    }
    if (need != 0 && k == need) out.append(s, i, need);
    else out += "\xEF\xBF\xBD";
    i += need == 0 ? 1 : k;
  }
  return out;
}

// Compares kotoba with the reference's ids (with and without special tokens) and decode of every text.
void expect_like_reference(const Tokenizer& tok, const json& results, const std::vector<std::string>& texts,
                           const std::string& name) {
  ASSERT_EQ(results.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const json& want = results[i];
    std::string what = name + ", text " + std::to_string(i) + " (seed " + std::to_string(reference().doc["seed"].get<uint64_t>()) + ")";
    std::vector<int32_t> ids = tok.encode(texts[i]);
    expect_same_ids(ids, want["ids"].get<std::vector<int32_t>>(), what);
    expect_same_ids(tok.encode(texts[i], true), want["ids_special"].get<std::vector<int32_t>>(),
                    what + " with special tokens");
    EXPECT_EQ(lossy_utf8(tok.decode(want["ids"].get<std::vector<int32_t>>())), want["decoded"].get<std::string>())
        << what << ": decode differs";
  }
}

#define REQUIRE_REFERENCE()                                  \
  const Reference& ref = reference();                        \
  ASSERT_TRUE(ref.error.empty()) << ref.error;

void check_named(const std::string& name) {
  const Reference& ref = reference();
  const json& entry = ref.doc["tokenizers"][name];
  Tokenizer tok = Tokenizer::load(entry["file"].get<std::string>());
  expect_like_reference(tok, entry["results"], ref.texts, name);
}

}  // namespace

TEST(TokenizerFormats, Gpt2ByteLevelWithAndWithoutPrefixSpace) {
  REQUIRE_REFERENCE();
  check_named("gpt2");
  check_named("gpt2_prefix_space");
}

TEST(TokenizerFormats, Llama3SplitRegexByteLevelIgnoreMerges) {
  REQUIRE_REFERENCE();
  check_named("llama3");
  Tokenizer tok = Tokenizer::load(ref.doc["tokenizers"]["llama3"]["file"].get<std::string>());
  EXPECT_EQ(tok.bos_id(), tok.token_to_id("<|begin_of_text|>"));  // from the template
  ASSERT_TRUE(tok.eos_id().has_value());
  EXPECT_EQ(tok.id_to_token(*tok.eos_id()), "<|endoftext|>");  // the first of the well-known end names
}

TEST(TokenizerFormats, Qwen2NfcAndSingleDigits) {
  REQUIRE_REFERENCE();
  check_named("qwen2");
}

TEST(TokenizerFormats, Llama2ByteFallbackPrependReplace) {
  REQUIRE_REFERENCE();
  check_named("llama2");
  Tokenizer tok = Tokenizer::load(ref.doc["tokenizers"]["llama2"]["file"].get<std::string>());
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  // A character absent from the vocabulary falls back to its UTF-8 bytes.
  std::vector<int32_t> ids = tok.encode("ሀ");
  std::vector<int32_t> bytes = {*tok.token_to_id("<0xE1>"), *tok.token_to_id("<0x88>"), *tok.token_to_id("<0x80>")};
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(std::vector<int32_t>(ids.end() - 3, ids.end()), bytes);
}

TEST(TokenizerFormats, MetaspaceFirstAndAlwaysWithUnk) {
  REQUIRE_REFERENCE();
  check_named("metaspace_first");
  check_named("metaspace_always");
}

TEST(TokenizerFormats, SentencePieceModelsLikeSentencePiece) {
  REQUIRE_REFERENCE();
  check_named("sp_bpe");
  check_named("sp_unigram");
  Tokenizer tok = Tokenizer::load(ref.doc["tokenizers"]["sp_bpe"]["file"].get<std::string>());
  EXPECT_EQ(tok.id_to_token(*tok.bos_id()), "<s>");
  EXPECT_EQ(tok.id_to_token(*tok.eos_id()), "</s>");
  EXPECT_FALSE(tok.token_to_id("not a piece at all").has_value());
  // Saved as .model and read back, it encodes the same.
  fs::path copy = ref.dir / "copy" / "tokenizer.model";
  fs::create_directories(copy.parent_path());
  tok.save(copy.string());
  Tokenizer again = Tokenizer::load_dir(copy.parent_path().string());
  for (const auto& text : ref.texts) expect_same_ids(again.encode(text), tok.encode(text), "reloaded .model");
  EXPECT_THROW(tok.save((ref.dir / "copy" / "tokenizer.json").string()), kotoba::Error);
  // tokenizer_config.json beside a .model decides BOS and EOS, as LlamaTokenizer does.
  write_text(copy.parent_path() / "tokenizer_config.json",
             R"({"add_bos_token": false, "add_eos_token": true, "eos_token": "</s>", "pad_token": "<unk>"})");
  Tokenizer configured = Tokenizer::load_dir(copy.parent_path().string());
  const json& results = ref.doc["tokenizers"]["sp_bpe"]["results"];
  for (size_t i = 0; i < ref.texts.size(); ++i) {
    std::vector<int32_t> want = results[i]["ids"].get<std::vector<int32_t>>();
    want.push_back(*tok.token_to_id("</s>"));
    expect_same_ids(configured.encode(ref.texts[i], true), want, "sp_bpe with add_eos_token, text " + std::to_string(i));
  }
  EXPECT_EQ(configured.pad_id(), tok.token_to_id("<unk>"));
}

TEST(TokenizerFormats, ModelDirectoryAppliesTokenizerConfig) {
  REQUIRE_REFERENCE();
  const json& entry = ref.doc["tokenizers"]["llama_dir"];
  Tokenizer tok = Tokenizer::load_dir(entry["file"].get<std::string>());
  expect_like_reference(tok, entry["results"], ref.texts, "llama_dir (transformers AutoTokenizer)");
  EXPECT_EQ(tok.bos_id(), entry["bos_id"].get<int32_t>());
  EXPECT_EQ(tok.eos_id(), entry["eos_id"].get<int32_t>());
  EXPECT_EQ(tok.pad_id(), entry["pad_id"].get<int32_t>());
  TokenizerConfig cfg = TokenizerConfig::read((fs::path(entry["file"].get<std::string>()) / "tokenizer_config.json").string());
  EXPECT_EQ(cfg.bos_token, "<s>");
  EXPECT_EQ(cfg.add_eos_token, true);
  EXPECT_EQ(cfg.tokenizer_class, "LlamaTokenizer");
  EXPECT_NE(cfg.chat_template.find("m['content']"), std::string::npos);
}

// save() writes a tokenizer.json that HF loads and encodes exactly as the original.
TEST(TokenizerFormats, SavedTokenizerJsonEncodesIdenticallyInHF) {
  REQUIRE_REFERENCE();
  const std::vector<std::string> names = {"gpt2", "gpt2_prefix_space", "llama3", "qwen2", "llama2",
                                          "metaspace_first", "metaspace_always"};
  json jobs = json::array();
  fs::path dir = ref.dir / "saved";
  fs::create_directories(dir);
  for (const auto& name : names) {
    Tokenizer tok = Tokenizer::load(ref.doc["tokenizers"][name]["file"].get<std::string>());
    fs::path saved = dir / (name + ".json");
    tok.save(saved.string());
    jobs.push_back({{"file", saved.string()}, {"texts", ref.texts}});
    // kotoba reads back what it wrote, identically.
    Tokenizer again = Tokenizer::load(saved.string());
    expect_like_reference(again, ref.doc["tokenizers"][name]["results"], ref.texts, name + " saved by kotoba");
  }
  write_text(dir / "jobs.json", jobs.dump());
  std::string error = run_python("--encode \"" + (dir / "jobs.json").string() + "\" \"" + (dir / "hf.json").string() + "\"");
  ASSERT_TRUE(error.empty()) << error;
  json hf = json::parse(read_text(dir / "hf.json"));
  ASSERT_EQ(hf.size(), names.size());
  for (size_t k = 0; k < names.size(); ++k) {
    const json& want = ref.doc["tokenizers"][names[k]]["results"];
    for (size_t i = 0; i < ref.texts.size(); ++i) {
      std::string what = "HF on kotoba's " + names[k] + ", text " + std::to_string(i);
      expect_same_ids(hf[k][i]["ids"].get<std::vector<int32_t>>(), want[i]["ids"].get<std::vector<int32_t>>(), what);
      expect_same_ids(hf[k][i]["ids_special"].get<std::vector<int32_t>>(),
                      want[i]["ids_special"].get<std::vector<int32_t>>(), what + " with special tokens");
      EXPECT_EQ(hf[k][i]["decoded"], want[i]["decoded"]) << what;
    }
  }
}

TEST(TokenizerFormats, CorruptFilesGiveErrorsNamingTheFile) {
  REQUIRE_REFERENCE();
  fs::path dir = ref.dir / "corrupt";
  fs::create_directories(dir);
  std::mt19937_64 rng(kotoba::testing::test_seed());
  auto expect_error = [&](const std::function<void()>& load, const std::string& must_contain, const std::string& what) {
    try {
      load();
      ADD_FAILURE() << what << ": no error";
    } catch (const kotoba::Error& e) {
      EXPECT_NE(std::string(e.what()).find(must_contain), std::string::npos) << what << ": " << e.what();
    }
  };
  // Truncated tokenizer.json of every style, cut at a random point.
  for (const char* name : {"llama3", "llama2", "metaspace_always"}) {
    std::string text = read_text(ref.doc["tokenizers"][name]["file"].get<std::string>());
    fs::path path = dir / (std::string(name) + "-truncated.json");
    write_text(path, text.substr(0, rng() % text.size()));
    expect_error([&] { Tokenizer::load(path.string()); }, path.string(), path.string());
  }
  // An unknown split regex is named with the file.
  json doc = json::parse(read_text(ref.doc["tokenizers"]["llama3"]["file"].get<std::string>()));
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\d";
  write_text(dir / "regex.json", doc.dump());
  expect_error([&] { Tokenizer::load((dir / "regex.json").string()); }, "\\w+|\\d", "unknown regex");
  expect_error([&] { Tokenizer::load((dir / "regex.json").string()); }, "regex.json", "unknown regex");
  // Corrupt and truncated .model files.
  std::string model = read_text(ref.doc["tokenizers"]["sp_bpe"]["file"].get<std::string>());
  write_text(dir / "truncated.model", model.substr(0, model.size() / 3));
  expect_error([&] { Tokenizer::load((dir / "truncated.model").string()); }, "truncated.model", "truncated .model");
  std::string garbage(300, '\0');
  for (char& c : garbage) c = char(rng());
  write_text(dir / "garbage.model", garbage);
  expect_error([&] { Tokenizer::load((dir / "garbage.model").string()); }, "garbage.model", "garbage .model");
  write_text(dir / "empty.model", "");
  expect_error([&] { Tokenizer::load((dir / "empty.model").string()); }, "empty.model", "empty .model");
  // tokenizer_config.json with bad values, and a directory without a tokenizer.
  fs::path model_dir = dir / "model";
  fs::create_directories(model_dir);
  expect_error([&] { Tokenizer::load_dir(model_dir.string()); }, model_dir.string(), "no tokenizer");
  fs::copy_file(ref.doc["tokenizers"]["llama2"]["file"].get<std::string>(), model_dir / "tokenizer.json");
  const std::vector<std::pair<std::string, std::string>> configs = {
      {"{\"bos_token\": 5}", "bos_token"},
      {"{\"eos_token\": {\"text\": \"</s>\"}}", "eos_token"},
      {"{\"pad_token\": \"<not-a-token>\"}", "pad_token"},
      {"{\"add_bos_token\": \"yes\"}", "add_bos_token"},
      {"{\"model_max_length\": \"long\"}", "model_max_length"},
      {"{\"chat_template\": 3}", "chat_template"},
      {"{\"chat_template\": [{\"name\": \"default\"}]}", "chat_template[0]"},
      {"{\"bos_token\": \"<s>\",", "not valid JSON"},
      {"[1, 2]", "object"},
  };
  for (const auto& [text, key] : configs) {
    write_text(model_dir / "tokenizer_config.json", text);
    expect_error([&] { Tokenizer::load_dir(model_dir.string()); }, key, text);
    expect_error([&] { Tokenizer::load_dir(model_dir.string()); }, "tokenizer_config.json", text);
  }
}

// Random damage to a tokenizer.json either loads or throws kotoba::Error; what loads encodes.
TEST(TokenizerFormats, FromJsonSurvivesDamagedInput) {
  REQUIRE_REFERENCE();
  std::mt19937_64 rng(kotoba::testing::test_seed() + 1);
  for (const char* name : {"llama2", "qwen2", "metaspace_always"}) {
    const std::string good = read_text(ref.doc["tokenizers"][name]["file"].get<std::string>());
    for (int trial = 0; trial < 40; ++trial) {
      std::string text = good;
      int edits = 1 + int(rng() % 4);
      for (int e = 0; e < edits; ++e) {
        size_t at = rng() % text.size();
        switch (rng() % 3) {
          case 0: text[at] = char(rng()); break;
          case 1: text.erase(at, 1 + rng() % 16); break;
          default: text.insert(at, std::string(1 + rng() % 4, "{}[]\",:0\\"[rng() % 9])); break;
        }
      }
      try {
        Tokenizer tok = Tokenizer::from_json(text, name);
        for (size_t i = 0; i < 3; ++i) {
          std::vector<int32_t> ids = tok.encode(ref.texts[i], true);
          tok.decode(ids);
        }
      } catch (const kotoba::Error&) {
      }
    }
  }
  EXPECT_THROW(Tokenizer::from_json(std::string(100000, '['), "deep"), kotoba::Error);
  // Replacements that double the text forty times are refused, not run.
  json doubling = json::parse(read_text(ref.doc["tokenizers"]["llama2"]["file"].get<std::string>()));
  json steps = json::array();
  for (int i = 0; i < 40; ++i) steps.push_back({{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", "aa"}});
  doubling["normalizer"] = {{"type", "Sequence"}, {"normalizers", steps}};
  EXPECT_THROW(Tokenizer::from_json(doubling.dump(), "doubling").encode("a b"), kotoba::Error);
  doubling["normalizer"] = nullptr;
  doubling["decoder"] = {{"type", "Sequence"}, {"decoders", steps}};
  Tokenizer doubling_decoder = Tokenizer::from_json(doubling.dump(), "doubling");
  EXPECT_THROW(doubling_decoder.decode(doubling_decoder.encode("a b")), kotoba::Error);
  EXPECT_THROW(Tokenizer::from_json("{\"model\": {\"vocab\": {\"a\": 2147483000}, \"merges\": []}, \"pre_tokenizer\": null}",
                                    "huge id"),
               kotoba::Error);
}

TEST(TokenizerConfig, ReadsTokensTemplatesAndLimits) {
  TokenizerConfig cfg = TokenizerConfig::parse(
      R"({"bos_token": {"content": "<s>", "lstrip": false, "__type": "AddedToken"}, "eos_token": "</s>",
          "pad_token": null, "add_bos_token": true, "model_max_length": 1000000000000000019884624838656,
          "chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]})",
      "mem");
  EXPECT_EQ(cfg.bos_token, "<s>");
  EXPECT_EQ(cfg.eos_token, "</s>");
  EXPECT_FALSE(cfg.pad_token.has_value());
  EXPECT_EQ(cfg.add_bos_token, true);
  EXPECT_FALSE(cfg.add_eos_token.has_value());
  EXPECT_FALSE(cfg.model_max_length.has_value());
  EXPECT_EQ(cfg.chat_template, "A");
  ASSERT_EQ(cfg.chat_templates.size(), 2u);
  EXPECT_EQ(cfg.chat_templates[1].first, "tool_use");
  TokenizerConfig plain = TokenizerConfig::parse(R"({"model_max_length": 4096, "chat_template": "T"})", "mem");
  EXPECT_EQ(plain.model_max_length, 4096);
  EXPECT_EQ(plain.chat_template, "T");
  EXPECT_THROW(TokenizerConfig::read("/nonexistent/tokenizer_config.json"), kotoba::Error);
}
