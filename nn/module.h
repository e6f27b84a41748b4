// Module: a named tree of parameters. Names are the checkpoint's own (HF names where an HF
// equivalent exists), so import/export is a mechanical map over named_parameters().
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace kotoba::nn {

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;  // children are referenced by address
  Module& operator=(const Module&) = delete;

  // Every parameter below this module, depth-first in registration order, with dotted names.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t parameter_count() const;
  // Where the module runs: its first parameter's device (to() moves them all together), found
  // without collecting the parameters (decoding asks once a step). An Error when it has none.
  Device device() const;

  // Training mode switches dropout on; eval mode off. Applies to the whole subtree.
  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  void zero_grad();
  // Moves every parameter to `device` in place: the tensors keep their identity (handles held
  // elsewhere see the move), their gradients are dropped. Throws, moving nothing, if a module
  // below cannot run there (device_limitation).
  void to(Device device);
  // Why this module itself (not its children) cannot run on `device`; empty if it can.
  virtual std::string device_limitation(Device device) const;
  // Called by to() on every module after the parameters moved, for state that is not a parameter
  // (e.g. a quantised weight's device copy).
  virtual void moved_to(Device device);
  // Freezes (or unfreezes) every parameter below this module.
  void set_requires_grad(bool value);

 // Registration is public so that plain Modules can group children (e.g. "transformer.").
  Tensor register_parameter(std::string name, Tensor value);
  void register_module(std::string name, Module& child);
  // Removes this module's own parameter `name` (a weight replaced by a quantised one); false if none.
  bool unregister_parameter(const std::string& name);
  // Removes the child registered as `name` (a LoRA adapter detached from its layer); false if none.
  bool unregister_module(const std::string& name);
  // Every module below this one (itself excluded), depth-first in registration order, with
  // dotted names: how adapters find the layers a name pattern targets.
  std::vector<std::pair<std::string, Module*>> named_modules() const;


 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Module*>> children_;
  bool training_ = true;
};

// Fills `t` (f32) with N(0, std^2) from `gen` — unless a SkipInitialisation is alive on this
// thread, when `t` is left as allocated.
void init_normal(Tensor& t, float std, Generator& gen);

// While one is alive, models built on this thread skip their random initialisation: for a model
// whose every parameter is about to be read from a file (drawing 124M normals took seconds of a
// load). Nests.
class SkipInitialisation {
 public:
  SkipInitialisation();
  ~SkipInitialisation();
  SkipInitialisation(const SkipInitialisation&) = delete;
  SkipInitialisation& operator=(const SkipInitialisation&) = delete;
};

}  // namespace kotoba::nn
