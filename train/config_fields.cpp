// Reading a --config JSON file (train/config_fields.h).
#include "train/config_fields.h"

#include <fstream>
#include <sstream>

namespace kotoba::train {

nlohmann::json read_config_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, path, ": cannot open the config file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(detail::concat(path, ": invalid JSON: ", e.what()));
  }
}

void check_non_negative(const char* command, const char* key, double v) {
  KOTOBA_CHECK(v >= 0, command, " config: '", key, "' must not be negative, got ", v);
}

void check_in_unit_interval(const char* command, const char* key, double v) {
  KOTOBA_CHECK(v >= 0 && v < 1, command, " config: '", key, "' must be in [0, 1), got ", v);
}

}  // namespace kotoba::train
