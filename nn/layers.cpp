// Basic layers.
#include "nn/layers.h"

namespace kotoba::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, float init_std, Generator& gen) {
  Tensor w = Tensor::empty({out_features, in_features});
  init_normal(w, init_std, gen);
  weight = register_parameter("weight", w);
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out_features}));
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
