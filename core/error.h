// kotoba::Error, the one exception type of the project, and the check macro that builds it.
// Every message names the op, file, field or argument at fault and what was expected.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace kotoba {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace kotoba

// KOTOBA_CHECK(cond, parts...) throws kotoba::Error with the parts streamed together.
#define KOTOBA_CHECK(cond, ...)                                          \
  do {                                                                   \
    if (!(cond)) throw ::kotoba::Error(::kotoba::detail::concat(__VA_ARGS__)); \
  } while (0)
