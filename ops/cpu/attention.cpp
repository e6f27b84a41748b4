// (in progress) CPU kernels: attention.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_attention_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
