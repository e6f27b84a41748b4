// Counter-based random numbers: the value at (seed, index) is a pure function, so kernels draw
// in parallel, dropout recomputes its mask in the backward, and a run replays from a seed.
#pragma once
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

namespace kotoba {

// SplitMix64 finaliser: a strong 64-bit mix of the counter.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) with 24 random bits.
inline float uniform_at(uint64_t seed, uint64_t index) {
  return float(mix64(seed * 0x632be59bd9b4e019ull + index) >> 40) * (1.0f / 16777216.0f);
}

// A stream of numbers: seed plus a running offset, which is the whole state (checkpointable).
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed; offset_ = offset; }
  // Reserves n draws and returns the first index of them.
  uint64_t advance(uint64_t n) { uint64_t o = offset_; offset_ += n; return o; }
  float uniform() { return uniform_at(seed_, offset_++); }
  // Standard normal by Box-Muller.
  float normal() {
    float u1 = uniform(), u2 = uniform();
    if (u1 < 1e-30f) u1 = 1e-30f;
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853071795864f * u2);
  }

 private:
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
};

// A permutation of [0, n) drawn from `seed` (Fisher-Yates on counter-based draws): the example
// order of an epoch in every trainer.
inline std::vector<size_t> permutation(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  for (size_t i = n; i > 1; --i) {
    const size_t j = size_t(mix64(seed + i) % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

}  // namespace kotoba
