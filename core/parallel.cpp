// Thread-count control for OpenMP and OpenBLAS.
#include "core/parallel.h"

#include <omp.h>

extern "C" void openblas_set_num_threads(int);

namespace kotoba {

void set_num_threads(int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace kotoba
