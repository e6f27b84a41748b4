// The GGUF side of `kotoba info`: reads only the header and tensor table (the file is mapped, the
// tensor data is never touched).
#include "cli/gguf_info.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "io/gguf.h"

namespace kotoba::cli {

bool is_gguf_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && magic[0] == 'G' && magic[1] == 'G' && magic[2] == 'U' && magic[3] == 'F';
}

int print_gguf_info(const std::string& path, bool as_json) {
  const GGUFFile f = gguf_load(path);
  const GGUFValue* arch_value = f.find("general.architecture");
  const std::string arch =
      arch_value && arch_value->type == GGUFValueType::string ? arch_value->text : std::string("(none)");
  int64_t params = 0, bytes = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> by_type;  // type -> (tensors, bytes)
  for (const GGUFTensorInfo& t : f.tensors) {
    params += t.numel();
    bytes += int64_t(t.nbytes);
    auto& entry = by_type[ggml_type_name(t.type)];
    entry.first += 1;
    entry.second += int64_t(t.nbytes);
  }
  if (as_json) {
    nlohmann::json j{{"file", path},          {"format", "gguf"},       {"version", f.version},
                     {"architecture", arch},  {"parameters", params},   {"tensor_bytes", bytes},
                     {"alignment", f.alignment}};
    nlohmann::json tensors = nlohmann::json::array(), metadata = nlohmann::json::object();
    for (const GGUFTensorInfo& t : f.tensors)
      tensors.push_back({{"name", t.name}, {"shape", t.shape()}, {"type", ggml_type_name(t.type)}, {"bytes", t.nbytes}});
    for (const auto& [key, value] : f.metadata) metadata[key] = value.summary();
    j["tensors"] = tensors;
    j["metadata"] = metadata;
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::printf("%s: GGUF v%u, architecture %s, %zu tensors, %lld parameters (%.2fM), %lld bytes of tensor data\n",
              path.c_str(), f.version, arch.c_str(), f.tensors.size(), (long long)params, double(params) / 1e6,
              (long long)bytes);
  for (const auto& [type, entry] : by_type)
    std::printf("  %-5s %5lld tensors %14lld bytes\n", type.c_str(), (long long)entry.first, (long long)entry.second);
  std::printf("\nmetadata (%zu keys):\n", f.metadata.size());
  for (const auto& [key, value] : f.metadata) std::printf("  %-44s %s\n", key.c_str(), value.summary().c_str());
  std::printf("\ntensors (shape outermost first):\n");
  for (const GGUFTensorInfo& t : f.tensors) {
    std::string shape = shape_str(t.shape());
    std::printf("  %-36s %-20s %-5s %12llu bytes\n", t.name.c_str(), shape.c_str(), ggml_type_name(t.type),
                (unsigned long long)t.nbytes);
  }
  return 0;
}

}  // namespace kotoba::cli
