// CudaGraph: a move-only, instantiated CUDA graph (cudaGraph_t + cudaGraphExec_t) captured from the CUDA
// backend's stream by CudaBackend::BeginCapture / EndCapture and replayed by CudaBackend::Replay. This header
// includes no CUDA header (the handles are forward-declared) so that the model runner can hold graphs.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct CUgraph_st;
struct CUgraphExec_st;
struct CUstream_st;

namespace tessera {

class CudaGraph {
 public:
  CudaGraph() = default;
  CudaGraph(CudaGraph&& o) noexcept;
  CudaGraph& operator=(CudaGraph&& o) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  ~CudaGraph();

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
