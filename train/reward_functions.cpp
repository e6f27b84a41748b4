// Rule and checker-program rewards (train/reward_functions.h).
#include "train/reward_functions.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"

namespace kotoba::train {

using nlohmann::json;

namespace {
// Sampled replies need not be valid UTF-8 (byte-level tokens): ASCII whitespace is trimmed,
// nothing is decoded.
std::string trim_ascii_space(const std::string& s) {
  const char* space = " \t\n\r\f\v";
  const size_t first = s.find_first_not_of(space);
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(space) - first + 1);
}
}  // namespace

RewardFunction rule_reward(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string kind = colon == std::string::npos ? spec : spec.substr(0, colon);
  const std::string arg = colon == std::string::npos ? std::string() : spec.substr(colon + 1);
  auto bad = [&](const std::string& why) {
    return Error("--reward '" + spec + "': " + why +
                 " (known forms: ends-with:TEXT, contains:TEXT, regex:PATTERN; or --reward-cmd CMD)");
  };
  if (colon == std::string::npos || arg.empty()) throw bad("expected KIND:ARGUMENT");
  if (kind == "ends-with")
    return [arg](const std::vector<RewardInput>& in) {
      std::vector<double> out;
      for (const auto& r : in) {
        const std::string t = trim_ascii_space(r.completion);
        out.push_back(t.size() >= arg.size() && t.compare(t.size() - arg.size(), arg.size(), arg) == 0 ? 1.0 : 0.0);
      }
      return out;
    };
  if (kind == "contains")
    return [arg](const std::vector<RewardInput>& in) {
      std::vector<double> out;
      for (const auto& r : in) out.push_back(r.completion.find(arg) != std::string::npos ? 1.0 : 0.0);
      return out;
    };
  if (kind == "regex") {
    std::shared_ptr<std::regex> re;
    try {
      re = std::make_shared<std::regex>(arg, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw bad(std::string("the pattern does not parse: ") + e.what());
    }
    return [re](const std::vector<RewardInput>& in) {
      std::vector<double> out;
      for (const auto& r : in) out.push_back(std::regex_search(r.completion, *re) ? 1.0 : 0.0);
      return out;
    };
  }
  throw bad("unknown kind '" + kind + "'");
}

RewardFunction command_reward(const std::string& command) {
  KOTOBA_CHECK(!command.empty(), "--reward-cmd: the command is empty");
  return [command](const std::vector<RewardInput>& in) {
    // The completions go through a temporary file (no deadlock on a large batch through pipes).
    char path[] = "/tmp/kotoba_reward_XXXXXX";
    const int fd = ::mkstemp(path);
    KOTOBA_CHECK(fd >= 0, "--reward-cmd: cannot create a temporary file for the completions");
    ::close(fd);
    struct Remove {
      const char* p;
      ~Remove() { std::remove(p); }
    } remove_it{path};
    {
      std::ofstream f(path);
      for (const auto& r : in) {
        json prompt = json::array();
        if (r.prompt)
          for (const auto& m : *r.prompt) prompt.push_back({{"role", m.role}, {"content", m.content}});
        f << json{{"prompt", prompt}, {"completion", r.completion}}.dump(-1, ' ', false, json::error_handler_t::replace)
          << "\n";
      }
      KOTOBA_CHECK(f, "--reward-cmd: cannot write the completions to ", path);
    }
    const std::string shell = "(" + command + ") < " + path;
    FILE* pipe = ::popen(shell.c_str(), "r");
    KOTOBA_CHECK(pipe, "--reward-cmd '", command, "': cannot start it");
    std::string output;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, n);
    const int status = ::pclose(pipe);
    KOTOBA_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "--reward-cmd '", command,
                 "' failed (exit status ", WIFEXITED(status) ? WEXITSTATUS(status) : -1, ")");
    std::vector<double> out;
    std::stringstream ss(output);
    std::string line;
    int64_t line_no = 0;
    while (std::getline(ss, line)) {
      ++line_no;
      const std::string t = trim_ascii_space(line);
      if (t.empty()) continue;
      char* end = nullptr;
      const double v = std::strtod(t.c_str(), &end);
      KOTOBA_CHECK(end && *end == '\0' && std::isfinite(v), "--reward-cmd '", command, "': output line ", line_no,
                   " is '", t, "' (expected one finite number per completion)");
      out.push_back(v);
    }
    KOTOBA_CHECK(out.size() == in.size(), "--reward-cmd '", command, "' printed ", out.size(), " scores for ",
                 in.size(), " completions (expected one number a line, one per input line)");
    return out;
  };
}

}  // namespace kotoba::train
