// Validating JSON key access shared by the readers of HF's configuration files.
#include "io/json_util.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace kotoba::json_util {

std::string type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

const json* find_key(const json& obj, const std::string& key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

int64_t require_int(const json& obj, const std::string& key, const std::string& file) {
  const json* v = find_key(obj, key);
  KOTOBA_CHECK(v, file, ": key '", key, "' is missing (an integer is required)");
  KOTOBA_CHECK(v->is_number_integer() || v->is_number_unsigned(), file, ": key '", key, "' must be an integer, got ",
               type_name(*v), " ", v->dump());
  KOTOBA_CHECK(!v->is_number_unsigned() || v->get<uint64_t>() <= uint64_t(INT64_MAX), file, ": key '", key,
               "' is too large: ", v->dump());
  return v->get<int64_t>();
}

double require_number(const json& obj, const std::string& key, const std::string& file) {
  const json* v = find_key(obj, key);
  KOTOBA_CHECK(v, file, ": key '", key, "' is missing (a number is required)");
  KOTOBA_CHECK(v->is_number(), file, ": key '", key, "' must be a number, got ", type_name(*v), " ", v->dump());
  return v->get<double>();
}

std::string require_string(const json& obj, const std::string& key, const std::string& file) {
  const json* v = find_key(obj, key);
  KOTOBA_CHECK(v, file, ": key '", key, "' is missing (a string is required)");
  KOTOBA_CHECK(v->is_string(), file, ": key '", key, "' must be a string, got ", type_name(*v), " ", v->dump());
  return v->get<std::string>();
}

int64_t optional_int(const json& obj, const std::string& key, const std::string& file, int64_t fallback) {
  const json* v = find_key(obj, key);
  return v && !v->is_null() ? require_int(obj, key, file) : fallback;
}

uint64_t optional_u64(const json& obj, const std::string& key, const std::string& file, uint64_t fallback) {
  const json* v = find_key(obj, key);
  if (!v || v->is_null()) return fallback;
  KOTOBA_CHECK(v->is_number_unsigned() || (v->is_number_integer() && v->get<int64_t>() >= 0), file, ": key '", key,
               "' must be a non-negative integer, got ", type_name(*v), " ", v->dump());
  return v->get<uint64_t>();
}

double optional_number(const json& obj, const std::string& key, const std::string& file, double fallback) {
  const json* v = find_key(obj, key);
  return v && !v->is_null() ? require_number(obj, key, file) : fallback;
}

bool optional_bool(const json& obj, const std::string& key, const std::string& file, bool fallback) {
  const json* v = find_key(obj, key);
  if (!v || v->is_null()) return fallback;
  KOTOBA_CHECK(v->is_boolean(), file, ": key '", key, "' must be a boolean, got ", type_name(*v), " ", v->dump());
  return v->get<bool>();
}

std::string optional_string(const json& obj, const std::string& key, const std::string& file,
                            const std::string& fallback) {
  const json* v = find_key(obj, key);
  return v && !v->is_null() ? require_string(obj, key, file) : fallback;
}

std::optional<int64_t> optional_id(const json& obj, const std::string& key, const std::string& file) {
  const json* v = find_key(obj, key);
  if (!v || v->is_null()) return std::nullopt;
  if (v->is_array()) {
    if (v->empty()) return std::nullopt;
    KOTOBA_CHECK((*v)[0].is_number_integer(), file, ": key '", key, "' must be an integer or a list of integers");
    return (*v)[0].get<int64_t>();
  }
  return require_int(obj, key, file);
}

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOTOBA_CHECK(in, path, ": cannot open (", std::strerror(errno), ")");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    json j = json::parse(buffer.str());
    KOTOBA_CHECK(j.is_object(), path, ": expected a JSON object at the top level");
    return j;
  } catch (const json::parse_error& e) {
    throw Error(detail::concat(path, ": invalid JSON: ", e.what()));
  }
}

double short_float(float value) {
  char text[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, double(value));
    if (std::strtof(text, nullptr) == value) break;
  }
  return std::strtod(text, nullptr);
}

}  // namespace kotoba::json_util
