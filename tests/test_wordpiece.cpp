// WordPiece against HF tokenizers (tests/reference/wordpiece_reference.py): kotoba loads an
// HF-trained BERT tokenizer.json and encodes held-out multilingual text to the same ids (with
// and without [CLS]/[SEP]) and decodes to the same text; HF loads the tokenizer.json of
// kotoba's trainer and encodes as kotoba does; vocab.txt round trips; trainer and file errors.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/wordpiece.h"

namespace fs = std::filesystem;
using namespace kotoba;
using namespace kotoba::tokenizer;
namespace kt = kotoba::testing;
using nlohmann::json;

namespace {

fs::path wp_dir() {
  fs::path dir = kt::reference_dir() / "wordpiece";
  if (!fs::exists(dir / "heldout.json")) throw std::runtime_error(kt::reference_missing(dir / "heldout.json"));
  return dir;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

fs::path scratch(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kotoba_wordpiece_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

// Compares a tokenizer's encodings with HF's records ({text, ids, ids_special, decoded}).
void expect_same_encodings(const Tokenizer& tok, const json& records, const std::string& what) {
  int mismatches = 0;
  for (const json& r : records) {
    const std::string text = r["text"].get<std::string>();
    auto ids = tok.encode(text);
    auto with = tok.encode(text, true);
    if (ids != r["ids"].get<std::vector<int32_t>>() || with != r["ids_special"].get<std::vector<int32_t>>()) {
      if (++mismatches <= 5) ADD_FAILURE() << what << ": encodings of '" << text << "' differ from HF's";
      continue;
    }
    EXPECT_EQ(tok.decode(ids), r["decoded"].get<std::string>()) << what << ": decoding of '" << text << "'";
  }
  EXPECT_EQ(mismatches, 0) << what << ": " << mismatches << " of " << records.size() << " texts differ";
}

}  // namespace

TEST(WordPieceReference, LoadsHFTrainedTokenizerAndEncodesIdentically) {
  fs::path dir = wp_dir();
  Tokenizer tok = Tokenizer::load((dir / "hf_tokenizer.json").string());
  expect_same_encodings(tok, read_json(dir / "heldout.json"), "HF-trained tokenizer");
  EXPECT_EQ(tok.bos_id(), tok.token_to_id("[CLS]"));
  EXPECT_EQ(tok.eos_id(), tok.token_to_id("[SEP]"));
  EXPECT_EQ(tok.pad_id(), tok.token_to_id("[PAD]"));

  // Saved again by kotoba (tokenizer.json and vocab.txt), it encodes the same.
  fs::path out = scratch("resave");
  tok.save((out / "tokenizer.json").string());
  expect_same_encodings(Tokenizer::load((out / "tokenizer.json").string()), read_json(dir / "heldout.json"), "re-saved");
  WordPiece wp = WordPiece::from_json(read_json(dir / "hf_tokenizer.json"), "hf_tokenizer.json");
  wp.save_vocab_txt((out / "vocab.txt").string());
  WordPiece from_txt = WordPiece::from_vocab_txt((out / "vocab.txt").string());
  for (const json& r : read_json(dir / "heldout.json"))
    EXPECT_EQ(from_txt.encode(r["text"].get<std::string>(), true), r["ids_special"].get<std::vector<int32_t>>())
        << "vocab.txt: '" << r["text"].get<std::string>() << "'";
  fs::remove_all(out.parent_path());
}

TEST(WordPieceReference, KotobaTrainedTokenizerEncodesAlikeInHF) {
  fs::path dir = wp_dir();
  WordPieceTrainOptions options;
  options.vocab_size = 400;
  options.show_progress = false;
  WordPiece wp = WordPiece::train({(dir / "corpus.txt").string()}, options);
  EXPECT_EQ(wp.size(), 400);
  for (int32_t i = 0; i < 5; ++i) EXPECT_EQ(wp.id_to_token(i), options.special_tokens[size_t(i)]);
  fs::path out = scratch("trained");
  wp.save((out / "tokenizer.json").string());
  json texts = json::array();
  for (const json& r : read_json(dir / "heldout.json")) texts.push_back(r["text"]);
  write(out / "texts.json", texts.dump());
  std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                    "/tests/reference/wordpiece_reference.py\" --encode \"" + (out / "tokenizer.json").string() +
                    "\" \"" + (out / "texts.json").string() + "\" \"" + (out / "hf.json").string() + "\"";
  int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "failed: " << cmd;
  Tokenizer tok = Tokenizer::load((out / "tokenizer.json").string());
  expect_same_encodings(tok, read_json(out / "hf.json"), "kotoba-trained tokenizer in HF");
  // Continuation pieces were learned, and real words are covered by them.
  int continuing = 0;
  for (int32_t i = 0; i < wp.size(); ++i) continuing += wp.id_to_token(i).rfind("##", 0) == 0 && wp.id_to_token(i).size() > 4;
  EXPECT_GT(continuing, 10);
  EXPECT_LT(tok.encode("tokenizer").size(), 9u);  // fewer pieces than letters
  fs::remove_all(out.parent_path());
}

TEST(WordPiece, TrainerLimitsAndDeterminism) {
  fs::path out = scratch("limits");
  write(out / "a.txt", "low lower lowest [MASK] low\nnewer newest new\nwider widest wide\n");
  WordPieceTrainOptions o;
  o.vocab_size = 60;
  o.show_progress = false;
  WordPiece a = WordPiece::train({(out / "a.txt").string()}, o), b = WordPiece::train({(out / "a.txt").string()}, o);
  ASSERT_EQ(a.size(), b.size());
  for (int32_t i = 0; i < a.size(); ++i) EXPECT_EQ(a.id_to_token(i), b.id_to_token(i));
  EXPECT_LE(a.size(), 60);
  EXPECT_FALSE(a.token_to_id("mask").has_value()) << "the special token's text was learned";
  std::vector<int32_t> ids = a.encode("lowest [MASK]", true);
  EXPECT_EQ(ids.front(), 2);
  EXPECT_EQ(ids.back(), 3);
  EXPECT_EQ(ids[ids.size() - 2], 4);
  EXPECT_EQ(a.decode(a.encode("lowest newer", false)), "lowest newer");
  // A min_frequency no pair reaches leaves the specials and the alphabet only.
  o.min_frequency = 1000;
  WordPiece c = WordPiece::train({(out / "a.txt").string()}, o);
  for (int32_t i = 5; i < c.size(); ++i)
    EXPECT_LE(c.id_to_token(i).size(), 3u) << c.id_to_token(i);  // "x" or "##x"
  o.special_tokens = {"[PAD]"};
  EXPECT_THROW(WordPiece::train({(out / "a.txt").string()}, o), Error);  // no [UNK]
  fs::remove_all(out.parent_path());
}

TEST(WordPiece, FileErrorsNameTheField) {
  json doc = json::parse(WordPiece::from_vocab_txt([] {
               fs::path d = scratch("errors");
               write(d / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n##b\n");
               return (d / "vocab.txt").string();
             }())
                                 .to_json()
                                 .dump());
  EXPECT_EQ(Tokenizer::from_json(doc.dump(), "ok.json").encode("ab"), (std::vector<int32_t>{5, 6}));
  auto fails_with = [&](json bad, const std::string& needle) {
    try {
      Tokenizer::from_json(bad.dump(), "bad.json");
      ADD_FAILURE() << "accepted a file that should fail with '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
    }
  };
  json bad = doc;
  bad["normalizer"]["type"] = "NFC";
  fails_with(bad, "normalizer.type");
  bad = doc;
  bad["model"]["unk_token"] = "[NOPE]";
  fails_with(bad, "[NOPE]");
  bad = doc;
  bad["model"]["vocab"]["zz"] = 99;
  fails_with(bad, "model.vocab");
  bad = doc;
  bad["pre_tokenizer"] = json{{"type", "Whitespace"}};
  fails_with(bad, "pre_tokenizer.type");
  bad = doc;
  bad["normalizer"]["lowercase"] = "yes";  // wrong JSON type: still a kotoba::Error naming the file
  fails_with(bad, "wrong type");
  bad = doc;
  bad["post_processor"]["special_tokens"]["[CLS]"]["ids"] = {77};
  fails_with(bad, "post_processor.special_tokens");
  bad = doc;
  bad["added_tokens"][0]["id"] = 3;
  fails_with(bad, "added_tokens");
  fs::remove_all(fs::temp_directory_path() / ("kotoba_wordpiece_" + std::to_string(::getpid())));
}
