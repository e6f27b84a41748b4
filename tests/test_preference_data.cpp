// Preference data sets: every shape (pairs, choice, ranked, prompts), string and conversational
// prompts and replies, the expansion of rankings into pairs, and the error for every malformed
// record naming the file, line and field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "data/preference_data.h"

namespace fs = std::filesystem;
using namespace kotoba;
using namespace kotoba::data;

namespace {

class PreferenceData : public ::testing::Test {
 protected:
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path() / ("kotoba_pref_" + std::to_string(::getpid()) + "_" +
                                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return (dir / name).string();
  }
  std::string read_error(const std::string& text, const std::string& format = "auto") {
    const std::string path = write("bad.jsonl", text);
    try {
      read_preference_dataset(path, format);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(PreferenceData, PairsWithStringAndConversationalFields) {
  const std::string path = write("p.jsonl",
                                 R"({"prompt": "Say hi.", "chosen": "Hello!", "rejected": "Go away."})"
                                 "\n\n"
                                 R"({"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},)"
                                 R"( {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],)"
                                 R"( "chosen": [{"role": "assistant", "content": "Goodbye, friend."}], "rejected": "Whatever."})"
                                 "\n");
  std::vector<PreferencePair> pairs = read_preference_dataset(path);
  ASSERT_EQ(pairs.size(), 2u);
  ASSERT_EQ(pairs[0].prompt.size(), 1u);
  EXPECT_EQ(pairs[0].prompt[0].role, "user");
  EXPECT_EQ(pairs[0].prompt[0].content, "Say hi.");
  EXPECT_EQ(pairs[0].chosen, "Hello!");
  EXPECT_EQ(pairs[0].rejected, "Go away.");
  EXPECT_EQ(pairs[0].where, path + ":1");
  ASSERT_EQ(pairs[1].prompt.size(), 4u);
  EXPECT_EQ(pairs[1].prompt[0].role, "system");
  EXPECT_EQ(pairs[1].prompt[3].content, "Bye");
  EXPECT_EQ(pairs[1].chosen, "Goodbye, friend.");
  EXPECT_EQ(pairs[1].where, path + ":3");

  SftExample e = preference_example(pairs[1], pairs[1].rejected);
  ASSERT_EQ(e.messages.size(), 5u);
  EXPECT_EQ(e.messages.back().role, "assistant");
  EXPECT_EQ(e.messages.back().content, "Whatever.");
  EXPECT_FALSE(e.plain_text);
}

TEST_F(PreferenceData, ChoiceShapeAndJsonArrays) {
  const std::string path = write("c.json", "[\n"
                                           R"({"prompt": "Q1", "response_1": "a", "response_2": "b", "preference": 2},)"
                                           "\n"
                                           R"({"prompt": "Q2", "response_1": "c", "response_2": "d", "preference": 1.0})"
                                           "\n]");
  std::vector<PreferencePair> pairs = read_preference_dataset(path);
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].chosen, "b");
  EXPECT_EQ(pairs[0].rejected, "a");
  EXPECT_EQ(pairs[1].chosen, "c");
  EXPECT_EQ(pairs[1].rejected, "d");
  EXPECT_EQ(pairs[1].where, path + ":3: record 2");
}

// K ranked replies give a pair for every two of different rank, the better one chosen.
TEST_F(PreferenceData, RankedListsExpandToEveryOrderedPair) {
  const std::string path =
      write("r.jsonl", R"({"prompt": "Q", "responses": ["w", "x", "y", "z"], "ranks": [3, 1, 2, 2]})"
                       "\n");
  std::vector<PreferencePair> pairs = read_preference_dataset(path);
  std::set<std::pair<std::string, std::string>> got;
  for (const auto& p : pairs) got.insert({p.chosen, p.rejected});
  // ranks: x 1, y 2, z 2, w 3; y and z tie and give no pair.
  const std::set<std::pair<std::string, std::string>> expected = {{"x", "w"}, {"y", "w"}, {"z", "w"}, {"x", "y"},
                                                                  {"x", "z"}};
  EXPECT_EQ(got, expected);
  EXPECT_EQ(pairs.size(), 5u);
}

