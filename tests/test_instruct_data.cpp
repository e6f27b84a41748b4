// Instruction data sets: every reader shape and error message, conversions and their round trips,
// `kotoba data convert|stats`, and SFT tokenisation checked id for id and label for label against
// HF transformers/tokenizers (tests/reference/sft_data_reference.py).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/instruct_data.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace kotoba;
using namespace kotoba::data;

namespace {

using kotoba::testing::slurp;

class InstructData : public ::testing::Test {
 protected:
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("kotoba_instruct_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return (dir / name).string();
  }
  // The message of the Error reading `text` as file `name` throws ("" when it reads fine).
  std::string read_error(const std::string& name, const std::string& text, const std::string& format = "auto") {
    const std::string path = write(name, text);
    try {
      read_sft_dataset(path, format);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
};

void expect_message(const chat::Message& m, const std::string& role, const std::string& content,
                    const std::string& input = "") {
  EXPECT_EQ(m.role, role);
  EXPECT_EQ(m.content, content);
  EXPECT_EQ(m.input, input);
}

TEST_F(InstructData, ReadsEveryShape) {
  // Alpaca as a JSON array (pretty-printed over several lines) and as JSONL, non-ASCII kept.
  auto alpaca = read_sft_dataset(write("a.json", "[\n {\"instruction\": \"Übersetze\", \"input\": \"東京\",\n"
                                                   "  \"output\": \"Tokyo 🙂\"},\n {\"instruction\": \"Hi\", "
                                                   "\"output\": \"Hello\"}\n]\n"));
  ASSERT_EQ(alpaca.size(), 2u);
  expect_message(alpaca[0].messages[0], "user", "Übersetze", "東京");
  expect_message(alpaca[0].messages[1], "assistant", "Tokyo 🙂");
  expect_message(alpaca[1].messages[0], "user", "Hi");
  EXPECT_FALSE(alpaca[1].plain_text);
  auto jsonl = read_sft_dataset(write("a.jsonl", "{\"instruction\":\"x\",\"input\":null,\"output\":\"y\"}\n\n"
                                                 "{\"instruction\":\"p\",\"input\":\"q\",\"output\":\"r\"}\r\n"));
  ASSERT_EQ(jsonl.size(), 2u);
  expect_message(jsonl[1].messages[0], "user", "p", "q");

  auto chat = read_sft_dataset(write("c.jsonl", R"({"messages":[{"role":"system","content":"S"},{"role":"user","content":"u1"},)"
                                                R"({"role":"assistant","content":"a1"},{"role":"user","content":"u2"},)"
                                                R"({"role":"assistant","content":"a2"}]})"
                                                "\n"));
  ASSERT_EQ(chat.size(), 1u);
  ASSERT_EQ(chat[0].messages.size(), 5u);
  expect_message(chat[0].messages[0], "system", "S");
  expect_message(chat[0].messages[4], "assistant", "a2");

  auto qa = read_sft_dataset(write("q.jsonl", "{\"question\":\"Q?\",\"answer\":\"A\",\"context\":\"C\"}\n"
                                              "{\"question\":\"Q2\",\"answer\":\"A2\"}\n"));
  expect_message(qa[0].messages[0], "user", "Q?", "C");
  expect_message(qa[0].messages[1], "assistant", "A");
  expect_message(qa[1].messages[0], "user", "Q2");

  auto summ = read_sft_dataset(write("s.jsonl", "{\"document\":\"Long text.\",\"summary\":\"Short.\"}\n"));
  expect_message(summ[0].messages[0], "user", kSummarizeInstruction, "Long text.");
  expect_message(summ[0].messages[1], "assistant", "Short.");

  auto text = read_sft_dataset(write("t.txt", "\nfirst doc\nline two\n\n \n\nsecond\r\n"));
  ASSERT_EQ(text.size(), 2u);
  EXPECT_TRUE(text[0].plain_text);
  ASSERT_EQ(text[0].messages.size(), 1u);
  expect_message(text[0].messages[0], "assistant", "first doc\nline two");
  expect_message(text[1].messages[0], "assistant", "second");

  // --format overrides the extension; --map renames before the shape is seen.
  EXPECT_EQ(read_sft_dataset(write("t.jsonl", "just text\n"), "text").size(), 1u);
  auto mapped = read_sft_dataset(write("m.jsonl", "{\"prompt\":\"P\",\"response\":\"R\"}\n"), "auto",
                                 parse_column_map("prompt=instruction,response=output"));
  expect_message(mapped[0].messages[0], "user", "P");
  expect_message(mapped[0].messages[1], "assistant", "R");
  EXPECT_EQ(detect_dataset_shape((dir / "q.jsonl").string()), DatasetShape::qa);
  EXPECT_EQ(detect_dataset_shape((dir / "a.json").string()), DatasetShape::alpaca);
  EXPECT_EQ(detect_dataset_shape((dir / "t.txt").string()), DatasetShape::text);
}

TEST_F(InstructData, ErrorsNameFileLineAndField) {
  struct Case {
    std::string name, text, format;
    std::vector<std::string> expected;  // substrings of the message
  };
  const std::vector<Case> cases = {
      {"bad.jsonl", "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\": \"a\",\n", "auto",
       {"bad.jsonl:2: not valid JSON"}},
      {"missing.jsonl", "{\"instruction\":\"a\",\"output\":\"b\"}\n\n{\"instruction\":\"a\"}\n", "auto",
       {"missing.jsonl:3: field 'output' is missing (expected a string)"}},
      {"typed.jsonl", "{\"instruction\":\"a\",\"output\":7}\n", "auto",
       {"typed.jsonl:1: field 'output' is an integer (expected a string)"}},
      {"input.jsonl", "{\"instruction\":\"a\",\"input\":[1],\"output\":\"b\"}\n", "auto",
       {"input.jsonl:1: field 'input' is an array (expected a string)"}},
      {"role.jsonl", R"({"messages":[{"role":"user","content":"u"},{"role":"bot","content":"a"}]})", "auto",
       {"role.jsonl:1: messages[1]: field 'role' is 'bot' (expected system, user or assistant)"}},
      {"empty_messages.jsonl", "{\"messages\": []}\n", "auto", {"empty_messages.jsonl:1: field 'messages' is empty"}},
      {"system.jsonl",
       R"({"messages":[{"role":"user","content":"u"},{"role":"system","content":"s"},{"role":"assistant","content":"a"}]})",
       "auto", {"system.jsonl:1: messages[1]: a system message may only come first"}},
      {"last.jsonl", R"({"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"},{"role":"user","content":"v"}]})",
       "auto", {"last.jsonl:1: messages[2] is the last and has role 'user'"}},
      {"noreply.jsonl", R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]})", "auto",
       {"noreply.jsonl:1: field 'messages' has no assistant message"}},
      {"content.jsonl", R"({"messages":[{"role":"user"},{"role":"assistant","content":"a"}]})", "auto",
       {"content.jsonl:1: messages[0]: field 'content' is missing (expected a string)"}},
      {"mixed.jsonl", "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"question\":\"q\",\"answer\":\"a\"}\n", "auto",
       {"mixed.jsonl:2:", "are those of the qa shape, expected alpaca"}},
      {"unknown.jsonl", "{\"prompt\":\"a\",\"completion\":\"b\"}\n", "auto",
       {"unknown.jsonl:1: cannot tell", "keys (completion, prompt)", "alpaca (instruction, input, output)",
        "chat (messages)", "qa (question, answer, context)", "summarization (document, summary)", "--map"}},
      {"empty.jsonl", "", "auto", {"empty.jsonl: holds no example"}},
      {"blank.txt", "\n  \n", "auto", {"blank.txt: holds no example"}},
      {"utf8.jsonl", "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\":\"\xC3\x28\",\"output\":\"b\"}\n",
       "auto", {"utf8.jsonl:2: invalid UTF-8"}},
      {"array.json", "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n\n  {\"instruction\": \"c\"}\n]\n", "auto",
       {"array.json:4: record 2: field 'output' is missing (expected a string)"}},
      {"array_bad.json", "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c\",]\n", "auto",
       {"array_bad.json:3: not valid JSON"}},
      {"notobject.jsonl", "[1, 2]\n", "auto", {"notobject.jsonl:1:", "expected an object"}},
      {"summary.jsonl", "{\"document\":\"d\"}\n", "auto", {"summary.jsonl:1: field 'summary' is missing"}},
      {"forced.jsonl", "{\"instruction\":\"a\",\"output\":\"b\"}\n", "qa",
       {"forced.jsonl:1:", "are those of the alpaca shape, expected qa"}},
  };
  for (const Case& c : cases) {
    const std::string message = read_error(c.name, c.text, c.format);
    ASSERT_FALSE(message.empty()) << c.name << " was read without an error";
    for (const std::string& part : c.expected) EXPECT_NE(message.find(part), std::string::npos) << message;
  }
  EXPECT_THROW(read_sft_dataset((dir / "absent.jsonl").string()), Error);
  EXPECT_THROW(read_sft_dataset(write("x.jsonl", "{}"), "sharegpt"), Error);
  EXPECT_THROW(parse_column_map("a=b,=c"), Error);
  EXPECT_THROW(parse_column_map("a=b,a=c"), Error);
  EXPECT_THROW(parse_column_map(""), Error);
  const std::string dup = write("dup.jsonl", "{\"q\":\"a\",\"instruction\":\"b\",\"output\":\"c\"}\n");
  EXPECT_THROW(read_sft_dataset(dup, "auto", parse_column_map("q=instruction")), Error);
}

