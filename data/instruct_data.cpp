// Reading and writing instruction data sets (Alpaca, chat, QA, summarisation, plain text) with
// errors that point at the file, line and field, so a bad record is found without a debugger.
#include "data/instruct_data.h"

#include <algorithm>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "data/json_records.h"
#include "io/json_util.h"

namespace kotoba::data {

namespace {

using nlohmann::json;

const char kKnownShapes[] =
    "known shapes: alpaca (instruction, input, output), chat (messages), qa (question, answer, context), "
    "summarization (document, summary), text (.txt files)";

// Documents separated by blank (whitespace-only) lines; the lines of one document keep their
// newlines between them.
std::vector<SftExample> read_text_documents(const std::string& text) {
  std::vector<SftExample> examples;
  std::istringstream in(text);
  std::string line, document;
  auto flush = [&] {
    if (!document.empty()) examples.push_back({{chat::Message{"assistant", document, ""}}, true});
    document.clear();
  };
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      flush();
      continue;
    }
    document += (document.empty() ? "" : "\n") + line;
  }
  flush();
  return examples;
}

void apply_column_map(json& record, const std::map<std::string, std::string>& column_map, const std::string& where) {
  if (column_map.empty() || !record.is_object()) return;
  json renamed = json::object();
  for (auto& item : record.items()) {
    auto it = column_map.find(item.key());
    const std::string& key = it == column_map.end() ? item.key() : it->second;
    KOTOBA_CHECK(!renamed.contains(key), where, ": --map gives two fields the name '", key, "'");
    renamed[key] = std::move(item.value());
  }
  record = std::move(renamed);
}

SftExample chat_example(const json& record, const std::string& where) {
  auto it = record.find("messages");
  KOTOBA_CHECK(it != record.end(), where,
               ": field 'messages' is missing (expected an array of {\"role\", \"content\"} objects)");
  SftExample example{message_list(*it, "messages", where), false};
  KOTOBA_CHECK(!example.messages.empty(), where,
               ": field 'messages' is empty (expected a user message and an assistant reply)");
  const bool has_assistant = std::any_of(example.messages.begin(), example.messages.end(),
                                         [](const chat::Message& m) { return m.role == "assistant"; });
  KOTOBA_CHECK(has_assistant, where, ": field 'messages' has no assistant message (expected at least one reply)");
  KOTOBA_CHECK(example.messages.back().role == "assistant", where, ": messages[", example.messages.size() - 1,
               "] is the last and has role '", example.messages.back().role,
               "' (expected the conversation to end with an assistant reply)");
  return example;
}

SftExample record_example(const json& record, DatasetShape shape, const std::string& where) {
  KOTOBA_CHECK(record.is_object(), where, ": the record is ", json_util::type_name(record), " (expected an object)");
  DatasetShape seen = shape;
  if (detect_record_shape(record, seen))
    KOTOBA_CHECK(seen == shape, where, ": the record's keys (", keys_of(record), ") are those of the ",
                 dataset_shape_name(seen), " shape, expected ", dataset_shape_name(shape),
                 " (the shape of the first record, or --format)");
  auto pair = [](chat::Message user, std::string reply) {
    return SftExample{{std::move(user), chat::Message{"assistant", std::move(reply), ""}}, false};
  };
  switch (shape) {
    case DatasetShape::alpaca: {
      std::string instruction = string_field(record, "instruction", where, true);
      std::string input = string_field(record, "input", where, false);
      return pair({"user", std::move(instruction), std::move(input)}, string_field(record, "output", where, true));
    }
    case DatasetShape::qa: {
      std::string question = string_field(record, "question", where, true);
      std::string context = string_field(record, "context", where, false);
      return pair({"user", std::move(question), std::move(context)}, string_field(record, "answer", where, true));
    }
    case DatasetShape::summarization: {
      std::string document = string_field(record, "document", where, true);
      return pair({"user", kSummarizeInstruction, std::move(document)}, string_field(record, "summary", where, true));
    }
    case DatasetShape::chat: return chat_example(record, where);
    case DatasetShape::text: break;
  }
  throw Error(detail::concat(where, ": a JSON record cannot be read as plain text"));
}

