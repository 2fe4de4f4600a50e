// GPU ceilings that gpu_bench prints next to its figures, measured on the device in the same run:
// device-to-device copy bandwidth (the HBM roofline of decode) and cuBLASLt's bf16 GEMM rate (the ceiling of
// prefill). Plain C++ interface: no CUDA headers, so callers build with the host compiler.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace tessera {

struct GpuInfo {
  std::string name;       // "NVIDIA H200"
  int compute_major = 0;  // compute capability, 9.0 on Hopper
  int compute_minor = 0;
  int sm_count = 0;
  int64_t total_bytes = 0;  // device memory
  int64_t l2_bytes = 0;
};

struct CopyCeiling {
  int64_t bytes = 0;     // bytes read by one copy (the same number are written)
  double median_ms = 0;  // median over the timed copies (CUDA events)
  double gbps = 0;       // (bytes read + bytes written) / median time, in 1e9 bytes/s
};

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;  // D[m, n] = A[m, k] @ B[k, n]
};

struct GemmCeiling {
  GemmShape shape;
  double median_ms = 0;  // median over the timed products (CUDA events)
  double tflops = 0;     // 2 * m * n * k / median time, in 1e12 FLOP/s
};

// Name, compute capability and sizes of GPU `device`. Errors: UNAVAILABLE with the driver's message when
// there is no such device.
[[nodiscard]] absl::StatusOr<GpuInfo> QueryGpu(int device);

// Times `repeats` cudaMemcpyAsync device-to-device copies of `bytes` (random contents) on GPU `device` after
// two warm-up copies. Uses 2 * bytes of device memory, freed on return; `bytes` is halved (down to 256 MiB)
// while that does not fit in the free memory. Errors: UNAVAILABLE / RESOURCE_EXHAUSTED / INTERNAL naming the
// CUDA call that failed.
[[nodiscard]] absl::StatusOr<CopyCeiling> MeasureCopyBandwidth(int device, int64_t bytes, int repeats);

// Times `repeats` cuBLASLt products D = A @ B of `shape` on GPU `device`: bf16 inputs and output, fp32
// accumulation, random inputs (never zeros), the algorithm cuBLASLt's heuristic ranks first with a 64 MiB
// workspace, three warm-up products first. Device memory is freed on return. Errors: as above, plus INTERNAL
// naming the cuBLASLt call (NOT_FOUND when the heuristic offers no algorithm).
[[nodiscard]] absl::StatusOr<GemmCeiling> MeasureBf16Gemm(int device, GemmShape shape, int repeats);

}  // namespace tessera
