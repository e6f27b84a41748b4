// (in progress) CPU kernels: adamw.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_adamw_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
