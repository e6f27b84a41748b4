// Smoke test: the CPU backend loads and reports its instruction set.
#include <gtest/gtest.h>

#include "ops/backend.h"

TEST(Backend, CpuLoads) {
  auto isa = kotoba::cpu_isa();
  EXPECT_TRUE(isa == "avx512" || isa == "avx2");
}
