// Thread-count control for OpenMP and OpenBLAS.
#include "core/parallel.h"

#include <omp.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

extern "C" void openblas_set_num_threads(int);

namespace kotoba {

void set_num_threads(int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int num_threads() { return omp_get_max_threads(); }

void bound_openmp_spinning(char** argv, long spin_count) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::setenv("GOMP_SPINCOUNT", std::to_string(spin_count).c_str(), 1);
  ::execv("/proc/self/exe", argv);
}

}  // namespace kotoba
