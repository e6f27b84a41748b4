// Corpus readers for `prepare` and the tokenizer: plain-text files and JSONL {"text": ...}, with
// UTF-8 checked up front so a bad byte is reported by file and offset, not deep in tokenising.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/utf8.h"

namespace kotoba::data {

// Documents are what `prepare` separates with the EOS token and splits train/validation by.
//   JSONL (name ends in .jsonl): one document per line, its "text" field; blank lines are skipped.
//   Plain text: the whole file is one document, or with split_lines each non-blank line is one.
// Empty documents are skipped; a corpus with no documents at all is an error naming the inputs.
struct CorpusOptions {
  bool split_lines = false;          // plain text only: one document per non-blank line
  // Plain text only: when set, a line equal to this string (e.g. "%" in fortune files) ends a
  // document; takes precedence over split_lines.
  std::string separator_line = {};
  std::string text_field = "text";   // JSONL field holding the document
};

struct Document {
  std::string text;
  int32_t file = 0;   // index into Corpus::files
  int64_t line = 0;   // 1-based line it came from; 0 when the document is a whole file
};

struct Corpus {
  std::vector<std::string> files;
  std::vector<Document> documents;
  int64_t text_bytes = 0;  // sum of the documents' sizes
};

bool is_jsonl_path(const std::string& path);

// Reads one file's documents (file index `file_index` in the result). Errors name file:line and
// the field (JSONL), or the file and byte offset (invalid UTF-8).
std::vector<Document> read_documents(const std::string& path, const CorpusOptions& options, int32_t file_index = 0);
Corpus read_corpus(const std::vector<std::string>& paths, const CorpusOptions& options = {});

// find_invalid_utf8 (core/utf8.h) finds a bad byte; check_utf8 turns one into an error.
// Throws kotoba::Error "<where>: invalid UTF-8 at byte offset N" (offset counted from base_offset).
void check_utf8(std::string_view text, const std::string& where, uint64_t base_offset = 0);

}  // namespace kotoba::data
