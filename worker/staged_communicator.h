// StagedCommunicator: a Communicator for device tensors over a host communicator (Gloo), staging every
// operation through host memory: device -> host copy, the host operation, host -> device copy. It is what two
// ranks sharing one GPU use (NCCL refuses two ranks on one device), and it works for any Backend; on the CPU
// backend the copies are plain memcpys. BF16 all-reduces are summed in fp32 on the host and rounded once.
#pragma once

#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace tessera {

class StagedCommunicator final : public Communicator {
 public:
  // `host` moves host tensors (F32 all-reduces, bytes otherwise); `backend` owns the device memory of the
  // tensors passed in and must outlive this communicator. Not thread-safe (one caller at a time), like
  // `host`.
  StagedCommunicator(std::unique_ptr<Communicator> host, Backend& backend)
      : host_(std::move(host)), backend_(backend) {}

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  // F32 or BF16 device tensors. Errors: the host communicator's.
  [[nodiscard]] absl::Status AllReduceSum(Tensor& data) override;
  [[nodiscard]] absl::Status AllGather(const Tensor& in, Tensor& out) override;
  [[nodiscard]] absl::Status Gather(const Tensor& in, Tensor& out, int root) override;
  [[nodiscard]] absl::Status Broadcast(Tensor& data, int root) override;
  [[nodiscard]] absl::Status Send(const Tensor& data, int dst) override;
  [[nodiscard]] absl::Status Recv(Tensor& data, int src) override;
  [[nodiscard]] absl::Status Barrier() override { return host_->Barrier(); }
  void Abort() override { host_->Abort(); }

 private:
  // Host staging buffers, grown as needed and kept (no allocation once the largest step has run).
  char* Staging(std::vector<char>& buffer, int64_t bytes);

  std::unique_ptr<Communicator> host_;
  Backend& backend_;
  std::vector<char> in_;
  std::vector<char> out_;
};

}  // namespace tessera
