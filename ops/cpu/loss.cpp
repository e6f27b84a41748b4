// (in progress) CPU kernels: loss.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_loss_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
