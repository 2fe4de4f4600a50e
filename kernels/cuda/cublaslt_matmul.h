// CublasLtMatmul: y[M, N] = x[M, K] @ w[N, K]^T through cuBLASLt with bf16 inputs, fp32 compute and a bf16 or
// fp32 output. Owns the cuBLASLt handle and one workspace (allocated once); the algorithm is chosen by
// cublasLtMatmulAlgoGetHeuristic the first time a (M, N, K, output type, pointer alignment) is seen and
// cached with its descriptors. Includes CUDA headers: for kernels/cuda and GPU benchmarks only.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace tessera {

class CublasLtMatmul {
 public:
  static constexpr int64_t kDefaultWorkspaceBytes = int64_t{32} << 20;  // what NVIDIA advises for Hopper

  // Errors: INTERNAL / UNAVAILABLE when cuBLASLt cannot start, RESOURCE_EXHAUSTED for the workspace.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<CublasLtMatmul>> Create(
      int64_t workspace_bytes = kDefaultWorkspaceBytes);
  ~CublasLtMatmul();
  CublasLtMatmul(const CublasLtMatmul&) = delete;
  CublasLtMatmul& operator=(const CublasLtMatmul&) = delete;

  // Enqueues y = x @ w^T on `stream`. x: BF16 [m, k]; w: BF16 [n, k]; y: [m, n], BF16 or F32; all row-major
  // device memory. Any m, n, k >= 1 (cuBLASLt picks kernels that handle the alignment it is told). Errors:
  // UNIMPLEMENTED when cuBLASLt has no algorithm for the shape, INTERNAL when the launch fails. Not
  // thread-safe (one caller at a time, like the backend).
  [[nodiscard]] absl::Status Run(const void* x, const void* w, void* y, DType y_dtype, int64_t m, int64_t n,
                                 int64_t k, cudaStream_t stream);

  // Number of cached (shape, algorithm) plans.
  int num_plans() const { return static_cast<int>(plans_.size()); }

 private:
  struct Plan;
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int>;  // m, n, k, y dtype, alignment bytes
  CublasLtMatmul(cublasLtHandle_t handle, DeviceBuffer workspace);
  absl::StatusOr<Plan*> GetPlan(const Key& key);

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace tessera
