// Helpers shared by the CPU kernel tests: random inputs, NaN poisoning, bf16 vectors and a backend.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/status_macros.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"

namespace tessera::testing {

// A fresh seed per call (tests use fresh random inputs each run); printed by the tests that fail.
inline uint32_t FreshSeed() { return std::random_device{}(); }

inline std::vector<float> RandomFloats(std::mt19937& rng, int64_t n, float stddev = 1.0f) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// bf16 bits of normal(0, stddev) values.
inline std::vector<uint16_t> RandomBf16(std::mt19937& rng, int64_t n, float stddev = 1.0f) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) x = F32ToBf16(dist(rng));
  return v;
}

inline std::vector<float> Poisoned(int64_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

inline Tensor View(std::vector<float>& v, std::initializer_list<int64_t> shape) {
  return Tensor(v.data(), DType::kF32, shape);
}
inline Tensor View(std::vector<uint16_t>& v, std::initializer_list<int64_t> shape) {
  return Tensor(v.data(), DType::kBF16, shape);
}
inline Tensor View(std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  return Tensor(v.data(), DType::kI32, shape);
}

inline std::unique_ptr<CpuBackend> MakeBackend(int num_threads = 2) {
  CpuBackendOptions options;
  options.num_threads = num_threads;
  auto backend = CpuBackend::Create(options);
  if (!backend.ok()) return nullptr;
  return std::move(backend).value();
}

}  // namespace tessera::testing