// The records of a JSON file with the column map applied, and the shape they are read as.
struct JsonDataset {
  std::vector<RawRecord> records;
  DatasetShape shape;
};

bool is_text_file(const std::string& path, const std::string& format) {
  return format == "text" || (format == "auto" && ends_with(path, ".txt"));
}

JsonDataset read_json_dataset(const std::string& path, const std::string& text, const std::string& format,
                              const std::map<std::string, std::string>& column_map) {
  JsonDataset dataset{read_json_records(path, text), DatasetShape::alpaca};
  KOTOBA_CHECK(!dataset.records.empty(), path, ": holds no example");
  for (RawRecord& r : dataset.records) apply_column_map(r.value, column_map, r.where);
  if (format != "auto") {
    dataset.shape = parse_dataset_shape(format);
    return dataset;
  }
  const RawRecord& first = dataset.records.front();
  KOTOBA_CHECK(first.value.is_object(), first.where, ": the record is ", json_util::type_name(first.value),
               " (expected an object)");
  KOTOBA_CHECK(detect_record_shape(first.value, dataset.shape), first.where,
               ": cannot tell the data set's shape from the first record's keys (", keys_of(first.value), "); ",
               kKnownShapes, ". Rename columns with --map SRC=DST or name the shape with --format");
  return dataset;
}

}  // namespace

const char* dataset_shape_name(DatasetShape shape) {
  switch (shape) {
    case DatasetShape::alpaca: return "alpaca";
    case DatasetShape::chat: return "chat";
    case DatasetShape::qa: return "qa";
    case DatasetShape::summarization: return "summarization";
    case DatasetShape::text: return "text";
  }
  return "?";
}

DatasetShape parse_dataset_shape(std::string_view name) {
  for (DatasetShape s : {DatasetShape::alpaca, DatasetShape::chat, DatasetShape::qa, DatasetShape::summarization,
                         DatasetShape::text})
    if (name == dataset_shape_name(s)) return s;
  throw Error(detail::concat("unknown data set format '", name,
                             "': expected auto, alpaca, chat, qa, summarization or text"));
}

bool detect_record_shape(const json& record, DatasetShape& shape) {
  if (!record.is_object()) return false;
  const std::pair<const char*, DatasetShape> marks[] = {{"messages", DatasetShape::chat},
                                                        {"instruction", DatasetShape::alpaca},
                                                        {"question", DatasetShape::qa},
                                                        {"document", DatasetShape::summarization}};
  for (const auto& [key, s] : marks)
    if (record.contains(key)) {
      shape = s;
      return true;
    }
  return false;
}

std::map<std::string, std::string> parse_column_map(std::string_view spec) {
  std::map<std::string, std::string> map;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string_view item = spec.substr(pos, comma - pos);
    const size_t eq = item.find('=');
    KOTOBA_CHECK(eq != std::string_view::npos && eq > 0 && eq + 1 < item.size(), "--map: '", item,
                 "' is not SRC=DST (expected a comma-separated list such as question=instruction,answer=output)");
    KOTOBA_CHECK(map.emplace(std::string(item.substr(0, eq)), std::string(item.substr(eq + 1))).second,
                 "--map: the column '", item.substr(0, eq), "' is renamed twice");
    pos = comma + 1;
  }
  return map;
}

DatasetShape detect_dataset_shape(const std::string& path, const std::string& format,
                                  const std::map<std::string, std::string>& column_map) {
  if (format != "auto") {
    const DatasetShape shape = parse_dataset_shape(format);
    if (shape == DatasetShape::text) return shape;
  }
  if (is_text_file(path, format)) return DatasetShape::text;
  return read_json_dataset(path, read_data_file(path), format, column_map).shape;
}

