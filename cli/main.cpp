// The `kotoba` command line: dispatches to the registered subcommands. Errors from the library
// become one line on stderr and exit code 1; usage errors exit 2.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string_view>

#include "cli/command.h"
#include "core/parallel.h"
#include "nn/module.h"

namespace kotoba::cli {

std::map<std::string, Command>& commands() {
  static std::map<std::string, Command> table;
  return table;
}

bool wants_help(const Args& args) {
  return std::any_of(args.begin(), args.end(), [](const std::string& a) { return a == "--help" || a == "-h"; });
}

Flags Flags::parse(const Args& args, const std::string& command, const std::vector<std::string>& valued,
                   const std::vector<std::string>& switches, size_t max_positional) {
  Flags f;
  f.command_ = command;
  auto known = [](const std::vector<std::string>& list, const std::string& n) {
    return std::find(list.begin(), list.end(), n) != list.end();
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      KOTOBA_CHECK(f.positional_.size() < max_positional, command, ": unexpected argument '", a, "' (see kotoba ",
                   command, " --help)");
      f.positional_.push_back(a);
      continue;
    }
    std::string_view body(a);
    body.remove_prefix(2);
    size_t eq = body.find('=');
    bool inline_value = eq != std::string_view::npos;
    std::string name(body.substr(0, eq)), value;
    if (inline_value) value = std::string(body.substr(eq + 1));
    if (known(switches, name)) {
      KOTOBA_CHECK(!inline_value, command, ": flag '--", name, "' takes no value");
      f.values_[name] = std::string(1, '1');
    } else if (known(valued, name)) {
      if (!inline_value) {
        KOTOBA_CHECK(i + 1 < args.size(), command, ": flag '--", name, "' needs a value");
        value = args[++i];
      }
      f.values_[name] = value;
      f.all_values_[name].push_back(value);
    } else {
      throw Error(detail::concat(command, ": unknown flag '--", name, "' (see kotoba ", command, " --help)"));
    }
  }
  return f;
}

Device device_flag(const Flags& f, const std::string& command) {
  return parse_device(f.str("device", "cpu"), command + ": flag '--device'");
}

void move_model(nn::Module& model, Device device, const std::string& command) {
  if (device == Device::cpu) return;
  try {
    model.to(device);
  } catch (const Error& e) {
    throw Error(detail::concat(command, ": --device ", device_name(device), ": ", e.what()));
  }
}

std::vector<std::string> Flags::all(const std::string& name) const {
  auto it = all_values_.find(name);
  return it == all_values_.end() ? std::vector<std::string>{} : it->second;
}

std::string Flags::str(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

double Flags::num(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  try {
    size_t used = 0;
    double v = std::stod(it->second, &used);
    if (used == it->second.size()) return v;
  } catch (const std::exception&) {
  }
  throw Error(detail::concat(command_, ": flag '--", name, "' expects a number, got '", it->second, "'"));
}

int64_t Flags::integer(const std::string& name, int64_t fallback) const {
  double v = num(name, double(fallback));
  KOTOBA_CHECK(v == double(int64_t(v)), command_, ": flag '--", name, "' expects an integer, got '", str(name), "'");
  return int64_t(v);
}

}  // namespace kotoba::cli

namespace {
int usage(std::ostream& out) {
  out << "kotoba: train, tune, align, quantize and run language models\n\n"
         "usage: kotoba <command> [flags]   (kotoba <command> --help for its flags)\n\ncommands:\n";
  for (auto& [name, c] : kotoba::cli::commands()) {
    out << "  " << name << std::string(name.size() < 12 ? 12 - name.size() : 1, ' ') << c.summary << "\n";
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  kotoba::bound_openmp_spinning(argv);
  kotoba::cli::Args args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") return usage(std::cout);
  auto& table = kotoba::cli::commands();
  auto it = table.find(args[0]);
  if (it == table.end()) {
    std::cerr << "kotoba: unknown command '" << args[0] << "'\n\n";
    usage(std::cerr);
    return 2;
  }
  try {
    return it->second.run(kotoba::cli::Args(args.begin() + 1, args.end()));
  } catch (const std::exception& e) {
    std::cerr << "kotoba " << args[0] << ": error: " << e.what() << "\n";
    return 1;
  }
}
