// Threading: OpenMP underneath, one setting for our kernels and for OpenBLAS together, so
// that the two never oversubscribe the cores (OpenBLAS runs single-threaded inside our regions).
#pragma once
#include <cstdint>

namespace kotoba {

void set_num_threads(int threads);  // <= 0: all cores
int num_threads();

// How long OpenMP threads that finish a parallel region spin before sleeping. Decoding runs
// thousands of short regions per second, so the choice sets its speed: libgomp's default (about
// 3 ms of spinning) is ruinous beside other work on the cores, where the spinning threads take the
// time the working thread needs (batch-1 decode 0.7-1.1 tokens/s under a load of 8 on 2 cores);
// never spinning (passive) makes every region wake its threads through the kernel, which halves
// decode speed on a quiet machine. A short spin (GOMP_SPINCOUNT 2000, tens of microseconds)
// measured best or level with passive in both (docs/PERF.md). libgomp reads the variables once,
// before main, so a program calls this first thing in main: unless the user set OMP_WAIT_POLICY
// or GOMP_SPINCOUNT, it sets OMP_WAIT_POLICY=passive with GOMP_SPINCOUNT=spin_count and
// re-executes itself (argv unchanged). If that fails it carries on as it is.
void bound_openmp_spinning(char** argv, long spin_count = 2000);

}  // namespace kotoba
