// NcclCommunicator: Communicator over NCCL for tensors in CUDA device memory, one rank per GPU. Built only
// with the CUDA backend (TESSERA_HAVE_CUDA). Ranks meet through the coordinator's Rendezvous gRPC service or
// a directory of files: rank 0 publishes the ncclUniqueId under "<group>/nccl_unique_id", the others read it.
// This header includes no CUDA or NCCL header.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace tessera {

struct NcclOptions {
  std::string group;  // name of the group; the unique id is stored under "<group>/nccl_unique_id"
  int rank = 0;
  int size = 1;
  int device = 0;             // CUDA device ordinal this rank uses (NCCL allows one rank per GPU)
  std::string store_address;  // rendezvous through the coordinator's Rendezvous service at HOST:PORT, or
  std::string store_dir;      // through files in this directory (fresh for each group: a stale id is read);
                              // a group of size 1 needs neither
  std::chrono::milliseconds timeout{30000};  // for rendezvous, initialisation and every operation
};

// Contract of every operation (beyond Communicator's):
// - Tensors are in device memory of options.device. NCCL runs on the communicator's own non-blocking stream,
//   which does not wait for the caller's streams: the caller must have synchronized the stream(s) that wrote
//   the inputs (cudaStreamSynchronize / event) before the call. When the call returns OK the results are
//   complete in device memory, visible to any stream.
// - AllReduceSum takes F32 or BF16; the other operations move bytes of any dtype.
// - Each call returns within about the timeout: on timeout (a peer never joined) the NCCL communicator is
//   aborted and DEADLINE_EXCEEDED is returned; on an NCCL or CUDA error (a peer died, the device failed)
//   it is aborted and UNAVAILABLE is returned. Both name the operation, group and rank; from then on every
//   call returns the same error.
// - Not thread-safe: one thread at a time per communicator (any thread; the device is set on each call).
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
  // A one-element all-reduce on a scratch buffer.
  [[nodiscard]] absl::Status Barrier() override;

 private:
  struct Impl;
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
