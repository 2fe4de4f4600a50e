// The C entry points of the CUDA backend plugin and their types, shared by the plugin and its loader.
#pragma once

#include "absl/status/status.h"
#include "kernels/backend.h"

extern "C" {
// A new CudaBackend on GPU `device_index` (the caller owns it), or null with *error set
// (CudaBackend::Create's).
tessera::Backend* TesseraCreateCudaBackend(int device_index, absl::Status* error);
// How many GPUs this process sees, or 0 with *error set.
int TesseraCudaDeviceCount(absl::Status* error);
}

namespace tessera {
using CreateCudaBackendFn = Backend* (*)(int, absl::Status*);
using CudaDeviceCountFn = int (*)(absl::Status*);
}  // namespace tessera
