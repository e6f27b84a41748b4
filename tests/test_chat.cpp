// chat/: the chat templates against transformers' apply_chat_template on fresh random
// conversations, template recognition, the Conversation's budget, and prompt templates.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "chat/chat_template.h"
#include "chat/conversation.h"
#include "chat/prompt_template.h"
#include "core/error.h"
#include "core/utf8.h"
#include "test_util.h"
#include "tokenizer/tokenizer_config.h"

using namespace kotoba;
using namespace kotoba::chat;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Runs tests/chat_template_reference.py with a fresh seed; returns its JSON (fails the test when
// the reference cannot run).
nlohmann::json chat_reference() {
  const uint64_t seed = kotoba::testing::test_seed() % 1000000007;
  const std::filesystem::path out = std::filesystem::temp_directory_path() /
                                    ("kotoba_chat_ref_" + std::to_string(::getpid()) + ".json");
  const std::string cmd = std::string("\"") + KOTOBA_PYTHON + "\" \"" + KOTOBA_SOURCE_DIR +
                          "/tests/chat_template_reference.py\" " + std::to_string(seed) + " \"" + out.string() + "\" 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  std::string output;
  char buffer[512];
  while (pipe && std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
  const int status = pipe ? ::pclose(pipe) : -1;
  if (status != 0) {
    ADD_FAILURE() << "the transformers reference failed (" << cmd << "): " << output
                  << "\nIt needs transformers 4.48.3 in " KOTOBA_PYTHON " (scripts/test installs it).";
    return {};
  }
  std::ifstream in(out);
  nlohmann::json j = nlohmann::json::parse(in);
  std::filesystem::remove(out);
  return j;
}

}  // namespace

TEST(ChatTemplate, MatchesApplyChatTemplate) {
  const nlohmann::json ref = chat_reference();
  ASSERT_TRUE(ref.contains("cases"));
  std::printf("chat reference seed %lld\n", ref["seed"].get<long long>());
  // The reference's Jinja sources, written there on their own, are recognised as their styles.
  for (const auto& [name, jinja] : ref["templates"].items()) {
    std::optional<TemplateStyle> style = recognise_template(jinja.get<std::string>());
    ASSERT_TRUE(style.has_value()) << name;
    EXPECT_EQ(template_style_name(*style), name);
  }
  size_t compared = 0, errors = 0;
  for (const nlohmann::json& c : ref["cases"]) {
    ChatTemplate t(parse_template_style(c["template"].get<std::string>()), c["bos"], c["eos"]);
    std::vector<Message> messages;
    for (const nlohmann::json& m : c["messages"])
      messages.push_back(Message{m["role"], m["content"], m.value("input", std::string())});
    if (c.contains("error")) {
      EXPECT_THROW(t.render(messages, c["add_generation_prompt"]), Error) << c.dump();
      ++errors;
      continue;
    }
    EXPECT_EQ(t.render(messages, c["add_generation_prompt"]), c["text"].get<std::string>()) << c.dump();
    ++compared;
  }
  EXPECT_GT(compared, 400u);
  std::printf("%zu renderings byte-identical, %zu errors matched\n", compared, errors);
}

TEST(ChatTemplate, RecognisesTokenizerConfigAndRefusesUnknown) {
  // The Jinja escape "\n" arrives decoded to a newline when the file wrote "\n" rather than "\\n".
  nlohmann::json config{{"bos_token", "<s>"}, {"eos_token", {{"content", "</s>"}}},
                        {"chat_template", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                                          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
                                          "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"}};
  ChatTemplate t = ChatTemplate::from_tokenizer_config(tokenizer::TokenizerConfig::parse(config.dump(), "cfg.json"),
                                                       "cfg.json");
  EXPECT_EQ(t.style(), TemplateStyle::chatml);
  EXPECT_EQ(t.eos_token(), "</s>");
  config["chat_template"] = template_jinja(TemplateStyle::llama2);
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(tokenizer::TokenizerConfig::parse(config.dump(), "c"), "c").style(),
            TemplateStyle::llama2);

  config["chat_template"] = "{{ messages }}";
  std::string e = error_of([&] {
    ChatTemplate::from_tokenizer_config(tokenizer::TokenizerConfig::parse(config.dump(), "cfg.json"), "cfg.json");
  });
  EXPECT_NE(e.find("cfg.json"), std::string::npos) << e;
  EXPECT_NE(e.find("--template"), std::string::npos) << e;
  config.erase("chat_template");
  e = error_of([&] {
    ChatTemplate::from_tokenizer_config(tokenizer::TokenizerConfig::parse(config.dump(), "cfg.json"), "cfg.json");
  });
  EXPECT_NE(e.find("no \"chat_template\""), std::string::npos) << e;
  e = error_of([] { parse_template_style("vicuna"); });
  EXPECT_NE(e.find("'vicuna'"), std::string::npos) << e;
  EXPECT_THROW(ChatTemplate(TemplateStyle::plain, "", "").render({{"user", "\xff", ""}}, true), Error);
}

