// config.json keys and checkpoint names of HF BertForMaskedLM.
#include "io/bert_config.h"

#include <cmath>
#include <filesystem>

#include "core/atomic_file.h"
#include "io/json_util.h"
#include "io/model_dir.h"
#include "io/safetensors.h"

namespace kotoba {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace json_util;

json bert_config_to_json(const nn::BertConfig& c) {
  return json{{"architectures", {"BertForMaskedLM"}},
              {"model_type", "bert"},
              {"vocab_size", c.vocab_size},
              {"hidden_size", c.hidden_size},
              {"num_hidden_layers", c.num_hidden_layers},
              {"num_attention_heads", c.num_attention_heads},
              {"intermediate_size", c.intermediate_size},
              {"hidden_act", c.hidden_act},
              {"max_position_embeddings", c.max_position_embeddings},
              {"type_vocab_size", c.type_vocab_size},
              {"layer_norm_eps", short_float(c.layer_norm_eps)},
              {"pad_token_id", c.pad_token_id},
              {"hidden_dropout_prob", short_float(c.hidden_dropout_prob)},
              {"attention_probs_dropout_prob", short_float(c.attention_probs_dropout_prob)},
              {"initializer_range", short_float(c.initializer_range)},
              {"position_embedding_type", "absolute"},
              {"classifier_dropout", nullptr},
              {"is_decoder", false},
              {"use_cache", true},
              {"torch_dtype", "float32"},
              {"kotoba_seed", c.seed}};
}

nn::BertConfig bert_config_from_json(const json& j, const std::string& file) {
  KOTOBA_CHECK(j.is_object(), file, ": expected a JSON object");
  const std::string type = require_string(j, "model_type", file);
  KOTOBA_CHECK(type == "bert", file, ": model_type is \"", type, "\", expected \"bert\"");
  nn::BertConfig c;
  c.vocab_size = require_int(j, "vocab_size", file);
  c.hidden_size = require_int(j, "hidden_size", file);
  c.num_hidden_layers = require_int(j, "num_hidden_layers", file);
  c.num_attention_heads = require_int(j, "num_attention_heads", file);
  c.intermediate_size = require_int(j, "intermediate_size", file);
  // Absent keys take transformers' BertConfig defaults.
  c.hidden_act = optional_string(j, "hidden_act", file, "gelu");
  c.max_position_embeddings = optional_int(j, "max_position_embeddings", file, 512);
  c.type_vocab_size = optional_int(j, "type_vocab_size", file, 2);
  c.layer_norm_eps = float(optional_number(j, "layer_norm_eps", file, 1e-12));
  c.pad_token_id = optional_int(j, "pad_token_id", file, 0);
  c.hidden_dropout_prob = float(optional_number(j, "hidden_dropout_prob", file, 0.1));
  c.attention_probs_dropout_prob = float(optional_number(j, "attention_probs_dropout_prob", file, 0.1));
  c.initializer_range = float(optional_number(j, "initializer_range", file, 0.02));
  c.seed = optional_u64(j, "kotoba_seed", file, c.seed);
  KOTOBA_CHECK(c.hidden_act == "gelu", file, ": hidden_act \"", c.hidden_act,
               "\" is not supported (kotoba's BERT uses the exact erf GELU, \"gelu\")");
  const std::string positions = optional_string(j, "position_embedding_type", file, "absolute");
  KOTOBA_CHECK(positions == "absolute", file, ": position_embedding_type \"", positions,
               "\" is not supported (kotoba's BERT has absolute learned positions)");
  KOTOBA_CHECK(!optional_bool(j, "is_decoder", file, false), file,
               ": is_decoder = true is not supported (kotoba's BERT is a bidirectional encoder)");
  KOTOBA_CHECK(optional_bool(j, "tie_word_embeddings", file, true), file,
               ": tie_word_embeddings = false is not supported (the decoder shares the word embeddings)");
  try {
    nn::validate_bert_config(c);
  } catch (const Error& e) {
    throw Error(detail::concat(file, ": ", e.what()));
  }
  return c;
}

std::map<std::string, Tensor> bert_to_hf_tensors(const nn::BertForMaskedLM& model) {
  std::map<std::string, Tensor> out;
  for (auto& [name, p] : model.named_parameters()) out[name] = p.detach();
  return out;
}

void load_bert_hf_tensors(nn::BertForMaskedLM& model, const std::map<std::string, Tensor>& tensors,
                          const std::string& file) {
  auto params = model.named_parameters();
  std::map<std::string, Tensor> wanted(params.begin(), params.end());
  for (auto& [name, p] : params) {
    auto it = tensors.find(name);
    KOTOBA_CHECK(it != tensors.end(), file, ": tensor '", name, "' is missing");
    KOTOBA_CHECK(it->second.shape() == p.shape(), file, ": tensor '", name, "' has shape ",
                 shape_str(it->second.shape()), ", expected ", shape_str(p.shape()));
    Tensor dst = p.detach();
    dst.copy_from(to_f32(it->second, name));
  }
  // Tied copies some writers keep: they must hold what they are tied to, or the file describes
  // an untied model that kotoba would silently compute differently.
  const std::map<std::string, std::string> tied = {{"cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"},
                                                   {"cls.predictions.decoder.bias", "cls.predictions.bias"}};
  for (auto& [name, tensor] : tensors) {
    if (wanted.count(name)) continue;
    if (name.size() >= 12 && name.compare(name.size() - 12, 12, "position_ids") == 0) continue;  // a buffer
    auto t = tied.find(name);
    KOTOBA_CHECK(t != tied.end(), file, ": tensor '", name, "' is not part of BertForMaskedLM (kotoba builds the MLM "
                 "model only: no pooler, no next-sentence head)");
    const Tensor& target = wanted.at(t->second);
    KOTOBA_CHECK(tensor.shape() == target.shape(), file, ": tensor '", name, "' has shape ", shape_str(tensor.shape()),
                 ", expected ", shape_str(target.shape()), " (tied to ", t->second, ")");
    std::vector<float> a = to_f32(tensor, name).to_vector(), b = target.to_vector();
    KOTOBA_CHECK(a == b, file, ": tensor '", name, "' differs from '", t->second,
                 "' (an untied decoder is not supported)");
  }
}

void save_bert_dir(const std::string& dir, const nn::BertForMaskedLM& model, const std::string& tokenizer_json_path) {
  KOTOBA_CHECK(!dir.empty(), "save_bert_dir: the directory path is empty");
  KOTOBA_CHECK(fs::is_regular_file(tokenizer_json_path), "save_bert_dir: tokenizer file '", tokenizer_json_path,
               "' does not exist");
  const int64_t tokens = tokenizer_json_vocab_size(tokenizer_json_path);
  KOTOBA_CHECK(tokens <= model.vocab_size(), tokenizer_json_path, " has ", tokens,
               " tokens but the model's vocab_size is only ", model.vocab_size());
  write_directory_atomically(dir, [&](const std::string& tmp) {
    const fs::path d(tmp);
    fs::copy_file(tokenizer_json_path, d / "tokenizer.json", fs::copy_options::overwrite_existing);
    // AutoTokenizer reads the class and special tokens from here; the tokenizer.json has the rest.
    json tok_config{{"tokenizer_class", "BertTokenizerFast"}, {"unk_token", "[UNK]"},  {"sep_token", "[SEP]"},
                    {"pad_token", "[PAD]"},                    {"cls_token", "[CLS]"},  {"mask_token", "[MASK]"},
                    {"model_max_length", model.max_positions()}};
    write_file_atomically((d / "tokenizer_config.json").string(), tok_config.dump(2) + "\n");
    write_file_atomically((d / "config.json").string(), bert_config_to_json(model.config()).dump(2) + "\n");
    save_model_weights(tmp, bert_to_hf_tensors(model));
  });
}

LoadedBert load_bert_dir(const std::string& dir) {
  KOTOBA_CHECK(fs::is_directory(dir), dir, ": not a model directory (expected config.json and model.safetensors)");
  const fs::path d(dir);
  const std::string config_path = (d / "config.json").string(), tok_path = (d / "tokenizer.json").string();
  KOTOBA_CHECK(fs::is_regular_file(config_path), config_path, ": missing from the model directory");
  LoadedBert out;
  out.config = read_json_file(config_path);
  out.model = std::make_unique<nn::BertForMaskedLM>(bert_config_from_json(out.config, config_path));
  if (fs::is_regular_file(tok_path)) {
    out.tokenizer_path = tok_path;
    const int64_t tokens = tokenizer_json_vocab_size(tok_path);
    KOTOBA_CHECK(tokens <= out.model->vocab_size(), tok_path, " has ", tokens, " tokens but ", config_path,
                 " vocab_size is ", out.model->vocab_size());
  }
  const std::string weights_name = fs::is_regular_file(d / "model.safetensors")
                                       ? (d / "model.safetensors").string()
                                       : (d / "model.safetensors.index.json").string();
  load_bert_hf_tensors(*out.model, load_model_weights(dir), weights_name);
  out.model->eval();
  return out;
}

}  // namespace kotoba
