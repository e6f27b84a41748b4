// Masked-LM corruption with counter-based draws (core/rng.h): three uniforms per position.
#include "train/mlm.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace kotoba::train {

void validate_mlm_options(const MlmOptions& o) {
  KOTOBA_CHECK(o.vocab_size > 0, "mlm: vocab_size must be positive, got ", o.vocab_size);
  KOTOBA_CHECK(o.mask_id >= 0 && o.mask_id < o.vocab_size, "mlm: the [MASK] id ", o.mask_id,
               " is outside the vocabulary [0, ", o.vocab_size, ") (does the tokenizer have a [MASK] token?)");
  for (int32_t id : o.special_ids)
    KOTOBA_CHECK(id >= 0 && id < o.vocab_size, "mlm: special token id ", id, " is outside the vocabulary [0, ",
                 o.vocab_size, ")");
  for (auto [name, p] : {std::pair{"mlm_probability", o.mlm_probability}, std::pair{"mask_probability", o.mask_probability},
                         std::pair{"random_probability", o.random_probability}})
    KOTOBA_CHECK(p >= 0 && p <= 1, "mlm: ", name, " must be in [0, 1], got ", p);
  KOTOBA_CHECK(o.mask_probability + o.random_probability <= 1.0 + 1e-12, "mlm: mask_probability + random_probability "
               "must not exceed 1, got ", o.mask_probability + o.random_probability);
}

void mlm_mask(const MlmOptions& o, const Tensor& ids, uint64_t seed, uint64_t batch_index, Tensor& inputs,
              Tensor& labels, const Tensor& attention_mask) {
  validate_mlm_options(o);
  KOTOBA_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32 && ids.device() == Device::cpu && ids.is_contiguous(),
               "mlm: ids must be a contiguous CPU (B, T) i32 tensor, got ", dtype_name(ids.dtype()), " ",
               shape_str(ids.shape()));
  KOTOBA_CHECK(!attention_mask.defined() || (attention_mask.dtype() == DType::i32 && attention_mask.shape() == ids.shape() &&
                                             attention_mask.is_contiguous() && attention_mask.device() == Device::cpu),
               "mlm: attention_mask must be a contiguous CPU i32 tensor of the ids' shape ", shape_str(ids.shape()));
  if (!inputs.defined() || inputs.shape() != ids.shape()) inputs = Tensor::empty(ids.shape(), DType::i32);
  if (!labels.defined() || labels.shape() != ids.shape()) labels = Tensor::empty(ids.shape(), DType::i32);
  std::vector<char> special(size_t(o.vocab_size), 0);
  for (int32_t id : o.special_ids) special[size_t(id)] = 1;
  const int64_t n = ids.numel();
  const int32_t* in = ids.data<int32_t>();
  const int32_t* mask = attention_mask.defined() ? attention_mask.data<int32_t>() : nullptr;
  int32_t* out = inputs.data<int32_t>();
  int32_t* lab = labels.data<int32_t>();
  // One stream per batch: the seed mixed with the batch index; three draws per position.
  const uint64_t stream = mix64(seed ^ mix64(batch_index + 0x6d6c6d));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = in[i];
    KOTOBA_CHECK(id >= 0 && id < o.vocab_size, "mlm: token id ", id, " at position ", i,
                 " is outside the vocabulary [0, ", o.vocab_size, ")");
    out[i] = id;
    lab[i] = -100;
    if (special[size_t(id)] || (mask && mask[i] == 0)) continue;
    const uint64_t k = uint64_t(i) * 3;
    if (uniform_at(stream, k) >= o.mlm_probability) continue;
    lab[i] = id;
    const double action = uniform_at(stream, k + 1);
    if (action < o.mask_probability) {
      out[i] = o.mask_id;
    } else if (action < o.mask_probability + o.random_probability) {
      out[i] = std::min<int32_t>(o.vocab_size - 1, int32_t(double(uniform_at(stream, k + 2)) * double(o.vocab_size)));
    }
  }
}

}  // namespace kotoba::train
