// Quantising a model's Linear layers, and their file form (see io/quantized_model.h).
#include "io/quantized_model.h"

#include <cmath>
#include <cstring>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"
#include "nn/layers.h"

namespace kotoba {

namespace {

using nlohmann::json;

std::vector<std::pair<std::string, nn::Linear*>> linear_layers(const nn::CausalLM& model) {
  std::vector<std::pair<std::string, nn::Linear*>> out;
  for (auto& [name, m] : model.named_modules())
    if (auto* linear = dynamic_cast<nn::Linear*>(m)) out.emplace_back(name, linear);
  return out;
}

}  // namespace

size_t model_weight_bytes(const nn::CausalLM& model) {
  size_t bytes = 0;
  for (auto& [name, p] : model.named_parameters()) bytes += p.nbytes();
  for (auto& [name, layer] : linear_layers(model))
    if (layer->quantized()) bytes += layer->quantized()->bytes();
  return bytes;
}

QuantizeReport quantize_model(nn::CausalLM& model, quant::WeightFormat format, const Int8Activations& act) {
  KOTOBA_CHECK(!act.enabled || format == quant::WeightFormat::int8,
               "quantize: int8 activations (LLM.int8) need the int8 format, not ", quant::weight_format_name(format));
  KOTOBA_CHECK(std::isfinite(act.threshold) && act.threshold >= 0,
               "quantize: the LLM.int8 outlier threshold must be a finite number >= 0 (0: no outlier columns), got ",
               act.threshold);
  QuantizeReport report;
  report.bytes_before = model_weight_bytes(model);
  for (auto& [name, layer] : linear_layers(model)) {
    if (layer->quantized()) {
      KOTOBA_CHECK(layer->quantized()->format == format, "quantize: layer '", name, "' is ",
                   quant::weight_format_name(layer->quantized()->format), " already, not ",
                   quant::weight_format_name(format));
      report.quantized.push_back(name);
      continue;
    }
    if (!quant::packable(format, layer->in_features())) {
      report.skipped.push_back(name);
      continue;
    }
    layer->quantize(format);
    report.quantized.push_back(name);
  }
  // LLM.int8() applies to every quantised layer, also those quantised before (without it, layers
  // quantised before keep their mode).
  for (auto& [name, layer] : linear_layers(model)) {
    const quant::PackedWeight* w = layer->quantized();
    if (!act.enabled || !w || (w->int8_activations && w->outlier_threshold == act.threshold)) continue;
    auto copy = std::make_shared<quant::PackedWeight>(*w);
    copy->int8_activations = true;
    copy->outlier_threshold = act.threshold;
    layer->set_quantized(std::move(copy));
  }
  report.bytes_after = model_weight_bytes(model);
  return report;
}

std::map<std::string, Tensor> quantized_layer_tensors(const nn::CausalLM& model, json& quantization_config) {
  std::map<std::string, Tensor> out;
  json modules = json::array();
  std::string format;
  const quant::PackedWeight* first = nullptr;
  for (auto& [name, layer] : linear_layers(model)) {
    const quant::PackedWeight* w = layer->quantized();
    if (!w) continue;
    const std::string f = quant::weight_format_name(w->format);
    KOTOBA_CHECK(format.empty() || format == f, "save: layers quantised to both ", format, " and ", f,
                 " (a model directory holds one format)");
    KOTOBA_CHECK(!first || (first->int8_activations == w->int8_activations &&
                            first->outlier_threshold == w->outlier_threshold),
                 "save: layers with and without int8 activations (LLM.int8) or with different outlier thresholds "
                 "(a model directory holds one mode)");
    format = f;
    if (!first) first = w;
    Tensor codes = Tensor::empty({w->rows, w->row_bytes()}, DType::i8);
    std::memcpy(codes.raw(), w->codes.data(), w->codes.size());
    Tensor scales = Tensor::from_vector(w->scales, {w->rows, w->cols / w->blocksize});
    out[name + ".codes"] = codes;
    out[name + ".scales"] = scales;
    modules.push_back(name);
  }
  if (!out.empty()) {
    quantization_config = json{{"quant_method", "kotoba"}, {"format", format}, {"modules", modules}};
    if (first->int8_activations) {
      quantization_config["activations"] = "int8";
      quantization_config["llm_int8_threshold"] = first->outlier_threshold;
    }
  }
  return out;
}

void load_quantized_layers(nn::CausalLM& model, const json& qc, const std::string& path,
                           const std::string& config_path) {
  const char* where = "quantization_config";
  KOTOBA_CHECK(qc.is_object(), config_path, ": '", where, "' must be an object");
  const std::string method = qc.value("quant_method", std::string());
  KOTOBA_CHECK(method == "kotoba", config_path, ": ", where, ".quant_method is '", method,
               "'; kotoba reads the models `kotoba quantize` writes (quant_method \"kotoba\"). Load the unquantised "
               "model and run `kotoba quantize` on it");
  KOTOBA_CHECK(qc.contains("format") && qc["format"].is_string(), config_path, ": ", where,
               ".format is missing (expected int8, q8_0, q4_0 or nf4)");
  const quant::WeightFormat format = quant::parse_weight_format(qc["format"].get<std::string>());
  // LLM.int8(): "activations": "int8" (absent or "f32": weight-only) and "llm_int8_threshold".
  bool int8_activations = false;
  float threshold = 0;
  if (qc.contains("activations")) {
    const json& a = qc["activations"];
    KOTOBA_CHECK(a.is_string() && (a == "int8" || a == "f32"), config_path, ": ", where,
                 ".activations must be \"int8\" (LLM.int8) or \"f32\" (weight-only), got ", a.dump());
    int8_activations = a == "int8";
  }
  if (int8_activations) {
    KOTOBA_CHECK(format == quant::WeightFormat::int8, config_path, ": ", where,
                 ".activations \"int8\" needs format \"int8\", got \"", quant::weight_format_name(format), "\"");
    KOTOBA_CHECK(qc.contains("llm_int8_threshold") && qc["llm_int8_threshold"].is_number(), config_path, ": ", where,
                 ".llm_int8_threshold is missing (a number >= 0, 0: no outlier columns)");
    threshold = qc["llm_int8_threshold"].get<float>();
    KOTOBA_CHECK(std::isfinite(threshold) && threshold >= 0, config_path, ": ", where,
                 ".llm_int8_threshold must be a finite number >= 0, got ", qc["llm_int8_threshold"].dump());
  } else {
    KOTOBA_CHECK(!qc.contains("llm_int8_threshold"), config_path, ": ", where,
                 ".llm_int8_threshold is set but .activations is not \"int8\"");
  }
  KOTOBA_CHECK(qc.contains("modules") && qc["modules"].is_array(), config_path, ": ", where,
               ".modules is missing (expected the list of quantised layers)");
  SafeTensors file = load_safetensors(path);
  std::map<std::string, nn::Linear*> layers;
  for (auto& [name, layer] : linear_layers(model)) layers[name] = layer;
  std::set<std::string> used;
  for (const json& m : qc["modules"]) {
    KOTOBA_CHECK(m.is_string(), config_path, ": ", where, ".modules holds a non-string entry");
    const std::string name = m.get<std::string>();
    auto it = layers.find(name);
    KOTOBA_CHECK(it != layers.end(), config_path, ": ", where, ".modules names '", name,
                 "', which is not a Linear layer of this model");
    nn::Linear& layer = *it->second;
    auto codes_it = file.tensors.find(name + ".codes"), scales_it = file.tensors.find(name + ".scales");
    KOTOBA_CHECK(codes_it != file.tensors.end() && scales_it != file.tensors.end(), path, ": tensors '", name,
                 ".codes' and '", name, ".scales' are missing");
    used.insert(name + ".codes");
    used.insert(name + ".scales");
    quant::PackedWeight w = quant::PackedWeight::layout(format, layer.out_features(), layer.in_features());
    const Tensor& codes = codes_it->second;
    const Tensor& scales = scales_it->second;
    KOTOBA_CHECK(codes.dtype() == DType::i8 && codes.shape() == (Shape{w.rows, w.row_bytes()}), path, ": tensor '",
                 name, ".codes' is ", dtype_name(codes.dtype()), " ", shape_str(codes.shape()), ", expected I8 (",
                 w.rows, ", ", w.row_bytes(), ") for a ", w.rows, " x ", w.cols, " ", quant::weight_format_name(format),
                 " weight");
    KOTOBA_CHECK(scales.dtype() == DType::f32 && scales.shape() == (Shape{w.rows, w.cols / w.blocksize}), path,
                 ": tensor '", name, ".scales' is ", dtype_name(scales.dtype()), " ", shape_str(scales.shape()),
                 ", expected F32 (", w.rows, ", ", w.cols / w.blocksize, ")");
    w.codes.resize(size_t(codes.numel()));
    std::memcpy(w.codes.data(), codes.contiguous().raw(), w.codes.size());
    w.scales = scales.contiguous().to_vector();
    w.int8_activations = int8_activations;
    w.outlier_threshold = threshold;
    layer.set_quantized(std::make_shared<const quant::PackedWeight>(std::move(w)));
  }
  for (auto& [name, t] : file.tensors)
    KOTOBA_CHECK(used.count(name), path, ": unexpected tensor '", name, "' (not a layer config.json's ", where,
                 ".modules names)");
}

}  // namespace kotoba