TEST_F(InstructData, ConversionsRoundTrip) {
  const std::string alpaca_json =
      "[\n  {\"instruction\":\"Name a city\",\"input\":\"\",\"output\":\"東京 🙂\"},\n"
      "  {\"instruction\":\"Add\",\"input\":\"2 and \\\"3\\\"\",\"output\":\"5\"}\n]\n";
  const std::string src = write("src.json", alpaca_json);
  const auto original = read_sft_dataset(src);
  auto same = [&](const std::vector<SftExample>& a, const std::vector<SftExample>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].messages.size(), b[i].messages.size());
      for (size_t k = 0; k < a[i].messages.size(); ++k) {
        EXPECT_EQ(a[i].messages[k].role, b[i].messages[k].role);
        EXPECT_EQ(a[i].messages[k].content, b[i].messages[k].content);
        EXPECT_EQ(a[i].messages[k].input, b[i].messages[k].input);
      }
    }
  };
  // json -> jsonl -> json -> qa -> json: lossless, bytes of the Alpaca JSON reproduced.
  const std::string jsonl = (dir / "a.jsonl").string(), back = (dir / "back.json").string(),
                    qa = (dir / "qa.jsonl").string(), again = (dir / "again.json").string();
  write_sft_dataset(jsonl, original, OutputShape::alpaca_jsonl);
  same(read_sft_dataset(jsonl), original);
  write_sft_dataset(back, read_sft_dataset(jsonl), OutputShape::alpaca_json);
  const std::string written = slurp(back);
  EXPECT_NE(written.find("東京 🙂"), std::string::npos) << written;  // UTF-8, not \u escapes
  EXPECT_EQ(written.find("\\u"), std::string::npos);
  EXPECT_EQ(written,
            "[\n  {\"instruction\":\"Name a city\",\"input\":\"\",\"output\":\"東京 🙂\"},\n"
            "  {\"instruction\":\"Add\",\"input\":\"2 and \\\"3\\\"\",\"output\":\"5\"}\n]\n");
  write_sft_dataset(qa, original, OutputShape::qa);
  EXPECT_EQ(slurp(qa), "{\"question\":\"Name a city\",\"answer\":\"東京 🙂\"}\n"
                       "{\"question\":\"Add\",\"context\":\"2 and \\\"3\\\"\",\"answer\":\"5\"}\n");
  write_sft_dataset(again, read_sft_dataset(qa), OutputShape::alpaca_json);
  EXPECT_EQ(slurp(again), written);

  // Chat: records without input go and come back unchanged; an input joins its instruction.
  const std::string chat = (dir / "chat.jsonl").string(), from_chat = (dir / "from_chat.jsonl").string();
  write_sft_dataset(chat, original, OutputShape::chat);
  const auto chats = read_sft_dataset(chat);
  EXPECT_EQ(chats[1].messages[0].content, "Add\n\n2 and \"3\"");
  write_sft_dataset(from_chat, chats, OutputShape::alpaca_jsonl);
  const auto round = read_sft_dataset(from_chat);
  same({round[0]}, {original[0]});
  EXPECT_EQ(round[1].messages[0].content, "Add\n\n2 and \"3\"");

  // Summarisation <-> Alpaca.
  const std::string summ = write("s.jsonl", "{\"document\":\"Text body.\",\"summary\":\"Body.\"}\n");
  const std::string summ_alpaca = (dir / "s_alpaca.jsonl").string(), summ_back = (dir / "s_back.jsonl").string();
  write_sft_dataset(summ_alpaca, read_sft_dataset(summ), OutputShape::alpaca_jsonl);
  write_sft_dataset(summ_back, read_sft_dataset(summ_alpaca), OutputShape::summarization);
  EXPECT_EQ(slurp(summ_back), slurp(summ));
}

