// Prompt tooling: templates with named {variables} ({{ and }} write literal braces) that refuse
// missing and unknown variables, a few-shot builder from example pairs, and a chain-of-thought style.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace kotoba::chat {

class PromptTemplate {
 public:
  // Parses `text`; an unmatched brace or a name that is not [A-Za-z_][A-Za-z0-9_]* is an Error
  // giving its byte offset.
  explicit PromptTemplate(std::string text);
  // The variable names, in order of first use.
  const std::vector<std::string>& variables() const { return variables_; }
  // An Error names every missing variable, or every given one the template does not use.
  std::string render(const std::map<std::string, std::string>& values) const;

 private:
  struct Piece {
    bool is_variable;
    std::string text;  // literal text, or the variable's name
  };
  std::vector<Piece> pieces_;
  std::vector<std::string> variables_;
};

struct FewShotExample {
  std::string input;
  std::string output;
  std::string reasoning;  // chain of thought: the steps leading to `output` (may be empty)
};

struct FewShotStyle {
  std::string instruction = "";           // written first, followed by a blank line, when not empty
  std::string input_prefix = "Q: ";
  std::string output_prefix = "A: ";
  std::string separator = "\n\n";         // between examples
  bool chain_of_thought = false;          // answers show their reasoning; the final answer is cued to
  std::string cot_cue = "Let's think step by step.";  // reason before answering
};

// instruction, then "Q: input\nA: output" per example and finally "Q: question\nA:" (with chain of
// thought, an example answers "A: <reasoning> So the answer is <output>." and the question's answer
// starts "A: Let's think step by step."). Errors when chain of thought lacks an example's reasoning.
std::string few_shot_prompt(const std::vector<FewShotExample>& examples, const std::string& question,
                            const FewShotStyle& style = {});

}  // namespace kotoba::chat
