// (in progress) CPU kernels: embedding.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_embedding_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
