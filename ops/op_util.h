// Shared helpers of the op wrappers in ops/*.cpp: argument checks that throw kotoba::Error
// naming the op, fast strided copies, and the ways a backward writes an input's gradient.
#pragma once
#include <string>

#include "core/tensor.h"
#include "ops/autograd.h"
#include "ops/backend.h"

namespace kotoba::op_util {

// Throws unless `t` is defined.
void check_defined(const Tensor& t, const char* op, const char* arg);
// Throws unless `t` is defined and f32 or bf16.
void check_float(const Tensor& t, const char* op, const char* arg);
// Throws unless a and b share dtype and device.
void check_same_dtype_device(const Tensor& a, const Tensor& b, const char* op, const char* a_name, const char* b_name);

// `x` itself if contiguous, else a contiguous copy (no autograd history; multi-threaded).
Tensor as_contiguous(const Tensor& x);

// dst (=|+=) src: same shape, any strides, f32/bf16 in any combination (converts).
void copy_into(const Tensor& dst, const Tensor& src, bool accumulate);
// out = 0 (contiguous)
void zero(const Tensor& t);

// x broadcast numpy-style to `shape`, materialised contiguous.
Tensor expand_to(const Tensor& x, const Shape& shape);
// The numpy broadcast of two shapes; throws naming the op and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// True when `small`, with leading 1s dropped, is a suffix of `big` (so it repeats per row).
bool is_row_suffix(const Shape& small, const Shape& big);

// target (=|+=) alpha * g, where g has the broadcast shape and target the input's shape
// (broadcastable to g's): the broadcast dims are summed away.
void reduce_grad_into(const GradTarget& target, const Tensor& g, float alpha = 1.0f);

}  // namespace kotoba::op_util
