// Model directories: config.json, weights, tokenizer and generation config in and out, written
// atomically; the per-architecture maps are io/hf_config.cpp's.
#include "io/model_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/json_util.h"
#include "io/quantized_model.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace kotoba {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace json_util;

namespace {

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_text_file(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    KOTOBA_CHECK(out, path, ": cannot create (", std::strerror(errno), ")");
    out << text;
    out.flush();
    KOTOBA_CHECK(out, path, ": write failed (", std::strerror(errno), ")");
  }
  fsync_path(path, false);
}


}  // namespace

// ---- generation_config.json ----

json generation_config_to_json(const GenerationConfig& g) {
  json j{{"do_sample", g.do_sample},       {"temperature", short_float(g.temperature)},
         {"top_k", g.top_k},               {"top_p", short_float(g.top_p)},
         {"repetition_penalty", short_float(g.repetition_penalty)}, {"max_new_tokens", g.max_new_tokens},
         {"_from_model_config", false}};
  if (g.bos_token_id) j["bos_token_id"] = *g.bos_token_id;
  if (g.eos_token_id) j["eos_token_id"] = *g.eos_token_id;
  if (g.pad_token_id) j["pad_token_id"] = *g.pad_token_id;
  return j;
}

GenerationConfig generation_config_from_json(const json& j, const std::string& file) {
  GenerationConfig g;
  g.bos_token_id = optional_id(j, "bos_token_id", file);
  g.eos_token_id = optional_id(j, "eos_token_id", file);
  g.pad_token_id = optional_id(j, "pad_token_id", file);
  g.do_sample = optional_bool(j, "do_sample", file, g.do_sample);
  g.temperature = float(optional_number(j, "temperature", file, g.temperature));
  g.top_k = optional_int(j, "top_k", file, g.top_k);
  g.top_p = float(optional_number(j, "top_p", file, g.top_p));
  g.repetition_penalty = float(optional_number(j, "repetition_penalty", file, g.repetition_penalty));
  g.max_new_tokens = optional_int(j, "max_new_tokens", file, g.max_new_tokens);
  return g;
}

// ---- tokenizer.json ----

int64_t tokenizer_json_vocab_size(const std::string& path) {
  json j = read_json_file(path);
  int64_t max_id = -1;
  auto model = j.find("model");
  KOTOBA_CHECK(model != j.end() && model->is_object(), path, ": key 'model' is missing or not an object");
  auto vocab = model->find("vocab");
  KOTOBA_CHECK(vocab != model->end() && vocab->is_object(), path, ": key 'model.vocab' is missing or not an object");
  for (auto& [token, id] : vocab->items()) {
    KOTOBA_CHECK(id.is_number_integer(), path, ": model.vocab['", token, "'] must be an integer id");
    max_id = std::max(max_id, id.get<int64_t>());
  }
  if (auto added = j.find("added_tokens"); added != j.end() && added->is_array()) {
    for (auto& t : *added) {
      KOTOBA_CHECK(t.is_object() && t.contains("id") && t["id"].is_number_integer(), path,
                   ": every entry of 'added_tokens' needs an integer 'id'");
      max_id = std::max(max_id, t["id"].get<int64_t>());
    }
  }
  return max_id + 1;
}

// ---- the directory ----

