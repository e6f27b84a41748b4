// Writing a file so that nothing half-written is ever seen under its name: readers find the
// old file or the whole new one, also after a crash (temporary file beside it, fsync, rename,
// fsync of the directory). Every output of kotoba that a user keeps goes through here.
#pragma once
#include <functional>
#include <string>
#include <string_view>

namespace kotoba {

// Appends bytes to the file being written.
using FileSink = std::function<void(const void* data, size_t bytes)>;

// Writes what `produce` sends to the sink into `path`, atomically. Errors (kotoba::Error) name
// the path; on any error, the temporary file is removed and `path` is left as it was.
void write_file_atomically(const std::string& path, const std::function<void(const FileSink&)>& produce);
void write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace kotoba
