// CreateBackend / ParseDeviceKind (see backend_factory.h). The CUDA branch exists only in builds with
// TESSERA_HAVE_CUDA (kernels/cuda); elsewhere asking for it is UNAVAILABLE with the configure flag to use.
#include "kernels/backend_factory.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
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

// Where libtessera_cuda.so is: $TESSERA_CUDA_PLUGIN, else next to this executable, else where the build wrote
// it.
std::string PluginPath() {
  if (const char* env = std::getenv("TESSERA_CUDA_PLUGIN"); env != nullptr && *env != 0) return env;
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string dir(exe, n);
    dir.resize(dir.rfind('/') + 1);
    const std::string beside = dir + "libtessera_cuda.so";
    if (access(beside.c_str(), R_OK) == 0) return beside;
  }
  return TESSERA_CUDA_PLUGIN;
}

// Loads the plugin once (dlopen; never unloaded). Errors: UNAVAILABLE naming the file and dlerror's reason.
absl::StatusOr<CudaPlugin> LoadCudaPlugin() {
  static std::once_flag once;
  static absl::StatusOr<CudaPlugin> plugin = absl::UnknownError("unset");
  std::call_once(once, [] {
    const std::string path = PluginPath();
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      plugin = absl::UnavailableError(absl::StrCat("cannot load the CUDA backend ", path, ": ", dlerror()));
      return;
    }
    CudaPlugin p;
    p.create = reinterpret_cast<CreateCudaBackendFn>(dlsym(handle, "TesseraCreateCudaBackend"));
    p.count = reinterpret_cast<CudaDeviceCountFn>(dlsym(handle, "TesseraCudaDeviceCount"));
    if (p.create == nullptr || p.count == nullptr) {
      plugin = absl::UnavailableError(
          absl::StrCat(path, " is not the CUDA backend plugin (missing entry points)"));
      return;
    }
    plugin = p;
  });
  return plugin;
}

}  // namespace
#endif

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
  if (device == DeviceKind::kCpu) return 1;
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
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", name, "\"; devices are: cpu, cuda"));
}

}  // namespace tessera
