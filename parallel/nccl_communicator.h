// NcclCommunicator: Communicator over NCCL for tensors in CUDA device memory, one rank per GPU. Built only
// with the CUDA backend (TESSERA_HAVE_CUDA). Ranks meet through the coordinator's Rendezvous gRPC service or
// a directory of files: rank 0 publishes the ncclUniqueId under "<group>/nccl_unique_id", the others read it.
// This header includes no CUDA or NCCL header.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/tls.h"
#include "parallel/communicator.h"

namespace tessera {

struct NcclOptions {
  std::string group;  // name of the group; the unique id is stored under "<group>/nccl_unique_id"
  int rank = 0;
  int size = 1;
  int device = 0;             // CUDA device ordinal this rank uses (NCCL allows one rank per GPU)
  std::string store_token;    // the Rendezvous service's secret for this epoch (empty: none)
  TlsFiles store_tls;         // TLS files of the store's channel (empty: plaintext)
  std::string store_address;  // rendezvous through the coordinator's Rendezvous service at HOST:PORT, or
  std::string store_dir;      // through files in this directory (fresh for each group: a stale id is read);
                              // a group of size 1 needs neither
  std::chrono::milliseconds timeout{30000};  // for rendezvous, initialisation and every operation (or step)
  // When set (a cudaStream_t: the CUDA backend's stream), the communicator is stream-ordered
  // (parallel/communicator.h) on that stream, which it does not own.
  void* stream = nullptr;
  // Stream-ordered groups: all-reduces small enough take the one-shot custom kernel
  // (parallel/custom_all_reduce.h) when the group qualifies (one host, peer access between every pair, and
  // TESSERA_CUSTOM_ALL_REDUCE is not "off"); NCCL otherwise.
  bool custom_all_reduce = true;
};

// Contract of every operation (beyond Communicator's):
// - Tensors are in device memory of options.device. AllReduceSum takes F32 or BF16; the other operations move
//   bytes of any dtype.
// - Host-synchronous (no options.stream): NCCL runs on the communicator's own non-blocking stream, which does
//   not wait for the caller's streams: the caller must have synchronized the stream(s) that wrote the inputs
//   before the call. When the call returns OK the results are complete in device memory. Each call returns
//   within about the timeout: on timeout (a peer never joined) the NCCL communicator is aborted and
//   DEADLINE_EXCEEDED is returned; on an NCCL or CUDA error (a peer died, the device failed) it is aborted
//   and UNAVAILABLE is returned. Both name the operation, group and rank; from then on every call returns
//   the same error.
// - Stream-ordered (options.stream set): AllReduceSum, AllGather, Gather and Broadcast are enqueued on that
//   stream and return at once (they may be captured into a CUDA graph); Send, Recv and Barrier still wait
//   (they follow everything queued on the stream). A watchdog thread times each step from WatchStep: it polls
//   the step's completion event and ncclCommGetAsyncError every 100 us, and aborts the communicator (and the
//   custom all-reduce's kernels) when the step overruns the timeout or NCCL reports an error; StepStatus then
//   returns DEADLINE_EXCEEDED / UNAVAILABLE as above.
// - One thread at a time calls the operations (any thread; the device is set on each call); Abort may come
//   from any thread.
class NcclCommunicator final : public Communicator {
 public:
  // Sets the device, creates the stream, exchanges the unique id and initializes the NCCL communicator
  // (non-blocking); the exchange and the initialization are each bounded by the timeout. Errors:
  // INVALID_ARGUMENT for bad options; UNAVAILABLE when CUDA or NCCL cannot be used (no GPU or driver here,
  // with CUDA's message) or the rendezvous store fails; FAILED_PRECONDITION when the device ordinal does not
  // exist or NCCL rejects the setup (e.g. two ranks on one GPU); DEADLINE_EXCEEDED when the other ranks do
  // not arrive within the timeout. Never aborts the process.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(const NcclOptions& options);
  // Finalizes and destroys the NCCL communicator (aborts it instead when broken or when finalizing does not
  // finish within the timeout), then the stream.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  [[nodiscard]] absl::Status AllReduceSum(Tensor& data) override;
  [[nodiscard]] absl::Status AllGather(const Tensor& in, Tensor& out) override;
  [[nodiscard]] absl::Status Broadcast(Tensor& data, int root) override;
  [[nodiscard]] absl::Status Send(const Tensor& data, int dst) override;
  [[nodiscard]] absl::Status Recv(Tensor& data, int src) override;
  // Root receives from every other rank inside one NCCL group call (send / recv pairs).
  [[nodiscard]] absl::Status Gather(const Tensor& in, Tensor& out, int root) override;
  // A one-element all-reduce on a scratch buffer.
  [[nodiscard]] absl::Status Barrier() override;
  void Abort() override;
  bool stream_ordered() const override;
  void WatchStep() override;
  [[nodiscard]] absl::Status StepStatus() override;
  // Whether small all-reduces take the custom kernel, and if not why ("" when they do).
  std::string custom_all_reduce_off_reason() const;

 private:
  struct Impl;
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