TEST_F(InstructData, RefusesLossyConversionsAndWritesNothing) {
  const auto multi = read_sft_dataset(write("m.jsonl",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n"
      R"({"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"},{"role":"user","content":"v"},{"role":"assistant","content":"b"}]})"
      "\n"
      R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"}]})"
      "\n"));
  const std::string out = (dir / "out.json").string();
  try {
    write_sft_dataset(out, multi, OutputShape::alpaca_json);
    FAIL() << "a multi-turn chat was written as Alpaca";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("example 2 cannot be written as alpaca-json"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
  try {
    write_sft_dataset(out, {multi[2]}, OutputShape::qa);
    FAIL() << "a system message was dropped";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("system message"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_sft_dataset(out, {multi[0]}, OutputShape::summarization), Error);
  EXPECT_THROW(write_sft_dataset(out, read_sft_dataset(write("t.txt", "doc\n")), OutputShape::chat), Error);
  EXPECT_FALSE(fs::exists(out));
  // The one-turn conversation fits Alpaca.
  write_sft_dataset(out, {multi[0]}, OutputShape::alpaca_json);
  EXPECT_EQ(slurp(out), "[\n  {\"instruction\":\"u\",\"input\":\"\",\"output\":\"a\"}\n]\n");
}

TEST(InstructTokens, SegmentsAndLabels) {
  // A tiny tokenizer is enough to pin the segment boundaries; the HF comparison is below.
  const fs::path dir = fs::temp_directory_path() / ("kotoba_instruct_tok_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 200; ++i) corpus << "the cat sat on the mat and the dog ran away " << i << "\n";
  }
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::train(
      {(dir / "corpus.txt").string()},
      {.vocab_size = 320, .special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, .show_progress = false});
  fs::remove_all(dir);
  SftExample chat{{{"system", "be kind", ""}, {"user", "the cat", "on the mat"}, {"assistant", "sat", ""},
                   {"user", "the dog", ""}, {"assistant", "ran away", ""}}};
  const chat::ChatTemplate chatml(chat::TemplateStyle::chatml, "", "<|endoftext|>");
  const auto segments = sft_segments(chat, chatml);
  ASSERT_EQ(segments.size(), 4u);
  EXPECT_EQ(segments[1].text, "sat<|im_end|>\n");
  EXPECT_TRUE(segments[1].response);
  EXPECT_EQ(segments[2].text, "<|im_start|>user\nthe dog<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(segments[3].text, "ran away<|im_end|>\n");
  EXPECT_NE(segments[0].text.find("the cat\n\non the mat"), std::string::npos);  // input folded for ChatML
  const SftTokens tokens = tokenize_sft_example(chat, chatml, tok, 0);
  std::string whole;
  for (const auto& s : segments) whole += s.text;
  EXPECT_EQ(tokens.ids, tok.encode(whole, false));
  std::string targets;
  std::vector<int32_t> run;
  for (size_t i = 0; i < tokens.ids.size(); ++i)
    if (tokens.labels[i] != kIgnoreLabel) {
      EXPECT_EQ(tokens.labels[i], tokens.ids[i]);
      run.push_back(tokens.ids[i]);
    }
  EXPECT_EQ(tok.decode(run), "sat<|im_end|>\nran away<|im_end|>\n");  // every reply, with its end marker
  EXPECT_FALSE(tokens.truncated);

  const SftTokens cut = tokenize_sft_example(chat, chatml, tok, 5);
  EXPECT_TRUE(cut.truncated);
  EXPECT_EQ(cut.ids, std::vector<int32_t>(tokens.ids.begin(), tokens.ids.begin() + 5));
  EXPECT_FALSE(tokenize_sft_example(chat, chatml, tok, int64_t(tokens.ids.size())).truncated);

  // Plain text: every token a target, closed by the EOS.
  SftExample doc{{{"assistant", "the cat sat", ""}}, true};
  const SftTokens d = tokenize_sft_example(doc, chatml, tok, 0);
  std::vector<int32_t> expected = tok.encode("the cat sat", false);
  expected.push_back(*tok.eos_id());
  EXPECT_EQ(d.ids, expected);
  EXPECT_EQ(d.labels, expected);
  // A conversation must end with a reply.
  SftExample open{{{"user", "hi", ""}}};
  EXPECT_THROW(tokenize_sft_example(open, chatml, tok, 0), Error);
}

fs::path sft_reference_dir() { return kotoba::testing::reference_dir() / "sft_data"; }

TEST(SftReference, MatchesTransformers) {
  const fs::path path = sft_reference_dir() / "cases.json";
  ASSERT_TRUE(fs::exists(path)) << "missing " << path << ": it is written by the ctest fixture "
                                << KOTOBA_SOURCE_DIR << "/tests/reference/sft_data_reference.py (run "
                                << "`ctest --test-dir <build> -R sft`, or by hand: " KOTOBA_PYTHON " " KOTOBA_SOURCE_DIR
                                   "/tests/reference/sft_data_reference.py " KOTOBA_REFERENCE_DIR ")";
  const nlohmann::json ref = nlohmann::json::parse(slurp(path));
  std::printf("sft data reference seed %lld\n", ref["seed"].get<long long>());
  for (const auto& [name, jinja] : ref["templates"].items()) {
    auto style = chat::recognise_template(jinja.get<std::string>());
    ASSERT_TRUE(style.has_value()) << name;
    EXPECT_EQ(chat::template_style_name(*style), name);
  }
  std::map<std::string, tokenizer::Tokenizer> tokenizers;
  for (const char* name : {"gpt2", "bos"})
    tokenizers.emplace(name, tokenizer::Tokenizer::load((sft_reference_dir() / (std::string(name) + "_tokenizer.json")).string()));
  size_t compared = 0, must_be_clean = 0;
  for (const nlohmann::json& c : ref["cases"]) {
    SftExample example;
    size_t replies = 0;
    for (const nlohmann::json& m : c["messages"]) {
      example.messages.push_back({m["role"], m["content"], m.value("input", std::string())});
      replies += m["role"] == "assistant";
    }
    const chat::TemplateStyle style = chat::parse_template_style(c["template"].get<std::string>());
    const chat::ChatTemplate tmpl(style, "<s>", "</s>");
    const tokenizer::Tokenizer& tok = tokenizers.at(c["tokenizer"].get<std::string>());
    const std::vector<int32_t> ids = c["ids"], labels = c["labels"];
    const SftTokens got = tokenize_sft_example(example, tmpl, tok, 0);
    ASSERT_EQ(got.ids, ids) << c.dump();
    ASSERT_EQ(got.labels, labels) << c.dump();
    EXPECT_FALSE(got.truncated);

    // Segment by segment equals the whole text's encoding wherever no reply begins or ends in
    // whitespace: ChatML (special-token boundaries) and one-turn Alpaca with byte-level BPE.
    std::vector<int32_t> pieces;
    std::string whole;
    for (const SftSegment& s : sft_segments(example, tmpl)) {
      const auto encoded = tok.encode(s.text, false);
      pieces.insert(pieces.end(), encoded.begin(), encoded.end());
      whole += s.text;
    }
    EXPECT_EQ(whole, c["text"].get<std::string>());
    EXPECT_EQ(pieces == tok.encode(whole, false), c["clean"].get<bool>()) << c.dump();
    if (c["trimmed"].get<bool>() &&
        (style == chat::TemplateStyle::chatml || (style == chat::TemplateStyle::alpaca && replies == 1))) {
      EXPECT_TRUE(c["clean"].get<bool>()) << c.dump();
      ++must_be_clean;
    }
    // Truncation from the right keeps a prefix of ids and labels.
    const int64_t keep = int64_t(ids.size()) / 2;
    const SftTokens cut = tokenize_sft_example(example, tmpl, tok, keep);
    EXPECT_TRUE(cut.truncated);
    EXPECT_EQ(cut.ids, std::vector<int32_t>(ids.begin(), ids.begin() + keep));
    EXPECT_EQ(cut.labels, std::vector<int32_t>(labels.begin(), labels.begin() + keep));
    ++compared;
  }
  EXPECT_GT(compared, 100u);
  EXPECT_GT(must_be_clean, 10u);
}

#ifdef KOTOBA_CLI_PATH
struct CliRun {
  int code = -1;
  std::string out, err;
};

CliRun kotoba_cli(const fs::path& dir, const std::string& args) {
  const fs::path out = dir / "stdout", err = dir / "stderr";
  const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' " + args + " >'" +
                          out.string() + "' 2>'" + err.string() + "' </dev/null";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

TEST_F(InstructData, CliConvertAndStats) {
  const std::string qa = write("qa.jsonl", "{\"question\":\"Where?\",\"context\":\"Tokyo is in Japan.\",\"answer\":\"Japan\"}\n"
                                           "{\"question\":\"Who?\",\"answer\":\"Me\"}\n");
  const std::string out = (dir / "out.json").string();
  CliRun r = kotoba_cli(dir, "data convert '" + qa + "' '" + out + "' --to alpaca-json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(slurp(out), "[\n  {\"instruction\":\"Where?\",\"input\":\"Tokyo is in Japan.\",\"output\":\"Japan\"},\n"
                        "  {\"instruction\":\"Who?\",\"input\":\"\",\"output\":\"Me\"}\n]\n");
  // --map: a differently named QA file into Alpaca JSONL.
  const std::string odd = write("odd.jsonl", "{\"q\":\"Why?\",\"a\":\"Because\"}\n");
  const std::string mapped = (dir / "mapped.jsonl").string();
  r = kotoba_cli(dir, "data convert '" + odd + "' '" + mapped + "' --to alpaca-jsonl --map q=question,a=answer");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(slurp(mapped), "{\"instruction\":\"Why?\",\"input\":\"\",\"output\":\"Because\"}\n");

  // Failures: non-zero exit, a message naming the record or line, no OUT file.
  const std::string chat = write("chat.jsonl",
      R"({"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"},{"role":"user","content":"v"},{"role":"assistant","content":"b"}]})"
      "\n");
  const std::string refused = (dir / "refused.json").string();
  r = kotoba_cli(dir, "data convert '" + chat + "' '" + refused + "' --to alpaca-json");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("example 1 cannot be written as alpaca-json"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(refused));
  const std::string broken = write("broken.jsonl", "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\":\"a\"}\n");
  r = kotoba_cli(dir, "data convert '" + broken + "' '" + refused + "' --to chat");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("broken.jsonl:2: field 'output' is missing"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(refused));
  // An OUT that exists already is left as it was by a failed convert.
  write("kept.json", "old contents\n");
  r = kotoba_cli(dir, "data convert '" + broken + "' '" + (dir / "kept.json").string() + "' --to chat");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(slurp(dir / "kept.json"), "old contents\n");
  r = kotoba_cli(dir, "data convert '" + qa + "' '" + refused + "' --to yaml");
  EXPECT_NE(r.code, 0);
  EXPECT_FALSE(fs::exists(refused));
  for (const auto& entry : fs::directory_iterator(dir))  // no temporary file left behind
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();

  // stats: counts, and with a tokenizer the token lengths, histogram and truncation.
  std::string corpus;
  for (int i = 0; i < 300; ++i) corpus += "where is tokyo japan who me because why the answer " + std::to_string(i) + "\n";
  write("corpus.txt", corpus);
  const std::string tok = (dir / "tok.json").string();
  r = kotoba_cli(dir, "tokenizer train --input '" + (dir / "corpus.txt").string() + "' --vocab-size 300 --out '" + tok +
                          "' --quiet");
  ASSERT_EQ(r.code, 0) << r.err;
  r = kotoba_cli(dir, "data stats '" + qa + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("examples    2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("turns       4"), std::string::npos) << r.out;
  r = kotoba_cli(dir, "data stats '" + qa + "' --tokenizer '" + tok + "' --template chatml --max-length 12");
  ASSERT_EQ(r.code, 0) << r.err;
  // The lengths the library computes, so the printed numbers can be checked.
  const tokenizer::Tokenizer t = tokenizer::Tokenizer::load(tok);
  const chat::ChatTemplate chatml(chat::TemplateStyle::chatml, "", "<|endoftext|>");
  const auto examples = read_sft_dataset(qa);
  std::vector<size_t> lengths;
  size_t truncated = 0;
  for (const auto& e : examples) {
    lengths.push_back(tokenize_sft_example(e, chatml, t, 0).ids.size());
    truncated += lengths.back() > 12;
  }
  std::sort(lengths.begin(), lengths.end());
  EXPECT_NE(r.out.find("min " + std::to_string(lengths[0]) + " "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("max " + std::to_string(lengths[1]) + " "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("template    chatml"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("#"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(std::to_string(truncated) + " of 2 examples truncated"), std::string::npos) << r.out;
  r = kotoba_cli(dir, "data stats '" + qa + "' --max-length 12");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--tokenizer"), std::string::npos) << r.err;
  r = kotoba_cli(dir, "data frobnicate");
  EXPECT_NE(r.code, 0);
}
#endif

}  // namespace
