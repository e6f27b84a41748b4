// The test binary's main. Its OpenMP threads wait passively, without even the kotoba command's
// short spin (core/parallel.h): ctest runs two test processes side by side on a 2-core CI machine, and
// libgomp's spinning idle threads would otherwise take the cores from each other's working
// threads (the two long fine-tuning tests ran 8 minutes of CPU each instead of about one).
#include <gtest/gtest.h>

#include "core/parallel.h"

int main(int argc, char** argv) {
  kotoba::bound_openmp_spinning(argv, 0);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
