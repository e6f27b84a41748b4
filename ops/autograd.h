// Reverse-mode autograd over a tape. Each differentiable op records one Node: the gradient
// holder (AutogradMeta) of its output, and a backward closure holding its inputs' gradient
// holders and exactly the tensors it saved. backward() walks the tape in reverse and then clears it.
#pragma once
#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace kotoba {

struct Node {
  const char* name = "";
  std::shared_ptr<AutogradMeta> output;  // the gradient holder of the op's output
  // Called with the output's gradient; accumulates into the inputs' gradients, whose holders
  // (and any saved tensors) the closure captured itself.
  std::function<void(const Tensor& grad_output)> backward;
};

// True when grad mode is on and any of the tensors requires a gradient.
bool any_requires_grad(std::initializer_list<const Tensor*> tensors);

// Records an op on the tape when needed and returns `output`, now carrying autograd state.
// `backward` receives the output's gradient.
Tensor record(const char* name, Tensor output, std::initializer_list<const Tensor*> inputs,
              std::function<void(const Tensor& grad_output)> backward);

// Where a backward writes the gradient of an input: `tensor` is undefined when that input
// needs no gradient. When `accumulate` is false the buffer is stale and must be overwritten
// (=), else added to (+=). Buffers persist across steps, so steady state allocates nothing.
struct GradTarget {
  Tensor tensor;
  bool accumulate = false;
  explicit operator bool() const { return tensor.defined(); }
};
GradTarget grad_target(const std::shared_ptr<AutogradMeta>& meta, const Shape& shape, DType dtype, Device device);

// backward from `root` (a scalar, or any tensor with an explicit seed gradient).
void backward(const Tensor& root, const Tensor& seed = Tensor());
// Drops everything recorded since the last backward (e.g. after a forward whose loss is unused).
void clear_tape();
size_t tape_size();

}  // namespace kotoba
