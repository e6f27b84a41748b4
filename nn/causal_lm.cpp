// The parts of incremental decoding every CausalLM shares: argument checks, cache allocation
// and the row copy that appends keys and values.
#include "nn/causal_lm.h"

#include <algorithm>

#include "ops/backend.h"
#include "ops/ops.h"

namespace kotoba::nn {

namespace {
// The strided copy of `device`'s backend (the KV cache's rows live wherever the model does).
auto backend_copy_2d(Device device) {
  const Backend& b = backend_for(device);
  KOTOBA_CHECK(b.copy_2d != nullptr, "KV cache: the ", b.name, " backend has no strided copy");
  return b.copy_2d;
}
}  // namespace

Tensor CausalLM::loss(const Tensor& ids, const Tensor& targets) {
  KOTOBA_CHECK(targets.shape() == ids.shape(), model_type(), ": targets shape ", shape_str(targets.shape()),
               " does not match ids shape ", shape_str(ids.shape()));
  return cross_entropy(logits(ids), targets, -100, /*overwrite_logits=*/true);
}

Tensor CausalLM::hidden_states(const Tensor&) {
  throw Error(detail::concat(model_type(), ": this model does not expose its hidden states"));
}

Tensor CausalLM::head_logits(const Tensor&) {
  throw Error(detail::concat(model_type(), ": this model does not expose its LM head"));
}

Tensor CausalLM::packed_loss(const PackedBatch& batch) {
  KOTOBA_CHECK(batch.targets.defined() && batch.targets.shape() == batch.ids.shape(), model_type(),
               ": packed targets shape ", batch.targets.defined() ? shape_str(batch.targets.shape()) : "(undefined)",
               " does not match ids shape ", shape_str(batch.ids.shape()));
  return cross_entropy(packed_logits(batch.ids, batch.positions, batch.segments), batch.targets, -100,
                       /*overwrite_logits=*/true);
}

int64_t CausalLM::check_packed_call(const Tensor& ids, const Tensor& positions, const Tensor& segments) const {
  KOTOBA_CHECK(ids.defined() && ids.ndim() == 2 && ids.dtype() == DType::i32, model_type(),
               ": packed ids must be (B, T) i32, got ", ids.defined() ? shape_str(ids.shape()) : "(undefined)");
  for (auto [name, t] : {std::pair<const char*, const Tensor*>{"positions", &positions}, {"segments", &segments}})
    KOTOBA_CHECK(t->defined() && t->dtype() == DType::i32 && t->shape() == ids.shape(), model_type(), ": packed ",
                 name, " must be i32 of the ids' shape ", shape_str(ids.shape()), ", got ",
                 t->defined() ? std::string(dtype_name(t->dtype())) + " " + shape_str(t->shape()) : "(undefined)");
  KOTOBA_CHECK(ids.size(1) >= 1 && ids.size(1) <= max_positions(), model_type(), ": packed row length ", ids.size(1),
               " is outside [1, ", max_positions(), "]");
  KOTOBA_CHECK(segments.device() == ids.device() && positions.device() == ids.device(), model_type(),
               ": packed ids, positions and segments must share a device");
  const Tensor host = positions.device() == Device::cpu ? positions.contiguous() : to_device(positions, Device::cpu);
  const int32_t* p = host.data<int32_t>();
  int64_t largest = 0;
  for (int64_t i = 0; i < host.numel(); ++i) {
    KOTOBA_CHECK(p[i] >= 0 && p[i] < max_positions(), model_type(), ": packed position ", p[i], " at index ", i,
                 " is outside [0, ", max_positions(), ")");
    largest = std::max<int64_t>(largest, p[i]);
  }
  return largest;
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
  KOTOBA_CHECK(cache.pad.empty() || int64_t(cache.pad.size()) == B, model, ": the KV cache's padding lists ",
               cache.pad.size(), " rows, the batch has ", B);
  for (int64_t p : cache.pad)
    KOTOBA_CHECK(p >= 0 && p < start + T, model, ": a row's padding of ", p, " slots leaves it no token within the ",
                 start + T, " slots filled");
}

void KVCache::select_rows(const std::vector<int64_t>& rows) {
  KOTOBA_CHECK(!rows.empty(), "KV cache: select_rows needs at least one row");
  const int64_t B = batch();
  for (int64_t r : rows) KOTOBA_CHECK(r >= 0 && r < B, "KV cache: row ", r, " is outside the batch of ", B);
  // Padding every kept row shares is dropped: once the longest sequence leaves the batch, the
  // others need not pay for (nor run out of slots because of) its length.
  int64_t shift = 0;
  std::vector<int64_t> kept_pad;
  if (!pad.empty()) {
    for (int64_t r : rows) kept_pad.push_back(pad[size_t(r)]);
    shift = *std::min_element(kept_pad.begin(), kept_pad.end());
    for (int64_t& p : kept_pad) p -= shift;
  }
  auto gather = [&](Tensor& buffer) {
    const int64_t H = buffer.size(1), L = buffer.size(2), D = buffer.size(3);
    KOTOBA_CHECK(buffer.strides()[2] == D && buffer.strides()[3] == 1, "KV cache: buffers must be contiguous");
    Tensor out = Tensor::empty({int64_t(rows.size()), H, L, D}, buffer.dtype(), buffer.device());
    const size_t elt = dtype_bytes(buffer.dtype(), 1), filled = elt * size_t((length - shift) * D);
    const Shape &is = buffer.strides(), &os = out.strides();
    const char* from = static_cast<const char*>(buffer.raw());
    char* to = static_cast<char*>(out.raw());
    const auto copy_2d = backend_copy_2d(buffer.device());
    // Slots are contiguous within a (row, head): one run of the filled slots per head.
    for (size_t i = 0; i < rows.size(); ++i)
      copy_2d(to + elt * size_t(int64_t(i) * os[0]), elt * size_t(os[1]),
              from + elt * size_t(rows[i] * is[0] + shift * D), elt * size_t(is[1]), filled, size_t(H));
    buffer = out;
  };
  for (Tensor& t : k) gather(t);
  for (Tensor& t : v) gather(t);
  length -= shift;
  const bool any_pad = std::any_of(kept_pad.begin(), kept_pad.end(), [](int64_t p) { return p > 0; });
  pad = any_pad ? std::move(kept_pad) : std::vector<int64_t>{};
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

void write_kv_rows(const Tensor& cache, const Tensor& src_in, int64_t start) {
  KOTOBA_CHECK(cache.device() == src_in.device(), "KV cache: the cache is on ", device_name(cache.device()),
               " but the keys and values on ", device_name(src_in.device()));
  KOTOBA_CHECK(cache.dtype() == src_in.dtype(), "KV cache: the cache is ", dtype_name(cache.dtype()),
               " but the model computes ", dtype_name(src_in.dtype()));
  KOTOBA_CHECK(src_in.ndim() == 4 && cache.ndim() == 4 && src_in.size(0) == cache.size(0) &&
                   src_in.size(1) == cache.size(1) && src_in.size(3) == cache.size(3) && start >= 0 &&
                   start + src_in.size(2) <= cache.size(2),
               "KV cache: cannot write ", shape_str(src_in.shape()), " at position ", start, " of a ",
               shape_str(cache.shape()), " cache");
  const int64_t B = src_in.size(0), H = src_in.size(1), T = src_in.size(2), D = src_in.size(3);
  KOTOBA_CHECK(cache.strides()[2] == D && cache.strides()[3] == 1, "KV cache: buffers must be contiguous");
  if (src_in.numel() == 0) return;
  const Shape& cs = cache.strides();
  // Each (b, h) of src is one run of T * D elements once src is contiguous (a (B, 1, H, D) decode
  // step seen as (B, H, 1, D) often already is), and so is its destination in the cache: a
  // single strided copy writes all B * H runs when both sides step through (b, h) evenly.
  const int64_t run = T * D;
  auto even_pitch = [&](const Shape& s) -> int64_t {  // the pitch of (b, h) flattened, or 0
    const int64_t pitch = H > 1 ? s[1] : B > 1 ? s[0] : run;
    const bool even = (H == 1 || B == 1 || s[0] == H * s[1]) && pitch >= run;
    return even ? pitch : 0;
  };
  const bool runs = (T == 1 || src_in.strides()[2] == D) && (D == 1 || src_in.strides()[3] == 1);
  const Tensor src = runs && even_pitch(src_in.strides()) ? src_in : src_in.contiguous();
  const Shape& ss = src.strides();
  const size_t elt = dtype_bytes(src.dtype(), 1);
  char* dst = static_cast<char*>(cache.raw()) + elt * size_t(start * D);
  const char* from = static_cast<const char*>(src.raw());
  const auto copy_2d = backend_copy_2d(cache.device());
  const int64_t src_pitch = even_pitch(ss), dst_pitch = even_pitch(cs);
  if (dst_pitch) {
    copy_2d(dst, elt * size_t(dst_pitch), from, elt * size_t(src_pitch), elt * size_t(run), size_t(B * H));
  } else {
    // The cache's batch rows do not step evenly (a view of a larger cache): one copy per row.
    auto head_pitch = [&](const Shape& s) { return elt * size_t(H > 1 ? s[1] : run); };
    for (int64_t b = 0; b < B; ++b)
      copy_2d(dst + elt * size_t(b * cs[0]), head_pitch(cs), from + elt * size_t(b * ss[0]), head_pitch(ss),
              elt * size_t(run), size_t(H));
  }
}

Tensor position_ids(int64_t start, int64_t T, Device device) {
  Tensor positions = Tensor::empty({T}, DType::i32);
  for (int64_t t = 0; t < T; ++t) positions.data<int32_t>()[t] = int32_t(start + t);
  return on_device(positions, device);
}

Tensor padded_position_ids(const KVCache& cache, int64_t T, Device device) {
  const int64_t B = int64_t(cache.pad.size()), start = cache.length;
  Tensor positions = Tensor::empty({B, T}, DType::i32);
  int32_t* p = positions.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) p[b * T + t] = int32_t(std::max<int64_t>(0, start + t - cache.pad[size_t(b)]));
  return on_device(positions, device);
}

Tensor padded_key_mask(const KVCache& cache, int64_t T, Device device) {
  const int64_t B = int64_t(cache.pad.size()), S = cache.length + T;
  Tensor mask = Tensor::empty({B, S}, DType::i32);
  int32_t* m = mask.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) m[b * S + s] = s >= cache.pad[size_t(b)] ? 1 : 0;
  return on_device(mask, device);
}

}  // namespace kotoba::nn
