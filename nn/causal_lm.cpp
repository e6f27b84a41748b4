// The parts of incremental decoding every CausalLM shares: argument checks, cache allocation
// and the row copy that appends keys and values.
#include "nn/causal_lm.h"

#include <cstring>

#include "ops/ops.h"

namespace kotoba::nn {

Tensor CausalLM::loss(const Tensor& ids, const Tensor& targets) {
  KOTOBA_CHECK(targets.shape() == ids.shape(), model_type(), ": targets shape ", shape_str(targets.shape()),
               " does not match ids shape ", shape_str(ids.shape()));
  return cross_entropy(logits(ids), targets, -100, /*overwrite_logits=*/true);
}

void CausalLM::check_cached_call(const Tensor& ids, const KVCache& cache, int64_t n_layers, const char* model) const {
  KOTOBA_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, model, ": ids must be (B, T) i32, got ",
               dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  KOTOBA_CHECK(int64_t(cache.k.size()) == n_layers && cache.v.size() == cache.k.size(), model, ": the KV cache has ",
               cache.k.size(), " layers, the model ", n_layers, " (make it with make_kv_cache)");
  const int64_t B = ids.size(0), T = ids.size(1), start = cache.length;
  KOTOBA_CHECK(B == cache.batch(), model, ": ids hold ", B, " sequences but the KV cache was made for ", cache.batch());
  KOTOBA_CHECK(T >= 1 && start + T <= cache.max_len() && start + T <= max_positions(), model, ": ", T,
               " new positions after ", start, " cached ones exceed the KV cache's max_len ", cache.max_len(),
               " (the model's limit is ", max_positions(), ")");
}

KVCache CausalLM::allocate_kv_cache(int64_t n_layers, int64_t batch, int64_t kv_heads, int64_t max_len,
                                    int64_t head_dim, const Tensor& like) {
  KVCache cache;
  for (int64_t i = 0; i < n_layers; ++i) {
    cache.k.push_back(Tensor::empty({batch, kv_heads, max_len, head_dim}, like.dtype(), like.device()));
    cache.v.push_back(Tensor::empty({batch, kv_heads, max_len, head_dim}, like.dtype(), like.device()));
  }
  return cache;
}

void write_kv_rows(const Tensor& cache, const Tensor& src, int64_t start) {
  KOTOBA_CHECK(cache.device() == Device::cpu && src.device() == Device::cpu,
               "KV cache: incremental decoding runs on the CPU for now");
  KOTOBA_CHECK(cache.dtype() == src.dtype(), "KV cache: the cache is ", dtype_name(cache.dtype()),
               " but the model computes ", dtype_name(src.dtype()));
  const int64_t B = src.size(0), H = src.size(1), T = src.size(2), D = src.size(3);
  const size_t elt = dtype_bytes(src.dtype(), 1), row = elt * size_t(D);
  const Shape &cs = cache.strides(), &ss = src.strides();
  char* dst = static_cast<char*>(cache.raw());
  const char* from = static_cast<const char*>(src.raw());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(dst + elt * size_t(b * cs[0] + h * cs[1] + (start + t) * cs[2]),
                    from + elt * size_t(b * ss[0] + h * ss[1] + t * ss[2]), row);
}

Tensor position_ids(int64_t start, int64_t T, Device device) {
  Tensor positions = Tensor::empty({T}, DType::i32);
  for (int64_t t = 0; t < T; ++t) positions.data<int32_t>()[t] = int32_t(start + t);
  return device == Device::cpu ? positions : to_device(positions, device);
}

}  // namespace kotoba::nn
