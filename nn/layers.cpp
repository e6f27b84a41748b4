// Basic layers.
#include "nn/layers.h"

namespace kotoba::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, float init_std, Generator& gen) {
  Tensor w = Tensor::empty({out_features, in_features});
  init_normal(w, init_std, gen);
  weight = register_parameter("weight", w);
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out_features}));
}

Tensor Linear::forward(const Tensor& x) const {
  Tensor y = quantized_ ? quantized_linear(x, quantized_, bias,
                                           quantized_device_.codes.defined() ? &quantized_device_ : nullptr)
                        : linear(x, weight, bias);
  if (!lora_ || lora_->merged || lora_->disabled) return y;
  const LoraAdapter& a = *lora_;
  // x (..., in) -> (..., r) -> (..., out): two thin products instead of forming B A (out, in).
  Tensor h = a.dropout > 0 && training() ? kotoba::dropout(x, a.dropout, a.dropout_gen, true) : x;
  return add(y, scale(linear(linear(h, a.A), a.B), a.scaling));
}

void Linear::attach_lora(const Tensor& A, const Tensor& B, float scaling, float dropout, uint64_t dropout_seed) {
  KOTOBA_CHECK(!lora_ || !lora_->merged, "Linear.attach_lora: the layer holds a merged adapter; unmerge it first");
  KOTOBA_CHECK(A.ndim() == 2 && B.ndim() == 2 && A.size(1) == in_features() && B.size(0) == out_features() &&
                   A.size(0) == B.size(1) && A.size(0) > 0,
               "Linear.attach_lora: lora_A ", shape_str(A.shape()), " and lora_B ", shape_str(B.shape()),
               " do not fit a layer of in ", in_features(), ", out ", out_features(),
               " (expected (r, in) and (out, r))");
  KOTOBA_CHECK(dropout >= 0 && dropout < 1, "Linear.attach_lora: dropout ", dropout, " is not in [0, 1)");
  detach_lora();
  auto adapter = std::make_unique<LoraAdapter>();
  const Device device = compute_device();
  adapter->A = adapter->a_module.register_parameter("weight", A.device() == device ? A : to_device(A, device));
  adapter->B = adapter->b_module.register_parameter("weight", B.device() == device ? B : to_device(B, device));
  adapter->scaling = scaling;
  adapter->dropout = dropout;
  adapter->dropout_gen = Generator(dropout_seed);
  adapter->a_module.train(training());
  adapter->b_module.train(training());
  register_module("lora_A", adapter->a_module);
  register_module("lora_B", adapter->b_module);
  lora_ = std::move(adapter);
}

void Linear::detach_lora() {
  if (!lora_) return;
  unregister_module("lora_A");
  unregister_module("lora_B");
  lora_.reset();
}

namespace {
// scaling * B A (out, in), the adapter's whole update as one matrix.
Tensor lora_delta(const LoraAdapter& a) { return scale(matmul(a.B.detach(), a.A.detach()), a.scaling); }
}  // namespace

void Linear::quantize(quant::WeightFormat format) {
  KOTOBA_CHECK(!quantized_, "Linear.quantize: the layer is quantised already");
  KOTOBA_CHECK(!lora_ || !lora_->merged, "Linear.quantize: the layer holds a merged adapter; unmerge it first");
  Tensor w = weight.device() == Device::cpu ? weight.contiguous() : to_device(weight, Device::cpu);
  set_quantized(std::make_shared<const quant::PackedWeight>(
      quant::pack_weight(w.data<float>(), w.size(0), w.size(1), format)));
}

void Linear::set_quantized(std::shared_ptr<const quant::PackedWeight> packed) {
  KOTOBA_CHECK(packed != nullptr, "Linear.set_quantized: no weight");
  if (weight.defined())
    KOTOBA_CHECK(packed->rows == weight.size(0) && packed->cols == weight.size(1), "Linear.set_quantized: a ",
                 packed->rows, " x ", packed->cols, " weight for a layer of ", weight.size(0), " x ", weight.size(1));
  const Device device = compute_device();
  unregister_parameter("weight");
  weight = Tensor();
  quantized_ = std::move(packed);
  quantized_device_ = device == Device::cpu ? PackedWeightOnDevice{} : PackedWeightOnDevice::make(*quantized_, device);
}

Device Linear::compute_device() const {
  if (!quantized_) return weight.device();
  return quantized_device_.codes.defined() ? quantized_device_.codes.device() : Device::cpu;
}

std::string Linear::device_limitation(Device device) const {
  if (!quantized_ || device == Device::cpu || !quantized_->int8_activations) return {};
  return "holds an LLM.int8() weight (int8 activations), which runs on the CPU only";
}

void Linear::moved_to(Device device) {
  if (!quantized_ || compute_device() == device) return;
  quantized_device_ = device == Device::cpu ? PackedWeightOnDevice{} : PackedWeightOnDevice::make(*quantized_, device);
}

void Linear::merge_lora() {
  KOTOBA_CHECK(lora_, "Linear.merge_lora: the layer has no LoRA adapter");
  KOTOBA_CHECK(!quantized_, "Linear.merge_lora: the base weight is quantised (QLoRA); merge into an f32 copy of the "
               "base instead");
  if (lora_->merged) return;
  NoGradGuard no_grad;
  Tensor w = weight.detach();
  w.copy_from(add(w, lora_delta(*lora_)));
  lora_->merged = true;
}

void Linear::unmerge_lora() {
  KOTOBA_CHECK(lora_, "Linear.unmerge_lora: the layer has no LoRA adapter");
  if (!lora_->merged) return;
  NoGradGuard no_grad;
  Tensor w = weight.detach();
  w.copy_from(sub(w, lora_delta(*lora_)));
  lora_->merged = false;
}

void Linear::set_lora_enabled(bool enabled) {
  KOTOBA_CHECK(lora_, "Linear.set_lora_enabled: the layer has no LoRA adapter");
  KOTOBA_CHECK(enabled || !lora_->merged, "Linear.set_lora_enabled: a merged adapter cannot be disabled; unmerge it first");
  lora_->disabled = !enabled;
}

Embedding::Embedding(int64_t count, int64_t dim, float init_std, Generator& gen) {
  Tensor w = Tensor::empty({count, dim});
  init_normal(w, init_std, gen);
  weight = register_parameter("weight", w);
}

LayerNorm::LayerNorm(int64_t dim, float eps_, bool with_bias) : eps(eps_) {
  weight = register_parameter("weight", Tensor::full({dim}, 1.0f));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({dim}));
}

RMSNorm::RMSNorm(int64_t dim, float eps_) : eps(eps_) { weight = register_parameter("weight", Tensor::full({dim}, 1.0f)); }

}  // namespace kotoba::nn
