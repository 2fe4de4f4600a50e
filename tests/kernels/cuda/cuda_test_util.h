// Helpers of the CUDA backend tests: a fixture holding a CudaBackend (skipping, with the reason, when the
// machine has no GPU) and a CpuBackend reference, device tensors made from host vectors, and comparisons.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/kernels/kernel_test_util.h"

namespace tessera::testing {

// Members are public: the tests' free helper functions (CheckLinear, CheckAttention) take the fixture.
class CudaTest : public ::testing::Test {
 public:
  void SetUp() override {
    auto gpu = CudaBackend::Create(CudaBackendOptions{});
    if (!gpu.ok()) GTEST_SKIP() << "skipped, no usable GPU: " << gpu.status().message();
    gpu_ = std::move(gpu).value();
    cpu_ = MakeBackend(4);
    ASSERT_NE(cpu_, nullptr);
    seed_ = FreshSeed();
    rng_.seed(seed_);
    std::printf("seed %u on %s\n", seed_, gpu_->device_name().c_str());
  }

  Tensor Device(DType dtype, std::initializer_list<int64_t> shape) {
    Tensor probe(nullptr, dtype, shape);
    auto buffer = gpu_->Allocate(probe.nbytes());
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    Tensor t = buffer->View(dtype, shape);
    buffers_.push_back(std::move(buffer).value());
    return t;
  }
  template <typename T>
  Tensor Upload(const std::vector<T>& v, DType dtype, std::initializer_list<int64_t> shape) {
    Tensor t = Device(dtype, shape);
    EXPECT_EQ(static_cast<int64_t>(v.size() * sizeof(T)), t.nbytes());
    gpu_->CopyToDevice(t.data(), v.data(), t.nbytes());
    return t;
  }
  // A BF16 device tensor of NaNs, so that unwritten elements show.
  Tensor PoisonedBf16(std::initializer_list<int64_t> shape) {
    Tensor t = Device(DType::kBF16, shape);
    std::vector<uint16_t> nan(t.numel(), 0x7fc0);
    gpu_->CopyToDevice(t.data(), nan.data(), t.nbytes());
    return t;
  }
  Tensor PoisonedF32(std::initializer_list<int64_t> shape) {
    Tensor t = Device(DType::kF32, shape);
    std::vector<float> nan = Poisoned(t.numel());
    gpu_->CopyToDevice(t.data(), nan.data(), t.nbytes());
    return t;
  }
  // Device tensor contents as floats (BF16 widened).
  std::vector<float> Download(const Tensor& t) {
    std::vector<float> out(t.numel());
    if (t.dtype() == DType::kF32) {
      EXPECT_OK(gpu_->CopyToHost(out.data(), t.data(), t.nbytes()));
    } else {
      EXPECT_EQ(t.dtype(), DType::kBF16);
      std::vector<uint16_t> bits(t.numel());
      EXPECT_OK(gpu_->CopyToHost(bits.data(), t.data(), t.nbytes()));
      for (size_t i = 0; i < bits.size(); ++i) out[i] = Bf16ToF32(bits[i]);
    }
    return out;
  }

  static std::vector<float> Widen(const std::vector<uint16_t>& v) {
    std::vector<float> f(v.size());
    for (size_t i = 0; i < v.size(); ++i) f[i] = Bf16ToF32(v[i]);
    return f;
  }

  // Every element within abs_tol + rel_tol * |want| (NaN fails).
  void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float rel_tol,
                   float abs_tol, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    int64_t bad = 0;
    double worst = 0;
    int64_t worst_i = -1;
    for (size_t i = 0; i < got.size(); ++i) {
      const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
      const double tol = abs_tol + rel_tol * std::fabs(want[i]);
      if (!(diff <= tol)) {
        if (bad++ < 5) {
          ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", want " << want[i] << " (seed "
                        << seed_ << ")";
        }
      }
      if (diff > worst || std::isnan(diff)) {
        worst = diff;
        worst_i = static_cast<int64_t>(i);
      }
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size()
                      << " elements out of tolerance; worst |diff| " << worst << " at " << worst_i;
  }

  std::unique_ptr<CudaBackend> gpu_;
  std::unique_ptr<CpuBackend> cpu_;
  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::vector<DeviceBuffer> buffers_;
};

}  // namespace tessera::testing