void write_directory_atomically(const std::string& dir, const std::function<void(const std::string& tmp)>& fill) {
  fs::path target = fs::absolute(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  KOTOBA_CHECK(!fs::exists(target) || fs::is_directory(target), target.string(), ": exists and is not a directory");
  fs::create_directories(target.parent_path());
  const fs::path tmp =
      target.parent_path() / ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    fill(tmp.string());
    fsync_path(tmp.string(), true);
    replace_directory(tmp.string(), target.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

void replace_directory(const std::string& from, const std::string& to) {
  fs::path parent = fs::path(to).parent_path().empty() ? fs::path(".") : fs::path(to).parent_path();
  std::error_code ec;
  if (!fs::exists(to)) {
    fs::rename(from, to, ec);
    KOTOBA_CHECK(!ec, to, ": cannot move the new directory into place (", ec.message(), ")");
  } else if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(from, ec);  // now holds the old contents
  } else {
    // No atomic exchange on this filesystem: move the old one aside, the new one in, then drop the old.
    std::string aside = to + ".old";
    fs::remove_all(aside, ec);
    fs::rename(to, aside, ec);
    KOTOBA_CHECK(!ec, to, ": cannot move the old directory aside (", ec.message(), ")");
    fs::rename(from, to, ec);
    KOTOBA_CHECK(!ec, to, ": cannot move the new directory into place (", ec.message(), "); the previous one is in ",
                 aside);
    fs::remove_all(aside, ec);
  }
  fsync_path(parent.string(), true);
}

namespace {

void write_model_files(const std::string& tmp, const nn::CausalLM& model, const GenerationConfig& generation) {
  save_safetensors((fs::path(tmp) / "model.safetensors").string(), model_to_hf_tensors(model), {{"format", "pt"}});
  json config = model_config_to_json(model);
  json quantization_config;
  const std::map<std::string, Tensor> quantized = quantized_layer_tensors(model, quantization_config);
  if (!quantized.empty()) {
    save_safetensors((fs::path(tmp) / "quantized.safetensors").string(), quantized, {{"format", "kotoba"}});
    config["quantization_config"] = quantization_config;
  }
  if (generation.bos_token_id) config["bos_token_id"] = *generation.bos_token_id;
  if (generation.eos_token_id) config["eos_token_id"] = *generation.eos_token_id;
  write_text_file((fs::path(tmp) / "config.json").string(), config.dump(2) + "\n");
  write_text_file((fs::path(tmp) / "generation_config.json").string(),
                  generation_config_to_json(generation).dump(2) + "\n");
}

template <typename WriteTokenizer>
void save_dir_with(const std::string& dir, const nn::CausalLM& model, const GenerationConfig& generation,
                   WriteTokenizer write_tokenizer) {
  KOTOBA_CHECK(!dir.empty(), "save_model_dir: the directory path is empty");
  write_directory_atomically(dir, [&](const std::string& tmp) {
    std::string tok_path = (fs::path(tmp) / "tokenizer.json").string();
    write_tokenizer(tok_path);
    int64_t tokens = tokenizer_json_vocab_size(tok_path);
    KOTOBA_CHECK(tokens <= model.vocab_size(), "tokenizer.json has ", tokens,
                 " tokens but the model's vocab_size (config.json) is only ", model.vocab_size());
    write_model_files(tmp, model, generation);
  });
}

}  // namespace

void save_model_dir(const std::string& dir, const nn::CausalLM& model, const std::string& tokenizer_json_path,
                    const GenerationConfig& generation) {
  KOTOBA_CHECK(fs::is_regular_file(tokenizer_json_path), "save_model_dir: tokenizer file '", tokenizer_json_path,
               "' does not exist");
  save_dir_with(dir, model, generation, [&](const std::string& dest) {
    fs::copy_file(tokenizer_json_path, dest, fs::copy_options::overwrite_existing);
    fsync_path(dest, false);
    // The tokenizer's own settings beside it (special tokens, chat template) travel with it.
    for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
      const fs::path from = fs::path(tokenizer_json_path).parent_path() / name, to = fs::path(dest).parent_path() / name;
      if (!fs::is_regular_file(from)) continue;
      fs::copy_file(from, to, fs::copy_options::overwrite_existing);
      fsync_path(to.string(), false);
    }
  });
}

void save_model_dir(const std::string& dir, const nn::CausalLM& model, const tokenizer::Tokenizer& tokenizer,
                    const GenerationConfig& generation) {
  save_dir_with(dir, model, generation, [&](const std::string& dest) { tokenizer.save(dest); });
}

LoadedModel load_model_dir(const std::string& dir) {
  KOTOBA_CHECK(fs::is_directory(dir), dir, ": not a model directory (expected config.json, model.safetensors, "
               "tokenizer.json)");
  fs::path d(dir);
  std::string config_path = (d / "config.json").string(), weights_path = (d / "model.safetensors").string(),
              index_path = (d / "model.safetensors.index.json").string(), tok_path = (d / "tokenizer.json").string(),
              gen_path = (d / "generation_config.json").string();
  KOTOBA_CHECK(fs::is_regular_file(config_path), config_path, ": missing from the model directory");
  const std::string spm_path = (d / "tokenizer.model").string();
  KOTOBA_CHECK(fs::is_regular_file(tok_path) || fs::is_regular_file(spm_path), tok_path,
               ": missing from the model directory (nor is there a SentencePiece tokenizer.model)");
  KOTOBA_CHECK(fs::is_regular_file(weights_path) || fs::is_regular_file(index_path), weights_path,
               ": missing from the model directory (nor is there a sharded model.safetensors.index.json)");
  const std::string weights_name = fs::is_regular_file(weights_path) ? weights_path : index_path;
  LoadedModel out;
  out.dir = dir;
  out.tokenizer_path = fs::is_regular_file(tok_path) ? tok_path : spm_path;
  out.config = read_json_file(config_path);
  {
    nn::SkipInitialisation skip;  // load_hf_tensors below fills every parameter or fails
    out.model = build_model(out.config, config_path);
  }
  const int64_t tokens = fs::is_regular_file(tok_path) ? tokenizer_json_vocab_size(tok_path)
                                                       : tokenizer::Tokenizer::load(spm_path).vocab_size();
  KOTOBA_CHECK(tokens <= out.model->vocab_size(), out.tokenizer_path, " has ", tokens, " tokens but ", config_path,
               " vocab_size is ", out.model->vocab_size());
  if (fs::is_regular_file(gen_path)) out.generation = generation_config_from_json(read_json_file(gen_path), gen_path);
  if (out.config.contains("quantization_config"))
    load_quantized_layers(*out.model, out.config["quantization_config"], (d / "quantized.safetensors").string(),
                          config_path);
  load_hf_tensors(*out.model, load_model_weights(dir), weights_name);
  return out;
}

}  // namespace kotoba
