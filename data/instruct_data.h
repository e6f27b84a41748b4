// Instruction-tuning data sets in every common shape (Alpaca JSON/JSONL, chat messages, QA,
// summarisation, plain text) read into one form, written back in any shape that holds it, and
// tokenised for SFT with a loss mask that covers exactly the assistant's replies.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"

namespace kotoba::tokenizer {
class Tokenizer;
}

namespace kotoba::data {

// The shapes on disk. Keys per record:
//   alpaca         instruction (string), input (string, optional), output (string);
//                  a .json file holding one array, or JSONL
//   chat           messages: [{role: system|user|assistant, content}, ...]   (JSONL)
//   qa             question, answer, context (optional)                      (JSONL)
//   summarization  document, summary                                         (JSONL)
//   text           a .txt file; documents separated by blank lines
enum class DatasetShape { alpaca, chat, qa, summarization, text };

const char* dataset_shape_name(DatasetShape shape);
// "alpaca", "chat", "qa", "summarization" or "text"; anything else is an Error listing them.
DatasetShape parse_dataset_shape(std::string_view name);

// One conversation: an optional system message first, then user/assistant turns, the last one the
// assistant's. How the shapes map onto it:
//   alpaca         user {content = instruction, input = input}, assistant {output}
//   qa             user {content = question, input = context}, assistant {answer}
//   summarization  user {content = kSummarizeInstruction, input = document}, assistant {summary}
//   text           plain_text = true and one assistant message holding the document: it is not
//                  rendered through a chat template and every one of its tokens is a target.
// A user message's `input` is rendered by the alpaca template as its "### Input:" section; the
// other templates see it appended to the content after a blank line (see template_messages).
struct SftExample {
  std::vector<chat::Message> messages;
  bool plain_text = false;
};

// The user turn of a summarisation record (the document follows as the message's input).
inline constexpr const char* kSummarizeInstruction = "Summarize the following document.";

// The shape a record's keys point to (messages → chat, instruction → alpaca, question → qa,
// document → summarization), or false when none of those keys is present.
bool detect_record_shape(const nlohmann::json& record, DatasetShape& shape);

// Column renames applied to every record before it is read ("question=instruction,answer=output");
// an Error for a malformed list or a key renamed twice.
std::map<std::string, std::string> parse_column_map(std::string_view spec);

// Reads a data set. `format` is "auto" (by extension: .txt is text, .json holding an array is
// Alpaca JSON, anything else JSONL whose first record's keys give the shape) or a shape name.
// Every error names the file, the line (and for JSON arrays the record index) and the field, and
// says what was expected: malformed JSON, missing or mistyped fields, unknown or misplaced roles,
// a record of another shape than the first, invalid UTF-8, an empty file.
std::vector<SftExample> read_sft_dataset(const std::string& path, const std::string& format = "auto",
                                         const std::map<std::string, std::string>& column_map = {});
// The shape read_sft_dataset would read `path` as (reads the file).
DatasetShape detect_dataset_shape(const std::string& path, const std::string& format = "auto",
                                  const std::map<std::string, std::string>& column_map = {});

// Output shapes of write_sft_dataset: "alpaca-json", "alpaca-jsonl", "chat", "qa", "summarization".
enum class OutputShape { alpaca_json, alpaca_jsonl, chat, qa, summarization };
OutputShape parse_output_shape(std::string_view name);

// Writes the examples in `shape`, atomically: one record per line (Alpaca JSON: an array with one
// record per line), keys in the shape's order, non-ASCII text as UTF-8. An example that the shape
// cannot hold without losing part of it (a multi-turn or system-prompted chat as Alpaca/QA, a chat
// whose user turn is not the summarisation instruction as summarization, any plain-text document)
// is an Error naming its record number, and nothing is written. Writing `chat` puts a user
// message's input after its content and a blank line, as the non-Alpaca templates render it.
void write_sft_dataset(const std::string& path, const std::vector<SftExample>& examples, OutputShape shape);

// The messages as `style` should see them: for every style but alpaca, a user message's input is
// appended to its content after a blank line ("content\n\ninput") and cleared.
std::vector<chat::Message> template_messages(const std::vector<chat::Message>& messages, chat::TemplateStyle style);

// The rendered conversation cut at the turn boundaries: each assistant reply is one response
// segment that runs from the end of the generation prompt before it (render of the messages
// before it with add_generation_prompt) to the end of the render that includes it, so it holds the
// template's end-of-turn text (<|im_end|>\n for ChatML, " </s>" for Llama-2, "\n\n" for Alpaca,
// "\n" for plain). Everything else (system, user, role headers) is prompt. The texts concatenated
// are the whole rendered conversation. A plain-text example is one response segment.
struct SftSegment {
  std::string text;
  bool response = false;
};
std::vector<SftSegment> sft_segments(const SftExample& example, const chat::ChatTemplate& chat_template);

struct SftTokens {
  std::vector<int32_t> ids, labels;  // labels: -100 where no loss is taken, else the id
  bool truncated = false;            // the example was longer than max_length and was cut
};
inline constexpr int32_t kIgnoreLabel = -100;

// Tokenises an example for SFT. The ids are the concatenation of the segments' encodings (each
// encoded without special tokens), after the tokenizer's leading special tokens (a BOS, as
// encode(text, true) adds it) unless the rendered text already starts with them (Llama-2 renders
// its own <s>). That equals the encoding of the whole rendered text whenever every boundary is a
// boundary of the tokenizer's pre-tokens too — always at special tokens (ChatML, Llama-2) and
// where text meets a role header; when it is not (a reply that starts with whitespace after the
// header's "\n" can merge across it), the whole text's encoding is used instead and each boundary
// is placed at the token count of the encoding of the text before it, so training always sees
// the ids inference produces. Labels are ids on response segments, -100 elsewhere (and on the
// BOS). Plain-text examples: BOS, the document, then EOS when the tokenizer has one, all targets
// but the BOS. Truncation keeps the first max_length tokens (max_length <= 0: no limit).
SftTokens tokenize_sft_example(const SftExample& example, const chat::ChatTemplate& chat_template,
                               const tokenizer::Tokenizer& tokenizer, int64_t max_length);

}  // namespace kotoba::data