TEST(Conversation, FitDropsOldestTurnsKeepsSystem) {
  ChatTemplate t(TemplateStyle::plain, "<s>", "</s>");
  auto bytes = [](const std::string& s) { return s.size(); };
  Conversation c(/*max_turns=*/3);
  c.set_system("SYS");
  for (int i = 0; i < 5; ++i) {
    c.add_user("question " + std::to_string(i));
    c.add_assistant("answer " + std::to_string(i));
  }
  EXPECT_THROW(c.add_assistant("twice"), Error);
  c.add_user("last");
  EXPECT_EQ(c.turns(), 3u);  // max_turns dropped the oldest
  EXPECT_EQ(c.messages()[1].content, "question 3");

  // A budget that holds the system message, the last turn and one more: one whole turn drops.
  const size_t full = bytes(t.render(c.messages(), true));
  const size_t one_turn = std::string("User: question 3\nAssistant: answer 3\n").size();
  EXPECT_EQ(c.fit(t, bytes, full), 0u);
  EXPECT_EQ(c.fit(t, bytes, full - 1), 1u);
  std::vector<Message> m = c.messages();
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].role, "system");
  EXPECT_EQ(m[1].content, "question 4");
  EXPECT_EQ(m[2].content, "answer 4");
  EXPECT_EQ(bytes(t.render(m, true)), full - one_turn);

  // Not even the last turn fits: an error, and the conversation is left unchanged.
  const std::string e = error_of([&] { c.fit(t, bytes, 10); });
  EXPECT_NE(e.find("last turn with the system message"), std::string::npos) << e;
  EXPECT_NE(e.find("budget of 10"), std::string::npos) << e;
  EXPECT_EQ(c.turns(), 2u);

  c.reset();
  EXPECT_EQ(c.turns(), 0u);
  ASSERT_EQ(c.messages().size(), 1u);  // the system message stays
  EXPECT_THROW(c.add(Message{"tool", "x", ""}), Error);
  EXPECT_THROW(c.add_assistant("no question"), Error);
}

TEST(PromptTemplate, VariablesEscapesAndErrors) {
  PromptTemplate p("Context: {context}\nQ: {question} {{literal}} {question}");
  EXPECT_EQ(p.variables(), (std::vector<std::string>{"context", "question"}));
  EXPECT_EQ(p.render({{"context", "C{x}"}, {"question", "why?"}}), "Context: C{x}\nQ: why? {literal} why?");
  std::string e = error_of([&] { p.render({{"context", "c"}}); });
  EXPECT_NE(e.find("no value for {question}"), std::string::npos) << e;
  e = error_of([&] { p.render({{"context", "c"}, {"question", "q"}, {"answer", "a"}}); });
  EXPECT_NE(e.find("no variable {answer}"), std::string::npos) << e;
  e = error_of([] { PromptTemplate("a {b"); });
  EXPECT_NE(e.find("unmatched '{' at byte 2"), std::string::npos) << e;
  e = error_of([] { PromptTemplate("a } b"); });
  EXPECT_NE(e.find("unmatched '}' at byte 2"), std::string::npos) << e;
  e = error_of([] { PromptTemplate("{1x}"); });
  EXPECT_NE(e.find("'{1x}'"), std::string::npos) << e;
  EXPECT_EQ(PromptTemplate("no vars").render({}), "no vars");
}

TEST(PromptTemplate, FewShotAndChainOfThought) {
  std::vector<FewShotExample> ex{{"2+2?", "4", "2 plus 2 makes 4."}, {"3*3?", "9", "3 times 3 is 9."}};
  EXPECT_EQ(few_shot_prompt(ex, "5-1?"), "Q: 2+2?\nA: 4\n\nQ: 3*3?\nA: 9\n\nQ: 5-1?\nA:");
  FewShotStyle cot{.instruction = "Solve.", .chain_of_thought = true};
  EXPECT_EQ(few_shot_prompt(ex, "5-1?", cot),
            "Solve.\n\nQ: 2+2?\nA: 2 plus 2 makes 4. So the answer is 4.\n\nQ: 3*3?\nA: 3 times 3 is 9. So the answer "
            "is 9.\n\nQ: 5-1?\nA: Let's think step by step.");
  ex[1].reasoning.clear();
  const std::string e = error_of([&] { few_shot_prompt(ex, "q", cot); });
  EXPECT_NE(e.find("example 2 has no reasoning"), std::string::npos) << e;
  EXPECT_EQ(few_shot_prompt({}, "q", cot), "Solve.\n\nQ: q\nA: Let's think step by step.");
}

