// Threading: OpenMP underneath, one setting for our kernels and for OpenBLAS together, so
// that the two never oversubscribe the cores (OpenBLAS runs single-threaded inside our regions).
#pragma once
#include <cstdint>

namespace kotoba {

void set_num_threads(int threads);  // <= 0: all cores
int num_threads();

}  // namespace kotoba
