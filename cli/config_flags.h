// A training config's field table (train/config_fields.h) as command-line flags: --max-length
// for max_length, and the "fields:" part of the command's --help.
#pragma once
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "cli/command.h"
#include "train/config_fields.h"

namespace kotoba::cli {

inline std::string config_flag_name(const char* field) {
  std::string name = field;
  for (char& ch : name)
    if (ch == '_') ch = '-';
  return name;
}

template <typename C>
std::vector<std::string> config_flag_names(std::span<const train::ConfigField<C>> fields) {
  std::vector<std::string> names;
  for (const auto& f : fields) names.push_back(config_flag_name(f.name));
  return names;
}

// Sets every field whose flag was given.
template <typename C>
void apply_config_flags(C& config, const Flags& flags, std::span<const train::ConfigField<C>> fields) {
  for (const auto& field : fields) {
    const std::string name = config_flag_name(field.name);
    if (!flags.has(name)) continue;
    std::visit(
        [&](auto member) {
          using T = std::remove_reference_t<decltype(config.*member)>;
          if constexpr (std::is_same_v<T, int64_t>)
            config.*member = flags.integer(name, 0);
          else if constexpr (std::is_same_v<T, double>)
            config.*member = flags.num(name, 0);
          else
            config.*member = flags.str(name);
        },
        field.member);
  }
}

// "  --name   help (default value)" for each field.
template <typename C>
void print_config_flags(std::span<const train::ConfigField<C>> fields) {
  const nlohmann::json d = train::config_to_json(C{}, fields);
  for (const auto& field : fields) {
    const std::string flag = "--" + config_flag_name(field.name);
    const std::string value = d[field.name].is_string() ? d[field.name].template get<std::string>() : d[field.name].dump();
    std::printf("  %-20s %s (default %s)\n", flag.c_str(), field.help, value.empty() ? "none" : value.c_str());
  }
}

}  // namespace kotoba::cli