#ifdef KOTOBA_CLI_PATH
#include <poll.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/model_dir.h"
#include "nn/gpt2.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

// A tiny GPT-2 with a tokenizer trained here, saved as a model directory (no tokenizer_config.json
// with a chat template: the CLI must be told --template).
fs::path tiny_model_dir() {
  static const fs::path dir = [] {
    fs::path root = fs::temp_directory_path() / ("kotoba_chat_model_" + std::to_string(::getpid()));
    fs::create_directories(root);
    std::ofstream corpus(root / "corpus.txt");
    const char* words[] = {"hello", "world", "User:", "Assistant:", "kotoba", "chat", "reply", "question"};
    for (int i = 0; i < 300; ++i) {
      for (int w = 0; w < 10; ++w) corpus << words[(i * 5 + w * 3) % 8] << (w % 4 == 3 ? "\n" : " ");
      corpus << "\n";
    }
    corpus.close();
    auto tok = tokenizer::Tokenizer::train({(root / "corpus.txt").string()},
                                           {.vocab_size = 300, .threads = 2, .show_progress = false});
    nn::GPT2 model({.vocab_size = tok.vocab_size(), .n_positions = 96, .n_embd = 32, .n_layer = 2, .n_head = 4,
                    .seed = kotoba::testing::test_seed()});
    GenerationConfig greedy;
    greedy.do_sample = false;
    save_model_dir((root / "model").string(), model, tok, greedy);
    return root / "model";
  }();
  return dir;
}

struct CliResult {
  int code;
  std::string out;
};

CliResult run_cli(const std::string& args) {
  const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + KOTOBA_CLI_PATH + "' " + args + " 2>&1 </dev/null";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  std::string out;
  char buffer[512];
  while (pipe && std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
  const int status = pipe ? ::pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Reads from the pty until `wanted` appears after `from` (or 60 s pass); returns whether it did.
bool read_until(int fd, std::string& seen, const std::string& wanted, size_t from) {
  for (int waited = 0; waited < 600; ++waited) {
    if (seen.find(wanted, from) != std::string::npos) return true;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      char buffer[4096];
      const ssize_t n = ::read(fd, buffer, sizeof buffer);
      if (n <= 0) return seen.find(wanted, from) != std::string::npos;
      seen.append(buffer, size_t(n));
    }
  }
  return false;
}

}  // namespace

