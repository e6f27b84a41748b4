// Misuse of every op throws kotoba::Error whose message names the op and the offending shapes,
// never aborts or reads out of bounds.
#include <gtest/gtest.h>

#include <functional>

#include "ops/ops.h"

using namespace kotoba;

namespace {

// Runs `call`, which must throw kotoba::Error mentioning every string of `needles`.
void expect_error(const std::string& what, const std::function<void()>& call, const std::vector<std::string>& needles) {
  SCOPED_TRACE(what);
  try {
    call();
  } catch (const Error& e) {
    std::string message = e.what();
    for (const auto& n : needles)
      EXPECT_NE(message.find(n), std::string::npos) << what << ": message lacks \"" << n << "\": " << message;
    clear_tape();
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-kotoba exception: " << e.what();
    return;
  }
  ADD_FAILURE() << what << ": did not throw";
}

Tensor f(const Shape& s) { return Tensor::full(s, 0.5f); }
Tensor ids(const Shape& s, int32_t value = 0) {
  return Tensor::from_vector_i32(std::vector<int32_t>(size_t(shape_numel(s)), value), s);
}

TEST(OpErrors, Shape) {
  expect_error("reshape", [] { reshape(f({2, 3}), {4, 2}); }, {"reshape", "[2, 3]", "[4, 2]"});
  expect_error("transpose", [] { transpose(f({2, 3}), 0, 5); }, {"transpose", "5"});
  expect_error("slice", [] { slice(f({2, 3}), 1, 2, 5); }, {"slice", "[2, 3]"});
  expect_error("cast", [] { cast(ids({2, 3}), DType::bf16); }, {"cast"});
}

TEST(OpErrors, Elementwise) {
  expect_error("add", [] { add(f({2, 3}), f({4, 5})); }, {"add", "[2, 3]", "[4, 5]"});
  expect_error("sub", [] { sub(f({2, 3}), f({3, 2})); }, {"sub", "[2, 3]", "[3, 2]"});
  expect_error("mul", [] { mul(f({2, 3, 4}), f({5, 4})); }, {"mul", "[2, 3, 4]", "[5, 4]"});
  expect_error("div", [] { div(f({7}), f({6})); }, {"div", "[7]", "[6]"});
  expect_error("swiglu", [] { swiglu(f({2, 3}), f({2, 4})); }, {"swiglu", "[2, 3]", "[2, 4]"});
}

TEST(OpErrors, Matmul) {
  expect_error("matmul", [] { matmul(f({2, 3}), f({4, 5})); }, {"matmul", "[2, 3]", "[4, 5]"});
  expect_error("matmul batch", [] { matmul(f({2, 3, 4}), f({5, 4, 2})); }, {"matmul", "[2, 3, 4]", "[5, 4, 2]"});
  expect_error("matmul 1-D", [] { matmul(f({3}), f({3, 2})); }, {"matmul", "[3]"});
  expect_error("linear", [] { linear(f({2, 3}), f({4, 5})); }, {"linear", "[2, 3]", "[4, 5]"});
  expect_error("linear bias", [] { linear(f({2, 3}), f({4, 3}), f({5})); }, {"linear", "[4, 3]", "[5]"});
}

TEST(OpErrors, Embedding) {
  expect_error("embedding weight 1-D", [] { embedding(ids({3}), f({5})); }, {"embedding", "[5]"});
  expect_error("embedding float ids", [] { embedding(f({3}), f({5, 2})); }, {"embedding"});
  expect_error("embedding id out of range", [] { embedding(ids({3}, 7), f({5, 2})); }, {"embedding", "7"});
  expect_error("embedding negative id", [] { embedding(ids({3}, -1), f({5, 2})); }, {"embedding", "-1"});
}

TEST(OpErrors, Norms) {
  expect_error("layer_norm weight", [] { layer_norm(f({2, 3}), f({4}), f({3})); }, {"layer_norm", "[2, 3]", "[4]"});
  expect_error("layer_norm bias", [] { layer_norm(f({2, 3}), f({3}), f({4})); }, {"layer_norm", "[2, 3]", "[4]"});
  expect_error("rms_norm", [] { rms_norm(f({2, 3}), f({4})); }, {"rms_norm", "[2, 3]", "[4]"});
}

TEST(OpErrors, Attention) {
  expect_error("sdpa head_dim", [] { scaled_dot_product_attention(f({1, 2, 4, 8}), f({1, 2, 4, 16}), f({1, 2, 4, 16}), true); },
               {"scaled_dot_product_attention", "[1, 2, 4, 8]", "[1, 2, 4, 16]"});
  expect_error("sdpa heads", [] { scaled_dot_product_attention(f({1, 3, 4, 8}), f({1, 2, 4, 8}), f({1, 2, 4, 8}), true); },
               {"scaled_dot_product_attention", "[1, 3, 4, 8]", "[1, 2, 4, 8]"});
  expect_error("sdpa k/v", [] { scaled_dot_product_attention(f({1, 2, 4, 8}), f({1, 2, 4, 8}), f({1, 2, 5, 8}), false); },
               {"scaled_dot_product_attention", "[1, 2, 4, 8]", "[1, 2, 5, 8]"});
  expect_error("sdpa 3-D", [] { scaled_dot_product_attention(f({2, 4, 8}), f({2, 4, 8}), f({2, 4, 8}), false); },
               {"scaled_dot_product_attention", "[2, 4, 8]"});
  expect_error("sdpa key_mask",
               [] { scaled_dot_product_attention(f({1, 2, 4, 8}), f({1, 2, 4, 8}), f({1, 2, 4, 8}), false, ids({1, 5}, 1)); },
               {"scaled_dot_product_attention", "[1, 5]"});
  expect_error("packed qkv 3C", [] { attention_packed_qkv(f({1, 4, 10}), 2, true); }, {"attention_packed_qkv", "[1, 4, 10]"});
  expect_error("packed qkv n_head", [] { attention_packed_qkv(f({1, 4, 12}), 3, true); },
               {"attention_packed_qkv", "[1, 4, 12]", "3"});
}

TEST(OpErrors, Rope) {
  Tensor cos, sin;
  rope_tables(16, 8, 10000.0f, cos, sin);
  expect_error("rope positions", [&] { rope(f({1, 4, 2, 8}), ids({5}), cos, sin); }, {"rope", "[1, 4, 2, 8]", "[5]"});
  expect_error("rope head_dim", [&] { rope(f({1, 4, 2, 6}), ids({4}), cos, sin); }, {"rope", "[1, 4, 2, 6]", "[16, 4]"});
  expect_error("rope position past table", [&] { rope(f({1, 4, 2, 8}), ids({4}, 16), cos, sin); }, {"rope", "16"});
}

TEST(OpErrors, Losses) {
  expect_error("cross_entropy", [] { cross_entropy(f({4, 10}), ids({5})); }, {"cross_entropy", "[4, 10]", "[5]"});
  expect_error("cross_entropy target range", [] { cross_entropy(f({4, 10}), ids({4}, 10)); }, {"cross_entropy", "10"});
  expect_error("dropout p", [] {
    Generator g(1);
    dropout(f({4}), 1.5f, g);
  }, {"dropout", "1.5"});
}

}  // namespace