std::vector<SftExample> read_sft_dataset(const std::string& path, const std::string& format,
                                         const std::map<std::string, std::string>& column_map) {
  if (format != "auto") parse_dataset_shape(format);  // an unknown name fails before the file is read
  const std::string text = read_data_file(path);
  if (is_text_file(path, format)) {
    KOTOBA_CHECK(column_map.empty(), path, ": --map renames JSON fields; a text file has none");
    return read_text_documents(text);
  }
  JsonDataset dataset = read_json_dataset(path, text, format, column_map);
  std::vector<SftExample> examples;
  examples.reserve(dataset.records.size());
  for (const RawRecord& r : dataset.records) examples.push_back(record_example(r.value, dataset.shape, r.where));
  return examples;
}

OutputShape parse_output_shape(std::string_view name) {
  if (name == "alpaca-json") return OutputShape::alpaca_json;
  if (name == "alpaca-jsonl") return OutputShape::alpaca_jsonl;
  if (name == "chat") return OutputShape::chat;
  if (name == "qa") return OutputShape::qa;
  if (name == "summarization") return OutputShape::summarization;
  throw Error(detail::concat("unknown output shape '", name,
                             "': expected alpaca-json, alpaca-jsonl, chat, qa or summarization"));
}

std::vector<chat::Message> template_messages(const std::vector<chat::Message>& messages, chat::TemplateStyle style) {
  std::vector<chat::Message> out = messages;
  if (style == chat::TemplateStyle::alpaca) return out;
  for (chat::Message& m : out) {
    if (m.input.empty()) continue;
    m.content += "\n\n" + m.input;
    m.input.clear();
  }
  return out;
}

void write_sft_dataset(const std::string& path, const std::vector<SftExample>& examples, OutputShape shape) {
  using ordered = nlohmann::ordered_json;
  const char* shape_name = shape == OutputShape::alpaca_json    ? "alpaca-json"
                           : shape == OutputShape::alpaca_jsonl ? "alpaca-jsonl"
                           : shape == OutputShape::chat         ? "chat"
                           : shape == OutputShape::qa           ? "qa"
                                                                : "summarization";
  std::vector<std::string> lines;
  lines.reserve(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    const SftExample& e = examples[i];
    const std::string where = detail::concat("example ", i + 1, " cannot be written as ", shape_name, ": ");
    KOTOBA_CHECK(!e.plain_text, where, "it is a plain-text document with no instruction or reply");
    ordered record;
    if (shape == OutputShape::chat) {
      ordered messages = ordered::array();
      for (const chat::Message& m : template_messages(e.messages, chat::TemplateStyle::chatml))
        messages.push_back(ordered{{"role", m.role}, {"content", m.content}});
      record["messages"] = std::move(messages);
    } else {
      KOTOBA_CHECK(e.messages.empty() || e.messages[0].role != "system", where,
                   "it has a system message, which that shape has no field for");
      KOTOBA_CHECK(e.messages.size() == 2 && e.messages[0].role == "user" && e.messages[1].role == "assistant", where,
                   "it has ", e.messages.size(), " messages; that shape holds one user message and one reply");
      const chat::Message &user = e.messages[0], &reply = e.messages[1];
      if (shape == OutputShape::qa) {
        record["question"] = user.content;
        if (!user.input.empty()) record["context"] = user.input;
        record["answer"] = reply.content;
      } else if (shape == OutputShape::summarization) {
        KOTOBA_CHECK(user.content == kSummarizeInstruction && !user.input.empty(), where,
                     "its user turn is not a summarisation request (instruction '", kSummarizeInstruction,
                     "' with the document as input)");
        record["document"] = user.input;
        record["summary"] = reply.content;
      } else {
        record["instruction"] = user.content;
        record["input"] = user.input;
        record["output"] = reply.content;
      }
    }
    lines.push_back(record.dump(-1, ' ', false, ordered::error_handler_t::strict));
  }
  std::string out;
  if (shape == OutputShape::alpaca_json) {
    out = "[";
    for (size_t i = 0; i < lines.size(); ++i) out += (i ? ",\n  " : "\n  ") + lines[i];
    out += lines.empty() ? "]\n" : "\n]\n";
  } else {
    for (const std::string& l : lines) out += l + "\n";
  }
  write_file_atomically(path, out);
}

}  // namespace kotoba::data
