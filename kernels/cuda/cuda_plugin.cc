// The entry points of the CUDA backend plugin (libtessera_cuda.so), found with dlsym by CreateBackend and
// CountDevices (kernels/backend_factory.cc). C linkage, so that their names are stable.
#include "kernels/cuda/cuda_plugin.h"

#include "kernels/cuda/cuda_backend.h"

extern "C" tessera::Backend* TesseraCreateCudaBackend(int device_index, absl::Status* error) {
  tessera::CudaBackendOptions options;
  options.device_index = device_index;
  absl::StatusOr<std::unique_ptr<tessera::CudaBackend>> backend = tessera::CudaBackend::Create(options);
  if (!backend.ok()) {
    *error = backend.status();
    return nullptr;
  }
  return backend->release();
}

extern "C" int TesseraCudaDeviceCount(absl::Status* error) {
  absl::StatusOr<int> count = tessera::CudaBackend::DeviceCount();
  if (!count.ok()) {
    *error = count.status();
    return 0;
  }
  return *count;
}
