// The record layer under the data-set readers: see data/json_records.h.
#include "data/json_records.h"

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/utf8.h"
#include "io/json_util.h"

namespace kotoba::data {

using nlohmann::json;

namespace {

size_t line_of(std::string_view text, size_t offset) {
  size_t line = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) line += text[i] == '\n';
  return line;
}

// The line on which each element of the top-level array starts: a small scanner over the JSON
// text (strings and escapes skipped) because nlohmann's DOM keeps no positions.
std::vector<size_t> array_element_lines(std::string_view text) {
  std::vector<size_t> lines;
  size_t line = 1;
  int depth = 0;
  bool in_string = false, escaped = false, expect_element = false;
  for (char c : text) {
    if (c == '\n') ++line;
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (depth == 1 && expect_element && c != ']') {
      lines.push_back(line);
      expect_element = false;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      ++depth;
      if (depth == 1) expect_element = true;
    } else if (c == ']' || c == '}') --depth;
    else if (c == ',' && depth == 1) expect_element = true;
  }
  return lines;
}

}  // namespace

std::string read_data_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, path, ": cannot open the data set file");
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // a UTF-8 byte order mark some editors write
  const size_t bad = find_invalid_utf8(text);
  KOTOBA_CHECK(bad == std::string::npos, path, ":", line_of(text, bad), ": invalid UTF-8 (byte offset ", bad,
               "); data sets must be UTF-8 text");
  KOTOBA_CHECK(text.find_first_not_of(" \t\r\n") != std::string::npos, path,
               ": holds no example (the file is empty)");
  return text;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string keys_of(const json& record) {
  if (!record.is_object()) return "not an object";
  std::string keys;
  for (const auto& item : record.items()) keys += (keys.empty() ? "" : ", ") + item.key();
  return keys.empty() ? "none" : keys;
}

std::vector<RawRecord> read_json_records(const std::string& path, const std::string& text) {
  std::vector<RawRecord> records;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (text[first] == '[') {
    json array;
    try {
      array = json::parse(text);
    } catch (const json::parse_error& e) {
      throw Error(detail::concat(path, ":", line_of(text, e.byte == 0 ? 0 : e.byte - 1), ": not valid JSON (", e.what(),
                                 ")"));
    }
    const std::vector<size_t> lines = array_element_lines(text);
    for (size_t i = 0; i < array.size(); ++i)
      records.push_back({std::move(array[i]), detail::concat(path, ":", i < lines.size() ? lines[i] : 0, ": record ",
                                                             i + 1)});
    KOTOBA_CHECK(!records.empty(), path, ": holds no example (the JSON array is empty)");
    return records;
  }
  std::istringstream in(text);
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = detail::concat(path, ":", number);
    try {
      records.push_back({json::parse(line), where});
    } catch (const json::parse_error& e) {
      throw Error(detail::concat(where, ": not valid JSON (", e.what(), "); JSONL holds one JSON object per line"));
    }
  }
  return records;
}

std::string string_field(const json& record, const std::string& key, const std::string& where, bool required) {
  auto it = record.find(key);
  if (it == record.end() || (!required && it->is_null())) {
    KOTOBA_CHECK(!required, where, ": field '", key, "' is missing (expected a string)");
    return "";
  }
  KOTOBA_CHECK(it->is_string(), where, ": field '", key, "' is ", json_util::type_name(*it), " (expected a string)");
  return it->get<std::string>();
}

std::vector<chat::Message> message_list(const json& value, const std::string& field, const std::string& where) {
  const char* expected = " (expected an array of {\"role\", \"content\"} objects)";
  KOTOBA_CHECK(value.is_array(), where, ": field '", field, "' is ", json_util::type_name(value), expected);
  std::vector<chat::Message> messages;
  for (size_t i = 0; i < value.size(); ++i) {
    const json& m = value[i];
    const std::string at = detail::concat(where, ": ", field, "[", i, "]");
    KOTOBA_CHECK(m.is_object(), at, " is ", json_util::type_name(m), " (expected an object with role and content)");
    chat::Message message{string_field(m, "role", at, true), string_field(m, "content", at, true), ""};
    KOTOBA_CHECK(message.role == "system" || message.role == "user" || message.role == "assistant", at,
                 ": field 'role' is '", message.role, "' (expected system, user or assistant)");
    KOTOBA_CHECK(message.role != "system" || i == 0, at, ": a system message may only come first");
    const bool first_turn = i == 0 || (i == 1 && messages[0].role == "system");
    KOTOBA_CHECK(message.role != "assistant" || !first_turn, at,
                 ": field 'role' is 'assistant' before any user message (expected the user to speak first)");
    messages.push_back(std::move(message));
  }
  return messages;
}

}  // namespace kotoba::data
