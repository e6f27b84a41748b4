// Smoke test: the CPU backend loads and reports its instruction set.
#include <gtest/gtest.h>

#include <string>

#include "ops/backend.h"

TEST(Backend, CpuLoads) {
  auto isa = kotoba::cpu_isa();
  EXPECT_TRUE(isa == "avx512" || isa == "avx2");
}

TEST(Backend, CudaTensorWithoutGpuGivesAClearError) {
  try {
    kotoba::Tensor t = kotoba::Tensor::empty({4}, kotoba::DType::f32, kotoba::Device::cuda);
    GTEST_SKIP() << "a CUDA device is present: allocation worked";
  } catch (const kotoba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
}
