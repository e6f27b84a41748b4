// Threading: OpenMP underneath, one setting for our kernels and for OpenBLAS together, so
// that the two never oversubscribe the cores (OpenBLAS runs single-threaded inside our regions).
#pragma once
#include <cstdint>

namespace kotoba {

void set_num_threads(int threads);  // <= 0: all cores
int num_threads();

// OpenMP threads that finish a parallel region spin for a while before sleeping (libgomp's
// default): free on an idle machine, ruinous on a busy one, where the spinning threads take the
// cores the working thread needs. Decoding runs thousands of short regions per second; beside
// other work on 2 cores, batch-1 decode measured 0.7-1.1 tokens/s spinning and 15-16 tokens/s
// with OMP_WAIT_POLICY=passive (docs/PERF.md). libgomp reads the variable once, before main, so
// a program calls this first thing in main: unless the user set OMP_WAIT_POLICY, it sets it to
// passive and re-executes itself (argv unchanged). If that fails it carries on as it is.
void prefer_passive_openmp_threads(char** argv);

}  // namespace kotoba
