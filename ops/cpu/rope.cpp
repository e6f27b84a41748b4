// (in progress) CPU kernels: rope.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_rope_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
