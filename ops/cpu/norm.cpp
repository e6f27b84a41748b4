// (in progress) CPU kernels: norm.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_norm_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
