// CudaGraph: the CUDA backend's StepGraph, a move-only, instantiated CUDA graph (cudaGraph_t +
// cudaGraphExec_t) captured from the backend's stream by CudaBackend::BeginCapture / EndCapture and replayed
// by CudaBackend::Replay. This header includes no CUDA header (the handles are forward-declared).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

struct CUgraph_st;
struct CUgraphExec_st;
struct CUstream_st;

namespace tessera {

class CudaGraph final : public StepGraph {
 public:
  CudaGraph() = default;
  CudaGraph(CudaGraph&& o) noexcept;
  CudaGraph& operator=(CudaGraph&& o) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  ~CudaGraph() override;

  // Takes ownership of a captured graph and instantiates it. Errors: INTERNAL naming the CUDA error.
  [[nodiscard]] static absl::StatusOr<CudaGraph> Instantiate(CUgraph_st* graph);

  bool valid() const { return exec_ != nullptr; }
  // Enqueues one replay of the captured work on `stream`. Errors: FAILED_PRECONDITION for an empty graph,
  // INTERNAL when the launch fails.
  [[nodiscard]] absl::Status Launch(CUstream_st* stream) const;

 private:
  void Reset();
  CUgraph_st* graph_ = nullptr;
  CUgraphExec_st* exec_ = nullptr;
};

}  // namespace tessera
