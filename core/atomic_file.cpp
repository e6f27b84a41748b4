// Atomic file replacement with POSIX calls (mkstemp, fsync, rename).
#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace kotoba {
namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace

void write_file_atomically(const std::string& path, const std::function<void(const FileSink&)>& produce) {
  std::string dir = ".";
  if (auto slash = path.rfind('/'); slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
  std::string pattern = path + ".tmp.XXXXXX";
  std::vector<char> temp_name(pattern.begin(), pattern.end());
  temp_name.push_back('\0');
  int fd = ::mkstemp(temp_name.data());
  KOTOBA_CHECK(fd >= 0, path, ": cannot create a temporary file in ", dir, ": ", errno_text());
  bool open = true;
  auto discard = [&] {
    if (open) ::close(fd);
    ::unlink(temp_name.data());
  };
  auto fail = [&](const std::string& what) {
    std::string why = errno_text();
    discard();
    throw Error(detail::concat(path, ": ", what, ": ", why));
  };
  try {
    produce([&](const void* data, size_t n) {
      const char* p = static_cast<const char*>(data);
      while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fail("write failed");
        p += w;
        n -= size_t(w);
      }
    });
  } catch (...) {
    if (::access(temp_name.data(), F_OK) == 0) discard();
    throw;
  }
  // mkstemp makes the file 0600; give it the mode a plain create would have.
  mode_t mask = ::umask(0);
  ::umask(mask);
  if (::fchmod(fd, 0666 & ~mask) != 0) fail("chmod failed");
  if (::fsync(fd) != 0) fail("fsync failed");
  open = false;
  if (::close(fd) != 0) {
    std::string why = errno_text();
    ::unlink(temp_name.data());
    throw Error(detail::concat(path, ": close failed: ", why));
  }
  if (::rename(temp_name.data(), path.c_str()) != 0) {
    std::string why = errno_text();
    ::unlink(temp_name.data());
    throw Error(detail::concat(path, ": cannot rename the temporary file into place: ", why));
  }
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);  // make the rename durable
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  write_file_atomically(path, [&](const FileSink& sink) { sink(bytes.data(), bytes.size()); });
}

}  // namespace kotoba
