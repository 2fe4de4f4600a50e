// Small exchanges through the rendezvous store (the coordinator's Rendezvous gRPC service or a directory of
// files) that the NCCL plugin makes while setting up a group: the NCCL unique id, the custom all-reduce's
// topology and memory handles. Turns the store's exceptions into Status.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tls.h"

namespace gloo::rendezvous {
class Store;
}

namespace tessera {

struct StoreLocation {
  std::string address;  // HOST:PORT of the Rendezvous service, or
  std::string dir;      // a directory of files (created when missing)
  std::chrono::milliseconds timeout{30000};
  std::string token;  // the Rendezvous service's secret (empty: none)
  TlsFiles tls;       // TLS files of the channel to it (empty: plaintext)
};

// Opens the store and runs `use` on it. A store timeout becomes DEADLINE_EXCEEDED, any other store failure
// UNAVAILABLE, each as "<what> failed: <cause>"; `use`'s own Status is returned as it is.
[[nodiscard]] absl::Status UseStore(const StoreLocation& location, std::string_view what,
                                    const std::function<absl::Status(gloo::rendezvous::Store&)>& use);

// All-gather of one byte string per rank: rank `rank` sets "<key>/<rank>" to `mine`, waits for every rank's
// key (bounded by the timeout) and returns the values in rank order. Errors as UseStore, naming `what`.
[[nodiscard]] absl::StatusOr<std::vector<std::string>> AllGatherThroughStore(const StoreLocation& location,
                                                                             std::string_view what,
                                                                             const std::string& key, int rank,
                                                                             int size, std::string_view mine);

}  // namespace tessera