TEST_F(PreferenceData, PromptsShape) {
  const std::string path = write("q.jsonl", "{\"prompt\": \"one\"}\n{\"prompt\": \"two\"}\n");
  std::vector<PreferencePair> pairs = read_preference_dataset(path);
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[1].prompt[0].content, "two");
  EXPECT_TRUE(pairs[1].chosen.empty());
  // Any shape can be read as prompts alone when named.
  const std::string full = write("f.jsonl", R"({"prompt": "p", "chosen": "a", "rejected": "b"})"
                                            "\n");
  EXPECT_NE(read_error(R"({"prompt": "p", "chosen": "a", "rejected": "b"})", "prompts"), "");
  EXPECT_EQ(read_preference_dataset(full, "pairs").size(), 1u);
}

TEST_F(PreferenceData, ErrorsNameFileLineAndField) {
  struct Case {
    std::string text, format, needle;
  };
  const std::vector<Case> cases = {
      {"{\"prompt\": \"p\", \"chosen\": \"a\"}\n", "auto", ":1: field 'rejected' is missing"},
      {"{\"prompt\": \"p\", \"chosen\": 3, \"rejected\": \"b\"}\n", "auto", "field 'chosen' is an integer"},
      {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"chosen\": \"a\"", "auto",
       ":2: not valid JSON"},
      {"{\"chosen\": \"a\", \"rejected\": \"b\"}\n", "auto", "field 'prompt' is missing"},
      {"{\"prompt\": \"p\", \"response_1\": \"a\", \"response_2\": \"b\", \"preference\": 3}\n", "auto",
       "field 'preference' is 3 (expected 1 or 2"},
      {"{\"prompt\": \"p\", \"response_1\": \"a\", \"response_2\": \"b\"}\n", "auto", "field 'preference' is missing"},
      {"{\"prompt\": \"p\", \"response_1\": \"a\", \"response_2\": \"b\", \"preference\": \"1\"}\n", "auto",
       "field 'preference' is a string"},
      {"{\"prompt\": \"p\", \"responses\": [\"a\", \"b\"], \"ranks\": [1]}\n", "auto",
       "field 'ranks' holds 1 values for 2 responses"},
      {"{\"prompt\": \"p\", \"responses\": [\"a\", \"b\"], \"ranks\": [1, 1]}\n", "auto", "the same rank"},
      {"{\"prompt\": \"p\", \"responses\": [\"a\"], \"ranks\": [1]}\n", "auto", "expected at least 2"},
      {"{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}], "
       "\"chosen\": \"a\", \"rejected\": \"b\"}\n",
       "auto", "expected the prompt to end with a user turn"},
      {"{\"prompt\": [{\"role\": \"bot\", \"content\": \"q\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n", "auto",
       "prompt[0]: field 'role' is 'bot'"},
      {"{\"prompt\": \"p\", \"chosen\": [{\"role\": \"user\", \"content\": \"a\"}], \"rejected\": \"b\"}\n", "auto",
       "chosen[0]: field 'role' is 'user'"},
      {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"response_1\": \"a\", "
       "\"response_2\": \"b\", \"preference\": 1}\n",
       "auto", ":2: the record's keys (preference, prompt, response_1, response_2) are those of the choice shape"},
      {"{\"question\": \"p\"}\n", "auto", "cannot tell the preference data's shape"},
      {"[1, 2]\n", "auto", "the record is an integer"},
      {"{\"prompt\": \"p\"}\n", "bogus", "unknown preference data format 'bogus'"},
      {"   \n", "auto", "holds no example"},
  };
  for (const Case& c : cases) {
    const std::string message = read_error(c.text, c.format);
    EXPECT_NE(message.find(c.needle), std::string::npos) << "input: " << c.text << "\nmessage: " << message;
    if (c.format != "bogus") {
      EXPECT_NE(message.find("bad.jsonl"), std::string::npos) << message;
    }
  }
  EXPECT_THROW(read_preference_dataset((dir / "missing.jsonl").string()), Error);
}

}  // namespace
