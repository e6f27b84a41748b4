// Plain-text and JSONL corpus readers. Files are read whole: `prepare` needs every document
// before it can choose the validation split, and a whole read is the fastest way to get them.
#include "data/text_corpus.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace kotoba::data {

namespace {

std::string read_file(const std::string& path) {
  KOTOBA_CHECK(std::filesystem::is_regular_file(path), "input '", path, "' does not exist or is not a file");
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, "cannot open input '", path, "'");
  in.seekg(0, std::ios::end);
  std::string bytes(size_t(in.tellg()), '\0');
  in.seekg(0);
  in.read(bytes.data(), std::streamsize(bytes.size()));
  KOTOBA_CHECK(in || bytes.empty(), "cannot read input '", path, "'");
  return bytes;
}

bool is_blank(std::string_view s) { return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos; }

const char* json_type(const nlohmann::json& j) { return j.type_name(); }

}  // namespace

bool is_jsonl_path(const std::string& path) {
  return path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
}

void check_utf8(std::string_view text, const std::string& where, uint64_t base_offset) {
  size_t bad = find_invalid_utf8(text);
  KOTOBA_CHECK(bad == std::string_view::npos, where, ": invalid UTF-8 at byte offset ", base_offset + bad,
               " (byte 0x", std::hex, int((unsigned char)text[bad]), std::dec, ")");
}

std::vector<Document> read_documents(const std::string& path, const CorpusOptions& options, int32_t file_index) {
  std::string bytes = read_file(path);
  check_utf8(bytes, "input '" + path + "'");
  std::vector<Document> docs;
  const bool jsonl = is_jsonl_path(path);
  if (!jsonl && !options.separator_line.empty()) {
    size_t pos = 0, start = 0;
    int64_t line_no = 0, start_line = 1;
    auto flush = [&](size_t end) {
      std::string_view doc(bytes.data() + start, end - start);
      if (!is_blank(doc)) docs.push_back(Document{std::string(doc), file_index, start_line});
    };
    while (pos < bytes.size()) {
      size_t end = bytes.find('\n', pos);
      if (end == std::string::npos) end = bytes.size();
      std::string_view line(bytes.data() + pos, end - pos);
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line == options.separator_line) {
        flush(pos);
        start = end + 1 < bytes.size() ? end + 1 : bytes.size();
        start_line = line_no + 1;
      }
      pos = end + 1;
    }
    if (start < bytes.size()) flush(bytes.size());
    return docs;
  }
  if (!jsonl && !options.split_lines) {
    if (!is_blank(bytes)) docs.push_back(Document{std::move(bytes), file_index, 0});
    return docs;
  }
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < bytes.size()) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string_view line(bytes.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (is_blank(line)) continue;
    if (!jsonl) {
      docs.push_back(Document{std::string(line), file_index, line_no});
      continue;
    }
    const std::string where = path + ":" + std::to_string(line_no);
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw Error(detail::concat(where, ": malformed JSON (", e.what(), "); each line must be an object with a \"",
                                 options.text_field, "\" string"));
    }
    KOTOBA_CHECK(record.is_object(), where, ": expected a JSON object with a \"", options.text_field,
                 "\" string, got ", json_type(record));
    auto field = record.find(options.text_field);
    KOTOBA_CHECK(field != record.end(), where, ": missing field \"", options.text_field, "\"");
    KOTOBA_CHECK(field->is_string(), where, ": field \"", options.text_field, "\" must be a string, got ",
                 json_type(*field));
    std::string text = field->get<std::string>();
    if (!text.empty()) docs.push_back(Document{std::move(text), file_index, line_no});
  }
  return docs;
}

Corpus read_corpus(const std::vector<std::string>& paths, const CorpusOptions& options) {
  KOTOBA_CHECK(!paths.empty(), "no input files given");
  Corpus corpus;
  corpus.files = paths;
  for (size_t i = 0; i < paths.size(); ++i) {
    auto docs = read_documents(paths[i], options, int32_t(i));
    for (auto& d : docs) {
      corpus.text_bytes += int64_t(d.text.size());
      corpus.documents.push_back(std::move(d));
    }
  }
  if (corpus.documents.empty()) {
    std::string names;
    for (auto& p : paths) names += (names.empty() ? "'" : ", '") + p + "'";
    throw Error("the corpus is empty: no non-empty documents in " + names);
  }
  return corpus;
}

}  // namespace kotoba::data
