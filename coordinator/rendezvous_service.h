// RendezvousService: the coordinator's in-memory key-value store over gRPC (tessera.control.v1.Rendezvous),
// through which workers bootstrap their communicators. Thread-safe; Wait and Get block a server thread until
// the keys exist, the call's deadline passes or Shutdown() is called. Once SetToken gave it a token, it
// answers only calls that carry it (metadata kStoreTokenMetadata, core/secret.h: the coordinator hands each
// epoch's token to its registered workers in InitComm), and every other call is UNAUTHENTICATED.
#pragma once

#include <map>
#include <string>

#include "absl/synchronization/mutex.h"
#include "tessera/control/v1/rendezvous.grpc.pb.h"

namespace tessera {

class RendezvousService final : public control::v1::Rendezvous::Service {
 public:
  // From now on, calls must carry `token` (compared in constant time); empty: every call is answered.
  void SetToken(const std::string& token);

  grpc::Status Set(grpc::ServerContext* context, const control::v1::SetRequest* request,
                   control::v1::SetResponse* response) override;
  grpc::Status Wait(grpc::ServerContext* context, const control::v1::WaitRequest* request,
                    control::v1::WaitResponse* response) override;
  grpc::Status Get(grpc::ServerContext* context, const control::v1::GetRequest* request,
                   control::v1::GetResponse* response) override;

  // Wakes every waiting call (they fail with UNAVAILABLE) and refuses new waits.
  void Shutdown();
  // Removes every key starting with `prefix` (a group torn down before it is formed again).
  void EraseGroup(const std::string& prefix);
  // The groups are re-formed under `live_prefix` (a new epoch's "epoch<E>/"): every key outside it is erased,
  // and waits for such keys, now and later, fail at once with ABORTED (a rank still joining an old group
  // gives up instead of waiting out its timeout).
  void RetireAllBut(const std::string& live_prefix);

 private:
  // Blocks until every key exists; false (with *status set) on deadline, cancellation or shutdown.
  bool AwaitKeys(grpc::ServerContext* context, const std::vector<std::string>& keys, grpc::Status* status);
  // UNAUTHENTICATED unless the call carries the token (or there is none).
  grpc::Status CheckToken(const grpc::ServerContext& context);

  absl::Mutex mu_;
  std::map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::string live_prefix_ ABSL_GUARDED_BY(mu_);  // empty: every key is live
  std::string token_ ABSL_GUARDED_BY(mu_);        // empty: no token asked for
};

}  // namespace tessera
