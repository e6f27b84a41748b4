// PromptTemplate parsing/rendering and the few-shot / chain-of-thought builders.
#include "chat/prompt_template.h"

#include <algorithm>

#include "core/error.h"

namespace kotoba::chat {

namespace {
bool valid_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}
std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "{" : ", {") + n + "}";
  return out;
}
}  // namespace

PromptTemplate::PromptTemplate(std::string text) {
  std::string literal;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if ((c == '{' || c == '}') && i + 1 < text.size() && text[i + 1] == c) {
      literal += c;
      ++i;
      continue;
    }
    KOTOBA_CHECK(c != '}', "prompt template: unmatched '}' at byte ", i, " (write '}}' for a literal brace)");
    if (c != '{') {
      literal += c;
      continue;
    }
    const size_t close = text.find('}', i + 1);
    KOTOBA_CHECK(close != std::string::npos, "prompt template: unmatched '{' at byte ", i,
                 " (write '{{' for a literal brace)");
    std::string name = text.substr(i + 1, close - i - 1);
    KOTOBA_CHECK(valid_name(name), "prompt template: '{", name, "}' at byte ", i,
                 " is not a variable name (letters, digits and _, not starting with a digit)");
    if (!literal.empty()) pieces_.push_back(Piece{false, std::move(literal)});
    literal.clear();
    if (std::find(variables_.begin(), variables_.end(), name) == variables_.end()) variables_.push_back(name);
    pieces_.push_back(Piece{true, std::move(name)});
    i = close;
  }
  if (!literal.empty()) pieces_.push_back(Piece{false, std::move(literal)});
}

std::string PromptTemplate::render(const std::map<std::string, std::string>& values) const {
  std::vector<std::string> missing, unknown;
  for (const std::string& v : variables_)
    if (!values.count(v)) missing.push_back(v);
  for (const auto& [name, value] : values)
    if (std::find(variables_.begin(), variables_.end(), name) == variables_.end()) unknown.push_back(name);
  KOTOBA_CHECK(missing.empty(), "prompt template: no value for ", join(missing));
  KOTOBA_CHECK(unknown.empty(), "prompt template: the template has no variable ", join(unknown),
               variables_.empty() ? " (it has none)" : " (it has " + join(variables_) + ")");
  std::string out;
  for (const Piece& p : pieces_) out += p.is_variable ? values.at(p.text) : p.text;
  return out;
}

std::string few_shot_prompt(const std::vector<FewShotExample>& examples, const std::string& question,
                            const FewShotStyle& style) {
  std::string out;
  if (!style.instruction.empty()) out += style.instruction + "\n\n";
  for (size_t i = 0; i < examples.size(); ++i) {
    const FewShotExample& e = examples[i];
    out += style.input_prefix + e.input + "\n" + style.output_prefix;
    if (style.chain_of_thought) {
      KOTOBA_CHECK(!e.reasoning.empty(), "few-shot: example ", i + 1,
                   " has no reasoning, which the chain-of-thought style shows before each answer");
      out += e.reasoning + " So the answer is " + e.output + ".";
    } else {
      out += e.output;
    }
    out += style.separator;
  }
  out += style.input_prefix + question + "\n" + style.output_prefix;
  if (style.chain_of_thought)
    out += style.cot_cue;
  else if (!out.empty() && out.back() == ' ')
    out.pop_back();  // "A:" — the model writes the space with its first token
  return out;
}

}  // namespace kotoba::chat
