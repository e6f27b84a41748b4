// (in progress) CPU kernels: dropout.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_dropout_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
