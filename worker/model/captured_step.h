// Forward steps captured as step graphs (Backend::BeginCapture) and replayed. The model's TP group is wrapped
// in a SegmentingGroup. A stream-ordered group (NCCL on the CUDA backend's stream, see
// parallel/communicator.h) is captured inside the graph: a step is one graph. A host-synchronous one (Gloo,
// staged) cannot be: during a capture, each collective ends the graph captured so far, is recorded, and
// starts the next one, so a captured step is a list of segments (graph, collective, graph, ..., graph)
// replayed in order. Without tensor parallelism it is one graph.
#pragma once

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/status_macros.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace tessera {

class CapturedStep {
 public:
  struct Segment {
    std::unique_ptr<StepGraph> graph;
    std::function<absl::Status()> collective;  // runs after the graph; empty for the last segment
  };

  // Replays every segment on `backend` (the one that captured them). Errors: the backend's and the
  // collectives' (a failed peer: UNAVAILABLE / DEADLINE_EXCEEDED).
  [[nodiscard]] absl::Status Replay(Backend& backend) const;
  // What the captured forward returned (its memory is rewritten by each replay).
  const Tensor& output() const { return output_; }
  int num_segments() const { return static_cast<int>(segments_.size()); }

 private:
  friend class SegmentingGroup;
  std::vector<Segment> segments_;
  Tensor output_;
};

// The TP group as the model sees it. With a stream-ordered `inner`, AllReduceSum / AllGather / Gather /
// Broadcast go straight to it (enqueued on the backend's stream, captured with the rest of a step). With a
// host-synchronous one, each operation outside a capture first synchronizes the backend (the communicator
// reads device memory that the backend's stream writes) and then runs; during SegmentingGroup::Capture those
// four cut the capture and are recorded instead. Send, Recv and Barrier synchronize first and fail during a
// capture (the model's forward has none).
class SegmentingGroup final : public Communicator {
 public:
  // `backend` and `inner` must outlive the group.
  SegmentingGroup(Backend& backend, Communicator& inner) : backend_(backend), inner_(inner) {}

  // Captures `forward` (one step of the model that uses this group; its TP peers must be capturing the same
  // step, or running it, since nothing is exchanged during a capture) into a CapturedStep whose output is
  // what `forward` returned. Works without any collective too. On error nothing stays captured. Errors:
  // `forward`'s and the backend's.
  [[nodiscard]] absl::StatusOr<CapturedStep> Capture(const std::function<absl::StatusOr<Tensor>()>& forward);

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  [[nodiscard]] absl::Status AllReduceSum(Tensor& data) override;
  [[nodiscard]] absl::Status AllGather(const Tensor& in, Tensor& out) override;
  [[nodiscard]] absl::Status Gather(const Tensor& in, Tensor& out, int root) override;
  [[nodiscard]] absl::Status Broadcast(Tensor& data, int root) override;
  [[nodiscard]] absl::Status Send(const Tensor& data, int dst) override;
  [[nodiscard]] absl::Status Recv(Tensor& data, int src) override;
  [[nodiscard]] absl::Status Barrier() override;
  bool stream_ordered() const override { return inner_.stream_ordered(); }
  void WatchStep() override { inner_.WatchStep(); }
  [[nodiscard]] absl::Status StepStatus() override { return inner_.StepStatus(); }

  // Captures `forward` with a null group (no tensor parallelism): one graph.
  [[nodiscard]] static absl::StatusOr<CapturedStep> CaptureWithoutGroup(
      Backend& backend, const std::function<absl::StatusOr<Tensor>()>& forward);

 private:
  // Captures `forward` with `group` (may be null) cutting at its collectives.
  [[nodiscard]] static absl::StatusOr<CapturedStep> Run(
      Backend& backend, SegmentingGroup* group, const std::function<absl::StatusOr<Tensor>()>& forward);
  // Runs `op` now (stream-ordered: as it is; else after synchronizing), or while capturing a host-synchronous
  // group records it and cuts the capture. A template, so that the per-step (uncaptured) path builds no
  // std::function.
  template <typename Op>
  [[nodiscard]] absl::Status Collective(Op op) {
    if (inner_.stream_ordered()) return op();
    if (capturing_ != nullptr) return Cut(std::move(op));
    RETURN_IF_ERROR(backend_.Synchronize());
    return op();
  }
  // Ends the graph being captured, records `op` to run after it, and starts the next one.
  [[nodiscard]] absl::Status Cut(std::function<absl::Status()> op);
  [[nodiscard]] absl::Status NotDuringCapture(const char* what) const;

  Backend& backend_;
  Communicator& inner_;
  CapturedStep* capturing_ = nullptr;  // the step being captured, during Capture
};

}  // namespace tessera
