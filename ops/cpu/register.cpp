// Fills the CPU backend table with this instruction set's kernels.
#include "ops/cpu/register.h"

namespace kotoba::cpu::KOTOBA_ISA_NS {
void fill_backend(Backend& b) { register_all_kernels(b); }
}  // namespace kotoba::cpu::KOTOBA_ISA_NS
