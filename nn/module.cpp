// Module parameter tree and initialisation helpers.
#include "nn/module.h"

#include "ops/ops.h"

namespace kotoba::nn {

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", out);
  return out;
}

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (auto& [name, t] : params_) out.emplace_back(prefix + name, t);
  for (auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

Device Module::device() const {
  // Depth-first, as named_parameters() orders them.
  auto first = [](const Module& m, auto& self) -> const Tensor* {
    if (!m.params_.empty()) return &m.params_.front().second;
    for (auto& [name, child] : m.children_)
      if (const Tensor* t = self(*child, self)) return t;
    return nullptr;
  };
  const Tensor* t = first(*this, first);
  KOTOBA_CHECK(t != nullptr, "the module has no parameters to place it on a device");
  return t->device();
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

std::string Module::device_limitation(Device) const { return {}; }

void Module::moved_to(Device) {}

void Module::to(Device device) {
  std::vector<std::pair<std::string, Module*>> modules = named_modules();
  modules.emplace(modules.begin(), "", this);
  for (const auto& [name, m] : modules) {
    const std::string why = m->device_limitation(device);
    KOTOBA_CHECK(why.empty(), "cannot move the model to ", device_name(device), ": ",
                 name.empty() ? std::string("the module") : name, " ", why);
  }
  for (auto& [name, t] : named_parameters()) {
    if (t.device() == device) continue;
    Tensor moved = to_device(t, device);
    TensorImpl& impl = t.impl();
    impl.storage = moved.impl().storage;
    impl.offset = 0;
    impl.strides = moved.strides();
    if (impl.autograd) {
      impl.autograd->grad.reset();
      impl.autograd->grad_valid = false;
    }
  }
  for (const auto& [name, m] : modules) m->moved_to(device);
}

void Module::set_requires_grad(bool value) {
  for (auto& [name, t] : named_parameters()) t.set_requires_grad(value);
}

Tensor Module::register_parameter(std::string name, Tensor value) {
  value.set_requires_grad(true);
  params_.emplace_back(std::move(name), value);
  return value;
}

void Module::register_module(std::string name, Module& child) { children_.emplace_back(std::move(name), &child); }

bool Module::unregister_parameter(const std::string& name) {
  for (auto it = params_.begin(); it != params_.end(); ++it)
    if (it->first == name) {
      params_.erase(it);
      return true;
    }
  return false;
}

bool Module::unregister_module(const std::string& name) {
  for (auto it = children_.begin(); it != children_.end(); ++it)
    if (it->first == name) {
      children_.erase(it);
      return true;
    }
  return false;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() const {
  std::vector<std::pair<std::string, Module*>> out;
  for (auto& [name, child] : children_) {
    out.emplace_back(name, child);
    for (auto& [sub, module] : child->named_modules()) out.emplace_back(name + "." + sub, module);
  }
  return out;
}

namespace {
thread_local int skip_initialisation_depth = 0;
}

SkipInitialisation::SkipInitialisation() { ++skip_initialisation_depth; }
SkipInitialisation::~SkipInitialisation() { --skip_initialisation_depth; }

void init_normal(Tensor& t, float std, Generator& gen) {
  if (skip_initialisation_depth > 0) return;
  float* p = t.data<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = gen.normal() * std;
}

}  // namespace kotoba::nn
