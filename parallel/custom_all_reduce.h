// CustomAllReduce: the one-shot all-reduce for small messages inside one node, as TensorRT-LLM and vLLM run
// it: each rank reads every peer's message directly over NVLink (CUDA IPC memory) and sums them, one kernel
// and no ring steps, so a decode step's all-reduces cost a few microseconds instead of NCCL's tens. Owned by
// a stream-ordered NcclCommunicator, which falls back to NCCL for what this does not take. Part of the NCCL
// plugin; this header includes no CUDA header.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "core/tls.h"
#include "parallel/all_reduce_choice.h"

namespace tessera {

struct CustomAllReduceOptions {
  std::string group;  // store keys are "<group>/..."
  int rank = 0;
  int size = 1;
  int device = 0;             // CUDA device ordinal of this rank
  std::string store_address;  // the rendezvous store and its token, as NcclOptions
  std::string store_token;
  TlsFiles store_tls;
  std::string store_dir;
  std::chrono::milliseconds timeout{30000};  // for each exchange through the store
  int64_t max_bytes = 0;                     // the largest message it takes; 0: DefaultOneShotMaxBytes(size)
};

class CustomAllReduce {
 public:
  // Collective over the group's ranks (all must call it): exchanges hostnames and PCI bus ids through the
  // store, decides eligibility (OneShotEligible) identically on every rank, allocates this rank's signals and
  // double message buffer (2 x max_bytes) and opens every peer's with CUDA IPC. Errors: INVALID_ARGUMENT for
  // bad options; UNAVAILABLE (with the reason) when the group does not qualify or CUDA cannot set it up on
  // some rank: every rank then gets UNAVAILABLE, so that all fall back to NCCL together; DEADLINE_EXCEEDED
  // when a peer does not reach the store in time.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<CustomAllReduce>> Create(
      const CustomAllReduceOptions& options);
  // Stops waiting kernels (Abort), waits for the device, closes the peers' memory and frees this rank's.
  ~CustomAllReduce();
  CustomAllReduce(const CustomAllReduce&) = delete;
  CustomAllReduce& operator=(const CustomAllReduce&) = delete;

  // Whether it takes an all-reduce of `data` (ChooseAllReduce says one-shot); the same answer on every rank.
  bool Takes(const Tensor& data) const;
  // Enqueues the sum over ranks of `data` (F32 or BF16 device memory on this rank's device; Takes(data)) on
  // `stream` (a cudaStream_t), in place; capturable into a CUDA graph. Every rank must make the same sequence
  // of calls. Returns UNAVAILABLE when the launch fails; a peer that never joins leaves the kernel waiting
  // until Abort.
  [[nodiscard]] absl::Status AllReduceSum(Tensor& data, void* stream);
  // Thread-safe: kernels waiting for a peer return at once (their results are garbage); later ones too.
  void Abort();

  int64_t max_bytes() const;
  const AllReduceTopology& topology() const;

 private:
  struct Impl;
  explicit CustomAllReduce(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
