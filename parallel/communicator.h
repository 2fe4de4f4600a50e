// Communicator: the collectives and point-to-point operations tensor and pipeline parallelism need, over one
// group of ranks. Implementations: Gloo (CPU tensors, TCP) here, NCCL (CUDA tensors) with the CUDA backend.
// Every operation is bounded by the timeout the communicator was made with and fails with a Status instead
// of hanging: DEADLINE_EXCEEDED when a peer does not take part in time, UNAVAILABLE when a peer is gone.
// After an error the communicator is broken: every later call fails too (the caller tears the group down).
//
// Host-synchronous communicators (Gloo; StagedCommunicator) read and write device memory from the host: the
// caller waits for the backend's queued work before each operation, and the operation is done on return.
// Stream-ordered ones (NCCL bound to the CUDA backend's stream) instead enqueue AllReduceSum, AllGather, Gather
// and Broadcast on that stream, in order with the backend's kernels, and return at once, so that a step's
// collectives can be captured inside its CUDA graph. Their failures then surface after the stream is waited
// for: the caller calls WatchStep once a step's work is enqueued, synchronizes the backend, then StepStatus.
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace tessera {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // data (same shape on every rank) becomes the elementwise sum over all ranks. F32 (Gloo); F32 or BF16
  // (NCCL).
  [[nodiscard]] virtual absl::Status AllReduceSum(Tensor& data) = 0;
  // out = every rank's `in` (same element count on each) concatenated in rank order; out holds size() * in.
  [[nodiscard]] virtual absl::Status AllGather(const Tensor& in, Tensor& out) = 0;
  // On `root`, out = every rank's `in` (same element count on each) concatenated in rank order (size() * in);
  // other ranks do not touch out (it may be empty there).
  [[nodiscard]] virtual absl::Status Gather(const Tensor& in, Tensor& out, int root) = 0;
  // data on every rank becomes root's data.
  [[nodiscard]] virtual absl::Status Broadcast(Tensor& data, int root) = 0;
  // Point to point; a Send must be matched by a Recv of the same byte size on `dst`, in the same order.
  [[nodiscard]] virtual absl::Status Send(const Tensor& data, int dst) = 0;
  [[nodiscard]] virtual absl::Status Recv(Tensor& data, int src) = 0;
  // Returns once every rank has called it.
  [[nodiscard]] virtual absl::Status Barrier() = 0;
  // Thread-safe, callable while another thread is inside an operation: the group is being abandoned (a rank
  // was lost and the group is re-formed). The operation in progress, when it waits on a peer, and every later
  // one fail at once (UNAVAILABLE) instead of waiting out their timeout. Implementations that cannot interrupt
  // a wait leave it to its timeout.
  virtual void Abort() {}

  // Stream-ordered communicators (see above) return true.
  virtual bool stream_ordered() const { return false; }
  // Stream-ordered: every operation of one step has been enqueued; a watchdog times the step's completion
  // from now and aborts the communicator when it overruns the timeout or a peer fails (which frees the
  // stream). Others: nothing.
  virtual void WatchStep() {}
  // Stream-ordered, after the backend's stream was waited for: OK, or why the watched step failed
  // (DEADLINE_EXCEEDED: it overran the timeout; UNAVAILABLE: a peer or the device failed), after which the
  // communicator is broken. Others: OK.
  [[nodiscard]] virtual absl::Status StepStatus() { return absl::OkStatus(); }
};

}  // namespace tessera
