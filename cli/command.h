// The `kotoba` subcommand registry and flag parsing shared by every command. Each command lives
// in its own cli/cmd_<name>.cpp and registers itself with a static KOTOBA_COMMAND, so adding one
// touches no other file.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace kotoba::nn {
class Module;
}

namespace kotoba::cli {

using Args = std::vector<std::string>;
using CommandFn = std::function<int(const Args&)>;

struct Command {
  std::string summary;  // one line for `kotoba --help`
  CommandFn run;
};
std::map<std::string, Command>& commands();

struct CommandRegistrar {
  CommandRegistrar(const std::string& name, const std::string& summary, CommandFn run) {
    commands()[name] = Command{summary, std::move(run)};
  }
};
#define KOTOBA_COMMAND(name, summary, fn) \
  static ::kotoba::cli::CommandRegistrar kotoba_command_registrar_##fn(name, summary, fn)

// --name value flags and --switch booleans. An unknown flag, a missing value or a malformed
// number is a kotoba::Error naming the command and the flag.
class Flags {
 public:
  // `valued` take a value; `switches` take none; `positional` counts bare arguments allowed.
  static Flags parse(const Args& args, const std::string& command, const std::vector<std::string>& valued,
                     const std::vector<std::string>& switches = {}, size_t max_positional = 0);
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name, const std::string& fallback = "") const;
  double num(const std::string& name, double fallback) const;
  int64_t integer(const std::string& name, int64_t fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }
  // Every value of a flag given more than once (--special A --special B), in order; the
  // single-value accessors above see the last one.
  std::vector<std::string> all(const std::string& name) const;

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> all_values_;
  std::vector<std::string> positional_;
};

// True when args ask for help (--help or -h anywhere).
bool wants_help(const Args& args);

// --device cpu|cuda (default cpu): where the command runs its model; any other value is an error
// naming the flag and the values allowed.
Device device_flag(const Flags& f, const std::string& command);
// Moves a loaded model to `device` (nothing for the CPU); an error says which --device failed and
// why (no GPU, a CPU-only quantised weight, ...).
void move_model(nn::Module& model, Device device, const std::string& command);

}  // namespace kotoba::cli
