// `kotoba prompt`: renders a prompt template with named variables, optionally after few-shot
// examples and in the chain-of-thought style, and prints it (for scripts and for `generate`).
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "chat/prompt_template.h"
#include "cli/command.h"

using namespace kotoba;
using kotoba::cli::Flags;

namespace {

// One {"input", "output"[, "reasoning"]} object per line; errors name the file and line.
std::vector<chat::FewShotExample> read_examples(const std::string& path) {
  std::ifstream in(path);
  KOTOBA_CHECK(in, "prompt: cannot open --few-shot '", path, "'");
  std::vector<chat::FewShotExample> examples;
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = detail::concat("prompt: --few-shot '", path, "' line ", number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(detail::concat(where, " is not JSON: ", e.what()));
    }
    KOTOBA_CHECK(j.is_object() && j.contains("input") && j["input"].is_string() && j.contains("output") &&
                     j["output"].is_string() && (!j.contains("reasoning") || j["reasoning"].is_string()),
                 where, " must be an object with string \"input\" and \"output\" (and optionally \"reasoning\")");
    examples.push_back({j["input"], j["output"], j.value("reasoning", std::string())});
  }
  KOTOBA_CHECK(!examples.empty(), "prompt: --few-shot '", path, "' holds no example");
  return examples;
}

int cmd_prompt(const cli::Args& args) {
  if (cli::wants_help(args)) {
    std::cout << "kotoba prompt (--template TEXT | --template-file FILE) [--var NAME=VALUE ...]\n"
                 "              [--few-shot examples.jsonl] [--instruction TEXT] [--cot]\n"
                 "  Prints the template with each {NAME} replaced by its --var value ({{ and }} are literal\n"
                 "  braces); a variable without a value, or a value for no variable, is an error.\n"
                 "  --few-shot puts the examples ({\"input\", \"output\"[, \"reasoning\"]} per line) before it as\n"
                 "  \"Q: input\\nA: output\" and the rendered template becomes the last question, \"Q: ...\\nA:\".\n"
                 "  --cot (chain of thought): examples show their reasoning before the answer and the answer is\n"
                 "  cued with \"Let's think step by step.\" (without --few-shot: appended to the prompt).\n";
    return 0;
  }
  Flags f = Flags::parse(args, "prompt", {"template", "template-file", "var", "few-shot", "instruction"}, {"cot"});
  KOTOBA_CHECK(f.has("template") != f.has("template-file"), "prompt: give --template TEXT or --template-file FILE");
  std::string text = f.str("template");
  if (f.has("template-file")) {
    std::ifstream in(f.str("template-file"), std::ios::binary);
    KOTOBA_CHECK(in, "prompt: cannot open --template-file '", f.str("template-file"), "'");
    std::stringstream s;
    s << in.rdbuf();
    text = s.str();
  }
  std::map<std::string, std::string> values;
  for (const std::string& v : f.all("var")) {
    const size_t eq = v.find('=');
    KOTOBA_CHECK(eq != std::string::npos && eq > 0, "prompt: --var '", v, "' must be NAME=VALUE");
    KOTOBA_CHECK(values.emplace(v.substr(0, eq), v.substr(eq + 1)).second, "prompt: --var ", v.substr(0, eq),
                 " is given twice");
  }
  const std::string rendered = chat::PromptTemplate(text).render(values);
  chat::FewShotStyle style{.instruction = f.str("instruction"), .chain_of_thought = f.has("cot")};
  if (f.has("few-shot")) {
    std::cout << chat::few_shot_prompt(read_examples(f.str("few-shot")), rendered, style) << "\n";
  } else {
    KOTOBA_CHECK(!f.has("instruction"), "prompt: --instruction goes with --few-shot");
    std::cout << rendered << (f.has("cot") ? "\n" + style.cot_cue : "") << "\n";
  }
  return 0;
}

}  // namespace

KOTOBA_COMMAND("prompt", "render a prompt template with variables, few-shot examples, chain of thought", cmd_prompt);