TEST(ChatCli, HistoryKeepsRepliesAsShown) {
  EXPECT_EQ(replace_invalid_utf8("a\xff b\xe3\x81"), "a\xEF\xBF\xBD b\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(replace_invalid_utf8("caf\xc3\xa9"), "caf\xc3\xa9");
}

// The REPL on a terminal: start, two turns (each streams a reply and prompts again), /reset, bye.
TEST(ChatCli, ReplThroughPseudoTerminal) {
  const std::string model = tiny_model_dir().string();
  int fd = -1;
  const pid_t pid = ::forkpty(&fd, nullptr, nullptr, nullptr);
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::setenv("OMP_WAIT_POLICY", "passive", 1);
    ::execl(KOTOBA_CLI_PATH, KOTOBA_CLI_PATH, "chat", model.c_str(), "--template", "plain", "--max-new-tokens", "6",
            "--system", "Be brief.", "--threads", "1", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  std::string seen;
  ASSERT_TRUE(read_until(fd, seen, "> ", 0)) << seen;
  EXPECT_NE(seen.find("template plain"), std::string::npos) << seen;
  size_t mark = seen.size();
  ASSERT_EQ(::write(fd, "hello world\n", 12), 12);
  ASSERT_TRUE(read_until(fd, seen, "\n> ", mark)) << seen;  // the reply ends with a new prompt
  EXPECT_NE(seen.find("hello world", mark), std::string::npos) << seen;  // the terminal echoes input
  mark = seen.size();
  ASSERT_EQ(::write(fd, "kotoba chat\n", 12), 12);
  ASSERT_TRUE(read_until(fd, seen, "\n> ", mark)) << seen;
  mark = seen.size();
  ASSERT_EQ(::write(fd, "/reset\n", 7), 7);
  ASSERT_TRUE(read_until(fd, seen, "(conversation reset)", mark)) << seen;
  ASSERT_TRUE(read_until(fd, seen, "> ", seen.find("(conversation reset)", mark))) << seen;
  ASSERT_EQ(::write(fd, "bye\n", 4), 4);
  int status = 0;
  for (int i = 0; i < 600 && ::waitpid(pid, &status, WNOHANG) == 0; ++i) {
    read_until(fd, seen, "\x01", seen.size());  // drain output while waiting
  }
  ::close(fd);
  ASSERT_TRUE(WIFEXITED(status)) << seen;
  EXPECT_EQ(WEXITSTATUS(status), 0) << seen;
  EXPECT_EQ(seen.find("error"), std::string::npos) << seen;
}

// --input answers the last user turn; bad input fails naming what is wrong, before any output.
TEST(ChatCli, InputFileAndErrors) {
  const fs::path model = tiny_model_dir();
  const fs::path dir = model.parent_path();
  {
    std::ofstream good(dir / "good.jsonl");
    good << R"({"role": "system", "content": "Be brief."})" << "\n"
         << R"({"role": "user", "content": "hello"})" << "\n"
         << R"({"role": "assistant", "content": "world"})" << "\n\n"
         << R"({"role": "user", "content": "kotoba?"})" << "\n";
    std::ofstream bad(dir / "bad.jsonl");
    bad << R"({"role": "user", "content": "hello"})" << "\n" << R"({"role": "user", "content": 3})" << "\n";
    std::ofstream broken(dir / "broken.jsonl");
    broken << R"({"role": "user", "content": "hello"})" << "\n" << "{not json\n";
    std::ofstream ends(dir / "ends.jsonl");
    ends << R"({"role": "user", "content": "hello"})" << "\n" << R"({"role": "assistant", "content": "x"})" << "\n";
  }
  const std::string m = "'" + model.string() + "'";
  CliResult r = run_cli("chat " + m + " --template chatml --max-new-tokens 5 --input '" + (dir / "good.jsonl").string() +
                        "' --json --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  EXPECT_TRUE(j["reply"].is_string());
  EXPECT_TRUE(j["finish_reason"].is_string());

  r = run_cli("chat " + m + " --template chatml --input '" + (dir / "bad.jsonl").string() + "'");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("bad.jsonl' line 2"), std::string::npos) << r.out;
  r = run_cli("chat " + m + " --template chatml --input '" + (dir / "broken.jsonl").string() + "'");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("broken.jsonl' line 2 is not JSON"), std::string::npos) << r.out;
  r = run_cli("chat " + m + " --template chatml --input '" + (dir / "ends.jsonl").string() + "'");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("must end with a \"user\" message"), std::string::npos) << r.out;
  r = run_cli("chat " + m + " --template vicuna");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--template: unknown chat template 'vicuna'"), std::string::npos) << r.out;
  r = run_cli("chat " + m);  // no tokenizer_config.json chat template, no --template
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--template"), std::string::npos) << r.out;
  r = run_cli("chat '" + (dir / "no_such_model").string() + "' --template plain");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no_such_model"), std::string::npos) << r.out;
}

TEST(PromptCli, RendersTemplatesFewShotAndErrors) {
  const fs::path dir = fs::temp_directory_path() / ("kotoba_prompt_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "ex.jsonl") << R"({"input": "2+2?", "output": "4", "reasoning": "2 and 2 make 4."})" << "\n";
  CliResult r = run_cli("prompt --template 'Context: {context} Q: {question}' --var context=sky --var 'question=why blue?'");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, "Context: sky Q: why blue?\n");
  r = run_cli("prompt --template '{question}' --var question=3+3? --few-shot '" + (dir / "ex.jsonl").string() + "' --cot");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, "Q: 2+2?\nA: 2 and 2 make 4. So the answer is 4.\n\nQ: 3+3?\nA: Let's think step by step.\n");
  r = run_cli("prompt --template '{question} {context}' --var question=q");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no value for {context}"), std::string::npos) << r.out;
  r = run_cli("prompt --template '{question}' --var question=q --var extra=1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no variable {extra}"), std::string::npos) << r.out;
  fs::remove_all(dir);
}
#endif  // KOTOBA_CLI_PATH
