// CreateBackend / ParseDeviceKind (see backend_factory.h). The CUDA branch exists only in builds with
// TESSERA_HAVE_CUDA (kernels/cuda); elsewhere asking for it is UNAVAILABLE with the configure flag to use.
#include "kernels/backend_factory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace tessera {

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceKind::kCpu: {
      CpuBackendOptions cpu;
      cpu.num_threads = options.num_threads;
      auto backend = CpuBackend::Create(cpu);
      if (!backend.ok()) return backend.status();
      return std::unique_ptr<Backend>(std::move(backend).value());
    }
    case DeviceKind::kCuda: {
#if TESSERA_HAVE_CUDA
      if (options.device_index < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("device_index must be >= 0, got ", options.device_index));
      }
      CudaBackendOptions cuda;
      cuda.device_index = options.device_index;
      auto backend = CudaBackend::Create(cuda);
      if (!backend.ok()) return backend.status();
      return std::unique_ptr<Backend>(std::move(backend).value());
#else
      return absl::UnavailableError("this build has no CUDA backend (configure with -DTESSERA_CUDA=ON)");
#endif
    }
  }
  return absl::InvalidArgumentError("unknown device kind");
}

absl::StatusOr<int> CountDevices(DeviceKind device) {
  if (device == DeviceKind::kCpu) return 1;
#if TESSERA_HAVE_CUDA
  return CudaBackend::DeviceCount();
#else
  return absl::UnavailableError("this build has no CUDA backend (configure with -DTESSERA_CUDA=ON)");
#endif
}

absl::StatusOr<DeviceKind> ParseDeviceKind(const std::string& name) {
  if (name == "cpu") return DeviceKind::kCpu;
  if (name == "cuda") return DeviceKind::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", name, "\"; devices are: cpu, cuda"));
}

}  // namespace tessera
