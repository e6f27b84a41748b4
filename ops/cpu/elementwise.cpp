// (in progress) CPU kernels: elementwise.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_elementwise_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
