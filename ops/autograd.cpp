// The tape and the reverse pass.
#include "ops/autograd.h"

#include "ops/backend.h"

namespace kotoba {
namespace {
thread_local std::vector<Node> g_tape;
}

bool any_requires_grad(std::initializer_list<const Tensor*> tensors) {
  if (!grad_enabled()) return false;
  for (const Tensor* t : tensors)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

Tensor record(const char* name, Tensor output, std::initializer_list<const Tensor*> inputs,
              std::function<void(const Tensor& grad_output)> backward_fn) {
  if (!any_requires_grad(inputs)) return output;
  Node node;
  node.name = name;
  auto meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = true;
  meta->is_leaf = false;
  output.autograd_meta() = meta;
  node.output = std::move(meta);
  node.backward = std::move(backward_fn);
  g_tape.push_back(std::move(node));
  return output;
}

GradTarget grad_target(const std::shared_ptr<AutogradMeta>& meta, const Shape& shape, DType dtype, Device device) {
  GradTarget target;
  if (!meta || !meta->requires_grad) return target;
  if (meta->grad && meta->grad->shape == shape && meta->grad->dtype == dtype) {
    target.tensor = Tensor(meta->grad);
    target.accumulate = meta->grad_valid;
  } else {
    target.tensor = Tensor::empty(shape, dtype, device);
    meta->grad = target.tensor.impl_ptr();
    target.accumulate = false;
  }
  meta->grad_valid = true;
  return target;
}

void backward(const Tensor& root, const Tensor& seed) {
  KOTOBA_CHECK(root.requires_grad(), "backward: the tensor does not require a gradient (no op on the tape "
               "produced it from a parameter, or grad mode was off)");
  Tensor seed_grad = seed;
  if (!seed_grad.defined()) {
    KOTOBA_CHECK(root.numel() == 1, "backward: expected a scalar to start from, got shape ", shape_str(root.shape()),
                 "; pass an explicit seed gradient");
    seed_grad = Tensor::full(root.shape(), 1.0f, root.dtype(), root.device());
  }
  KOTOBA_CHECK(seed_grad.shape() == root.shape(), "backward: seed gradient shape ", shape_str(seed_grad.shape()),
               " does not match ", shape_str(root.shape()));
  auto& meta = root.autograd_meta();
  // The tape holds every graph recorded since the last backward, and a backward consumes all of
  // it: a root whose producer is no longer there would get nothing, silently.
  if (!meta->is_leaf) {
    bool on_tape = false;
    for (size_t i = g_tape.size(); i-- > 0 && !on_tape;) on_tape = g_tape[i].output == meta;
    KOTOBA_CHECK(on_tape, "backward: the graph that produced this tensor is gone: an earlier backward() consumed "
                 "the whole tape (every graph recorded since the one before); run each loss's backward before "
                 "building the next graph, or add the losses and call backward() once");
  }
  meta->grad = seed_grad.impl_ptr();
  meta->grad_valid = true;
  // Walk in reverse. Clear the tape first so that nodes freed below are not revisited if a
  // backward throws; the local vector keeps them alive until their turn.
  std::vector<Node> tape;
  tape.swap(g_tape);
  for (size_t i = tape.size(); i-- > 0;) {
    Node& node = tape[i];
    auto& out = node.output;
    if (out->grad && out->grad_valid) {
      Tensor grad_out(out->grad);
      node.backward(grad_out);
    }
    // An intermediate's gradient is dead once its producer has run: free it now.
    if (!out->is_leaf) {
      out->grad.reset();
      out->grad_valid = false;
    }
    node.backward = nullptr;  // releases the saved tensors
  }
  // Hand the emptied buffer back, so the next step's tape reuses its capacity.
  tape.clear();
  if (g_tape.empty()) g_tape.swap(tape);
}

void clear_tape() { g_tape.clear(); }
size_t tape_size() { return g_tape.size(); }

void Tensor::backward() { kotoba::backward(*this); }

}  // namespace kotoba
