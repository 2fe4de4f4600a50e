// CommunicatorSlot: a Communicator that forwards to another one that can be replaced. The model holds the slot;
// when a group is re-formed after a lost rank (a new epoch), the worker drops the broken communicator and puts
// the new one in, without touching the model or its weights.
#pragma once

#include <memory>
#include <mutex>
#include <utility>

#include "parallel/communicator.h"

namespace tessera {

class CommunicatorSlot final : public Communicator {
 public:
  // `rank` and `size` are the group's, the same for every communicator the slot will hold.
  CommunicatorSlot(int rank, int size) : rank_(rank), size_(size) {}

  // Puts `comm` in (null empties the slot: every operation then fails with UNAVAILABLE). The one it held is
  // destroyed, which closes its connections. Called on the thread that runs the operations.
  void Reset(std::unique_ptr<Communicator> comm) {
    std::unique_ptr<Communicator> old;
    {
      std::lock_guard<std::mutex> lock(abort_mu_);
      old = std::move(comm_);
      comm_ = std::move(comm);
    }
  }
  bool empty() const { return comm_ == nullptr; }
  // Aborts the communicator held now (see Communicator::Abort); any thread.
  void Abort() override {
    std::lock_guard<std::mutex> lock(abort_mu_);
    if (comm_ != nullptr) comm_->Abort();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  [[nodiscard]] absl::Status AllReduceSum(Tensor& data) override {
    return comm_ ? comm_->AllReduceSum(data) : Empty();
  }
  [[nodiscard]] absl::Status AllGather(const Tensor& in, Tensor& out) override {
    return comm_ ? comm_->AllGather(in, out) : Empty();
  }
  [[nodiscard]] absl::Status Gather(const Tensor& in, Tensor& out, int root) override {
    return comm_ ? comm_->Gather(in, out, root) : Empty();
  }
  [[nodiscard]] absl::Status Broadcast(Tensor& data, int root) override {
    return comm_ ? comm_->Broadcast(data, root) : Empty();
  }
  [[nodiscard]] absl::Status Send(const Tensor& data, int dst) override {
    return comm_ ? comm_->Send(data, dst) : Empty();
  }
  [[nodiscard]] absl::Status Recv(Tensor& data, int src) override {
    return comm_ ? comm_->Recv(data, src) : Empty();
  }
  [[nodiscard]] absl::Status Barrier() override { return comm_ ? comm_->Barrier() : Empty(); }
  bool stream_ordered() const override { return comm_ != nullptr && comm_->stream_ordered(); }
  void WatchStep() override {
    if (comm_ != nullptr) comm_->WatchStep();
  }
  [[nodiscard]] absl::Status StepStatus() override { return comm_ ? comm_->StepStatus() : Empty(); }

 private:
  static absl::Status Empty() {
    return absl::UnavailableError("the communicator was closed: its group is being re-formed");
  }

  const int rank_;
  const int size_;
  // Written by Reset under abort_mu_; read without it only by the thread that calls Reset (the operations).
  std::unique_ptr<Communicator> comm_;
  std::mutex abort_mu_;  // Abort against Reset
};

}  // namespace tessera
