// `kotoba info FILE.gguf`: what a GGUF file holds (architecture, tensors, types, parameter count,
// bytes and a metadata summary). Kept apart from cmd_info.cpp, which describes model directories.
#pragma once
#include <string>

namespace kotoba::cli {

// True when `path` is a regular file that starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

// Prints the description to stdout (one JSON object with `json`); returns the exit code.
int print_gguf_info(const std::string& path, bool json);

}  // namespace kotoba::cli
