// Creates the Backend for a device by name, so that callers (the worker, tools, benchmarks) need no CUDA
// headers. The CUDA backend exists only in builds with TESSERA_CUDA; elsewhere asking for it is an error.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/linear.h"
#include "kernels/null/null_backend.h"

namespace tessera {

struct BackendOptions {
  DeviceKind device = DeviceKind::kCpu;
  int num_threads = 0;   // CPU: threads of the pool (0 = all cores)
  int device_index = 0;  // CUDA: which GPU
  // CPU: how prefill-sized GEMMs treat fp32 activations (see PrefillPrecision).
  PrefillPrecision prefill_precision = PrefillPrecision::kSplitBf16;
  // CPU: how decode GEMVs meet block-quantized weights (see QuantActivations).
  QuantActivations quant_activations = QuantActivations::kFp32;
  // Null: the device capacity allocations are accounted against (an H200's by default).
  int64_t null_memory_bytes = kNullDefaultMemoryBytes;
};

// The one place a Backend is made from options (workers, tools and benchmarks all come here).
// Errors: INVALID_ARGUMENT for bad options; UNAVAILABLE with one line saying why when the device is not
// usable here ("built without CUDA", "no CUDA device: <the driver's message>").
[[nodiscard]] absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

// How many devices of this kind the process sees (the CPU and the null device count as one). Errors: UNAVAILABLE as
// CreateBackend.
[[nodiscard]] absl::StatusOr<int> CountDevices(DeviceKind device);

// "cpu", "cuda" or "null". Errors: INVALID_ARGUMENT naming the value.
[[nodiscard]] absl::StatusOr<DeviceKind> ParseDeviceKind(const std::string& name);
// The name ParseDeviceKind takes.
const char* DeviceKindName(DeviceKind device);

}  // namespace tessera
