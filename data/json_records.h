// The record layer under the data-set readers (instruction data, preference data): a UTF-8 file
// read whole, split into JSON records (JSONL, or one JSON array) that each remember the line they
// came from, and typed field access whose errors name the file, the line and the field.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"

namespace kotoba::data {

struct RawRecord {
  nlohmann::json value;
  std::string where;  // "FILE:LINE" or, inside a JSON array, "FILE:LINE: record N"
};

// The file's bytes without a UTF-8 byte-order mark; an Error for an unreadable, empty or non-UTF-8 file.
std::string read_data_file(const std::string& path);
// The records of a JSONL text, or of a text holding one JSON array; an Error for malformed JSON
// (with the line) or an empty array.
std::vector<RawRecord> read_json_records(const std::string& path, const std::string& text);

// "instruction, input, output" (the record's keys), "none", or "not an object".
std::string keys_of(const nlohmann::json& record);
bool ends_with(const std::string& s, std::string_view suffix);

// The string at `key`; missing (or null when not required) gives "" unless `required`.
std::string string_field(const nlohmann::json& record, const std::string& key, const std::string& where,
                         bool required);
// A conversation: an array of {role: system|user|assistant, content} objects, a system message
// only first, the user speaking before the assistant. `field` names it in errors.
std::vector<chat::Message> message_list(const nlohmann::json& value, const std::string& field,
                                        const std::string& where);

}  // namespace kotoba::data
