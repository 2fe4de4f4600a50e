// The CUDA library links and the factory behaves: on a machine with a GPU, CreateBackend({.device = kCuda})
// gives a BF16 backend; without one it fails with UNAVAILABLE and one line saying why.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "kernels/backend_factory.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(CudaBackendLinksTest, CreateBackendGivesACudaBackendOrSaysWhyNotInOneLine) {
  BackendOptions options;
  options.device = DeviceKind::kCuda;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(options);
  absl::StatusOr<int> devices = CudaBackend::DeviceCount();
  if (devices.ok()) {
    ASSERT_OK(backend);
    EXPECT_EQ((*backend)->device(), DeviceKind::kCuda);
    EXPECT_EQ((*backend)->activation_dtype(), DType::kBF16);
  } else {
    EXPECT_THAT(backend, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no CUDA device: ")));
    EXPECT_THAT(std::string(backend.status().message()), Not(HasSubstr("\n")));
    std::printf("no GPU here: %s\n", std::string(backend.status().message()).c_str());
  }
}

TEST(CudaBackendLinksTest, ADeviceIndexOutOfRangeIsRejected) {
  BackendOptions options;
  options.device = DeviceKind::kCuda;
  options.device_index = -1;
  EXPECT_THAT(CreateBackend(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("device_index")));
}

TEST(CudaBackendLinksTest, AnUnknownAttentionKernelInTheEnvironmentIsRejected) {
  const char* old = std::getenv("TESSERA_CUDA_ATTENTION");
  const std::string saved = old == nullptr ? "" : old;
  ASSERT_EQ(setenv("TESSERA_CUDA_ATTENTION", "tensor-cores", 1), 0);
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create(CudaBackendOptions{});
  if (old == nullptr) {
    unsetenv("TESSERA_CUDA_ATTENTION");
  } else {
    setenv("TESSERA_CUDA_ATTENTION", saved.c_str(), 1);
  }
  EXPECT_THAT(backend, StatusIs(absl::StatusCode::kInvalidArgument,
                                AllOf(HasSubstr("TESSERA_CUDA_ATTENTION"), HasSubstr("\"tensor-cores\""))));
}

TEST(CudaBackendLinksTest, TheCpuBackendComesFromTheSameFactory) {
  BackendOptions options;
  options.num_threads = 1;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Backend> backend, CreateBackend(options));
  EXPECT_EQ(backend->device(), DeviceKind::kCpu);
  EXPECT_EQ(backend->activation_dtype(), DType::kF32);
}

TEST(CudaBackendLinksTest, DeviceNamesParse) {
  ASSERT_OK_AND_ASSIGN(DeviceKind cuda, ParseDeviceKind("cuda"));
  EXPECT_EQ(cuda, DeviceKind::kCuda);
  ASSERT_OK_AND_ASSIGN(DeviceKind cpu, ParseDeviceKind("cpu"));
  EXPECT_EQ(cpu, DeviceKind::kCpu);
  EXPECT_THAT(ParseDeviceKind("tpu"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"tpu\"")));
}

}  // namespace
}  // namespace tessera
