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

}  // namespace kotoba::train
