// CudaGraph (see cuda_graph.h).
#include "kernels/cuda/cuda_graph.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace tessera {

CudaGraph::CudaGraph(CudaGraph&& o) noexcept
    : graph_(std::exchange(o.graph_, nullptr)), exec_(std::exchange(o.exec_, nullptr)) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& o) noexcept {
  if (this != &o) {
    Reset();
    graph_ = std::exchange(o.graph_, nullptr);
    exec_ = std::exchange(o.exec_, nullptr);
  }
  return *this;
}

CudaGraph::~CudaGraph() { Reset(); }

void CudaGraph::Reset() {
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
}

absl::StatusOr<CudaGraph> CudaGraph::Instantiate(CUgraph_st* graph) {
  CudaGraph g;
  g.graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  RETURN_IF_CUDA_ERROR(cudaGraphInstantiate(&exec, graph, 0));
  g.exec_ = exec;
  return g;
}

absl::Status CudaGraph::Launch(CUstream_st* stream) const {
  if (exec_ == nullptr) return absl::FailedPreconditionError("CudaGraph::Launch on an empty graph");
  RETURN_IF_CUDA_ERROR(cudaGraphLaunch(exec_, stream));
  return absl::OkStatus();
}

}  // namespace tessera
