#include "worker/model/captured_step.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace tessera {
absl::Status CapturedStep::Replay(Backend& backend) const {
  for (const Segment& segment : segments_) {
    RETURN_IF_ERROR(backend.Replay(*segment.graph));
    if (segment.collective) RETURN_IF_ERROR(segment.collective());
  }
  return absl::OkStatus();
}

absl::StatusOr<CapturedStep> SegmentingGroup::Capture(
    const std::function<absl::StatusOr<Tensor>()>& forward) {
  if (capturing_ != nullptr)
    return absl::FailedPreconditionError("SegmentingGroup: a capture is in progress");
  return Run(backend_, this, forward);
}

absl::StatusOr<CapturedStep> SegmentingGroup::CaptureWithoutGroup(
    Backend& backend, const std::function<absl::StatusOr<Tensor>()>& forward) {
  return Run(backend, nullptr, forward);
}

absl::StatusOr<CapturedStep> SegmentingGroup::Run(Backend& backend, SegmentingGroup* group,
                                                  const std::function<absl::StatusOr<Tensor>()>& forward) {
  CapturedStep step;
  RETURN_IF_ERROR(backend.BeginCapture());
  if (group != nullptr) group->capturing_ = &step;
  absl::StatusOr<Tensor> out = forward();
  if (group != nullptr) group->capturing_ = nullptr;
  // Close the capture whatever happened (after a failed cut it is closed already; forward has that error).
  absl::StatusOr<std::unique_ptr<StepGraph>> last = backend.EndCapture();
  if (!out.ok()) return out.status();
  if (!last.ok()) return last.status();
  step.segments_.push_back({std::move(last).value(), nullptr});
  step.output_ = *out;
  return step;
}

absl::Status SegmentingGroup::Cut(std::function<absl::Status()> op) {
  ASSIGN_OR_RETURN(std::unique_ptr<StepGraph> graph, backend_.EndCapture());
  capturing_->segments_.push_back({std::move(graph), [this, op = std::move(op)]() {
                                     RETURN_IF_ERROR(backend_.Synchronize());
                                     return op();
                                   }});
  return backend_.BeginCapture();
}

absl::Status SegmentingGroup::NotDuringCapture(const char* what) const {
  if (capturing_ == nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("SegmentingGroup: ", what, " cannot be part of a captured step"));
}

absl::Status SegmentingGroup::AllReduceSum(Tensor& data) {
  return Collective([this, data]() mutable { return inner_.AllReduceSum(data); });
}

absl::Status SegmentingGroup::AllGather(const Tensor& in, Tensor& out) {
  return Collective([this, in, out]() mutable { return inner_.AllGather(in, out); });
}

absl::Status SegmentingGroup::Gather(const Tensor& in, Tensor& out, int root) {
  return Collective([this, in, out, root]() mutable { return inner_.Gather(in, out, root); });
}

absl::Status SegmentingGroup::Broadcast(Tensor& data, int root) {
  return Collective([this, data, root]() mutable { return inner_.Broadcast(data, root); });
}

absl::Status SegmentingGroup::Send(const Tensor& data, int dst) {
  RETURN_IF_ERROR(NotDuringCapture("Send"));
  RETURN_IF_ERROR(backend_.Synchronize());
  return inner_.Send(data, dst);
}

absl::Status SegmentingGroup::Recv(Tensor& data, int src) {
  RETURN_IF_ERROR(NotDuringCapture("Recv"));
  RETURN_IF_ERROR(backend_.Synchronize());
  return inner_.Recv(data, src);
}

absl::Status SegmentingGroup::Barrier() {
  RETURN_IF_ERROR(NotDuringCapture("Barrier"));
  RETURN_IF_ERROR(backend_.Synchronize());
  return inner_.Barrier();
}

}  // namespace tessera
