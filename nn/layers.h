// The basic layers: Linear, Embedding, LayerNorm, RMSNorm. Weights use PyTorch's layouts
// (Linear weight is (out, in)); the importers in io/ map other layouts onto these.
#pragma once
#include "nn/module.h"
#include "ops/ops.h"

namespace kotoba::nn {

class Linear : public Module {
 public:
  // Weight N(0, init_std^2), bias zero.
  Linear(int64_t in_features, int64_t out_features, bool bias, float init_std, Generator& gen);
  Tensor forward(const Tensor& x) const { return linear(x, weight, bias); }
  Tensor weight;  // (out, in)
  Tensor bias;    // (out) or undefined
};

class Embedding : public Module {
 public:
  Embedding(int64_t count, int64_t dim, float init_std, Generator& gen);
  Tensor forward(const Tensor& ids) const { return embedding(ids, weight); }
  Tensor weight;  // (count, dim)
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, float eps, bool bias = true);
  Tensor forward(const Tensor& x) const { return layer_norm(x, weight, bias, eps); }
  Tensor weight, bias;  // (dim), ones and zeros
  float eps;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, float eps);
  Tensor forward(const Tensor& x) const { return rms_norm(x, weight, eps); }
  Tensor weight;  // (dim), ones
  float eps;
};

}  // namespace kotoba::nn
