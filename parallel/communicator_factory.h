// JoinGroup: makes the communicator a group of ranks uses, by the kind of tensors it moves — Gloo for CPU
// tensors, NCCL for CUDA tensors — so that callers need no Gloo or NCCL headers (nor CUDA).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/tls.h"
#include "parallel/communicator.h"

namespace tessera {

enum class CommunicatorKind { kGloo, kNccl };

struct GroupOptions {
  std::string group;  // unique per group and epoch
  int rank = 0;
  int size = 1;
  std::string store_address;           // the coordinator's Rendezvous service, HOST:PORT
  std::string store_token;             // the secret it asks for (InitComm's store_token); empty: none
  TlsFiles store_tls;                  // the worker's control-plane TLS files (--control-*); empty: plaintext
  std::string hostname = "127.0.0.1";  // Gloo: the address this rank listens on
  int device_index = 0;                // NCCL: the GPU of this rank
  // NCCL: when set (the CUDA backend's stream, Backend::native_stream), the communicator is stream-ordered
  // (parallel/communicator.h) on that stream.
  void* cuda_stream = nullptr;
  std::chrono::milliseconds timeout{30000};
};

// Connects the group (every rank calls it). Errors: the implementation's (INVALID_ARGUMENT,
// DEADLINE_EXCEEDED, UNAVAILABLE); UNAVAILABLE for NCCL in a build without CUDA.
[[nodiscard]] absl::StatusOr<std::unique_ptr<Communicator>> JoinGroup(CommunicatorKind kind,
                                                                      const GroupOptions& options);

}  // namespace tessera
