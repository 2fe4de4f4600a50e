// CreateBackend / ParseDeviceKind (see backend_factory.h). The CUDA branch exists only in builds with
// TESSERA_HAVE_CUDA (kernels/cuda); elsewhere asking for it is UNAVAILABLE with the configure flag to use.
#include "kernels/backend_factory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/plugin.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/null/null_backend.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/cuda_plugin.h"
#endif

namespace tessera {

#if TESSERA_HAVE_CUDA
namespace {

struct CudaPlugin {
  CreateCudaBackendFn create = nullptr;
  CudaDeviceCountFn count = nullptr;
};

// libtessera_cuda.so's entry points ($TESSERA_CUDA_PLUGIN, else next to this executable, else the build's).
absl::StatusOr<CudaPlugin> LoadCudaPlugin() {
  absl::StatusOr<void*> handle = LoadPlugin("TESSERA_CUDA_PLUGIN", "libtessera_cuda.so", TESSERA_CUDA_PLUGIN);
  if (!handle.ok())
    return absl::UnavailableError(absl::StrCat("the CUDA backend: ", handle.status().message()));
  absl::StatusOr<void*> create = PluginSymbol(*handle, "TesseraCreateCudaBackend");
  absl::StatusOr<void*> count = PluginSymbol(*handle, "TesseraCudaDeviceCount");
  if (!create.ok()) return create.status();
  if (!count.ok()) return count.status();
  return CudaPlugin{reinterpret_cast<CreateCudaBackendFn>(*create),
                    reinterpret_cast<CudaDeviceCountFn>(*count)};
}

}  // namespace
#endif

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceKind::kCpu: {
      CpuBackendOptions cpu;
      cpu.num_threads = options.num_threads;
      cpu.linear.prefill_precision = options.prefill_precision;
      cpu.linear.quant_activations = options.quant_activations;
      auto backend = CpuBackend::Create(cpu);
      if (!backend.ok()) return backend.status();
      return std::unique_ptr<Backend>(std::move(backend).value());
    }
    case DeviceKind::kNull: {
      auto backend = NullBackend::Create({.memory_bytes = options.null_memory_bytes});
      if (!backend.ok()) return backend.status();
      return std::unique_ptr<Backend>(std::move(backend).value());
    }
    case DeviceKind::kCuda: {
#if TESSERA_HAVE_CUDA
      if (options.device_index < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("device_index must be >= 0, got ", options.device_index));
      }
      absl::StatusOr<CudaPlugin> plugin = LoadCudaPlugin();
      if (!plugin.ok()) return plugin.status();
      absl::Status error;
      std::unique_ptr<Backend> backend(plugin->create(options.device_index, &error));
      if (backend == nullptr) return error;
      return backend;
#else
      return absl::UnavailableError("this build has no CUDA backend (configure with -DTESSERA_CUDA=ON)");
#endif
    }
  }
  return absl::InvalidArgumentError("unknown device kind");
}

absl::StatusOr<int> CountDevices(DeviceKind device) {
  if (device == DeviceKind::kCpu || device == DeviceKind::kNull) return 1;
#if TESSERA_HAVE_CUDA
  absl::StatusOr<CudaPlugin> plugin = LoadCudaPlugin();
  if (!plugin.ok()) return plugin.status();
  absl::Status error;
  const int count = plugin->count(&error);
  if (!error.ok()) return error;
  return count;
#else
  return absl::UnavailableError("this build has no CUDA backend (configure with -DTESSERA_CUDA=ON)");
#endif
}

absl::StatusOr<DeviceKind> ParseDeviceKind(const std::string& name) {
  if (name == "cpu") return DeviceKind::kCpu;
  if (name == "cuda") return DeviceKind::kCuda;
  if (name == "null") return DeviceKind::kNull;
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", name, "\"; devices are: cpu, cuda, null"));
}

const char* DeviceKindName(DeviceKind device) {
  switch (device) {
    case DeviceKind::kCpu:
      return "cpu";
    case DeviceKind::kCuda:
      return "cuda";
    case DeviceKind::kNull:
      return "null";
  }
  return "?";
}

}  // namespace tessera
