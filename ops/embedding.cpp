// Differentiable embedding lookup: ids (...) i32 into weight (V, C) -> (..., C). Every id is
// checked on the host before the kernel runs, so a bad token id is an Error, not a wild read.
#include "ops/op_util.h"
#include "ops/ops.h"

namespace kotoba {
using namespace op_util;

// y[n] = weight[ids[n]], so dweight[v] += sum of dy[n] over the n with ids[n] == v.
Tensor embedding(const Tensor& ids, const Tensor& weight) {
  check_defined(ids, "embedding", "ids");
  check_float(weight, "embedding", "weight");
  KOTOBA_CHECK(ids.dtype() == DType::i32, "embedding: ids must be i32, got ", dtype_name(ids.dtype()), " of shape ",
               shape_str(ids.shape()));
  KOTOBA_CHECK(weight.ndim() == 2, "embedding: weight must be (V, C), got shape ", shape_str(weight.shape()));
  KOTOBA_CHECK(ids.device() == weight.device(), "embedding: ids are on ", device_name(ids.device()),
               " but weight is on ", device_name(weight.device()));
  const int64_t V = weight.size(0), C = weight.size(1), N = ids.numel();
  Tensor idc = ids.is_contiguous() ? ids : ids.contiguous();
  Tensor host_ids = ids.device() == Device::cpu ? idc : to_device(idc, Device::cpu);
  const int32_t* id = host_ids.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    KOTOBA_CHECK(id[n] >= 0 && id[n] < V, "embedding: id ", id[n], " at position ", n, " of ids ",
                 shape_str(ids.shape()), " is out of range for a vocabulary of ", V, " (weight ",
                 shape_str(weight.shape()), ")");
  Tensor wc = as_contiguous(weight);
  Shape out_shape = ids.shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  if (N > 0 && C > 0) {
    EmbeddingForwardArgs args{idc.data<int32_t>(), wc.raw(), out.raw(), N, V, C, weight.dtype()};
    KOTOBA_DISPATCH(weight.device(), embedding_forward, args);
  }
  return record("embedding", out, {&weight},
                [idc = idc.detach(), meta = weight.autograd_meta(), w_shape = weight.shape(), dtype = weight.dtype(),
                 device = weight.device()](const Tensor& g_in) {
                  GradTarget t = grad_target(meta, w_shape, dtype, device);
                  if (!t) return;
                  if (!t.accumulate) zero(t.tensor);
                  const int64_t N = idc.numel(), V = w_shape[0], C = w_shape[1];
                  if (N == 0 || C == 0) return;
                  Tensor g = as_contiguous(g_in);
                  EmbeddingBackwardArgs args{idc.data<int32_t>(), g.raw(), t.tensor.raw(), N, V, C, dtype};
                  KOTOBA_DISPATCH(device, embedding_backward, args);
                });
}

}  // namespace kotoba
