// Typed, validating access to the keys of JSON files users hand kotoba (config.json,
// generation_config.json, ...): every error names the file, the key and what was expected.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace kotoba::json_util {

using nlohmann::json;

std::string type_name(const json& value);  // "an integer", "a string", ...
const json* find_key(const json& object, const std::string& key);

int64_t require_int(const json& object, const std::string& key, const std::string& file);
double require_number(const json& object, const std::string& key, const std::string& file);
std::string require_string(const json& object, const std::string& key, const std::string& file);
// A non-negative integer up to 2^64 - 1 (seeds).
uint64_t optional_u64(const json& object, const std::string& key, const std::string& file, uint64_t fallback);
int64_t optional_int(const json& object, const std::string& key, const std::string& file, int64_t fallback);
double optional_number(const json& object, const std::string& key, const std::string& file, double fallback);
bool optional_bool(const json& object, const std::string& key, const std::string& file, bool fallback);
std::string optional_string(const json& object, const std::string& key, const std::string& file,
                            const std::string& fallback);
// An id or, as HF allows for eos_token_id, a list of ids (the first is returned); null is absent.
std::optional<int64_t> optional_id(const json& object, const std::string& key, const std::string& file);

// Reads a file holding one JSON object; errors name the file.
json read_json_file(const std::string& path);

// A float written as the short decimal it was given as (1e-5, not 9.999999747378752e-06).
double short_float(float value);

}  // namespace kotoba::json_util
