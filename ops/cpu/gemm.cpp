// (in progress) CPU kernels: gemm.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void register_gemm_kernels(Backend&) {}
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
