// GlooCommunicator: Communicator over Gloo's TCP transport for CPU tensors. Ranks of a group meet through a
// key-value store (Gloo's rendezvous Store): the coordinator's Rendezvous gRPC service, or a directory of
// files shared by the ranks of one host.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/tls.h"
#include "parallel/communicator.h"

namespace tessera {

struct GlooOptions {
  std::string group;  // name of the group; keys in the store are prefixed with it
  int rank = 0;
  int size = 1;
  std::string store_token;    // the Rendezvous service's secret for this epoch (empty: none)
  TlsFiles store_tls;         // TLS files of the store's channel (empty: plaintext)
  std::string store_address;  // rendezvous through the coordinator's Rendezvous service at HOST:PORT, or
  std::string store_dir;      // through files in this directory (shared by the group's ranks)
  std::string hostname = "127.0.0.1";        // the address this rank listens on
  std::chrono::milliseconds timeout{30000};  // for rendezvous and every operation
};

class GlooCommunicator final : public Communicator {
 public:
  // Connects the full mesh of the group. The first call sets SIGPIPE to be ignored when it has no handler (so
  // that a peer's death fails a call instead of killing this process). Errors: INVALID_ARGUMENT for bad
  // options; DEADLINE_EXCEEDED when the other ranks do not arrive within the timeout; UNAVAILABLE for
  // transport errors (with Gloo's message).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Create(const GlooOptions& options);
  ~GlooCommunicator() override;

  int rank() const override;
  int size() const override;
  [[nodiscard]] absl::Status AllReduceSum(Tensor& data) override;
  [[nodiscard]] absl::Status AllGather(const Tensor& in, Tensor& out) override;
  // One hop: every other rank sends its part to root.
  [[nodiscard]] absl::Status Gather(const Tensor& in, Tensor& out, int root) override;
  [[nodiscard]] absl::Status Broadcast(Tensor& data, int root) override;
  [[nodiscard]] absl::Status Send(const Tensor& data, int dst) override;
  [[nodiscard]] absl::Status Recv(Tensor& data, int src) override;
  [[nodiscard]] absl::Status Barrier() override;
  // Interrupts the point-to-point waits (Send, Recv, the direct all-reduce and the all-gather); Gloo's own
  // algorithms (large all-reduces, broadcast, barrier) already waiting end by their timeout or their peers'
  // errors. Every call after it fails at once (UNAVAILABLE).
  void Abort() override;

 private:
  struct Impl;
  explicit GlooCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
