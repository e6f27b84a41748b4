// The mixed-precision switch read by linear() and matmul(): one value per thread, so a scope
// opened by one training loop does not leak into another thread's work.
#include "ops/ops.h"

namespace kotoba {
namespace {
thread_local DType g_autocast = DType::f32;
}  // namespace

DType autocast_dtype() { return g_autocast; }

AutocastScope::AutocastScope(DType compute) : previous_(g_autocast) {
  KOTOBA_CHECK(compute == DType::f32 || compute == DType::bf16, "autocast: the compute dtype must be f32 or bf16, got ",
               dtype_name(compute));
  g_autocast = compute;
}

AutocastScope::~AutocastScope() { g_autocast = previous_; }

DType parse_precision(std::string_view name, std::string_view what) {
  if (name == "f32") return DType::f32;
  if (name == "bf16") return DType::bf16;
  throw Error(detail::concat(what, ": expected \"f32\" or \"bf16\", got \"", name, "\""));
}

}  // namespace kotoba
