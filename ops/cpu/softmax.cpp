// (in progress) CPU kernels: softmax.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_softmax_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
