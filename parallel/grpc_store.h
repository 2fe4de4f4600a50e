// GrpcStore: Gloo's rendezvous Store backed by the coordinator's Rendezvous gRPC service. Internal to
// parallel/ (it exposes Gloo types): GlooCommunicator uses it when GlooOptions::store_address is set.
#pragma once

#include <gloo/rendezvous/store.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/tls.h"
#include "tessera/control/v1/rendezvous.grpc.pb.h"

namespace tessera {

class GrpcStore final : public gloo::rendezvous::Store {
 public:
  // `address` is the coordinator's HOST:PORT; every call is bounded by `timeout` and carries `token` (the
  // epoch's store token from InitComm) as metadata kStoreTokenMetadata (core/secret.h) when it is not empty.
  // `tls`: the worker's control-plane TLS files (mutual TLS with the coordinator); empty: plaintext. Throws
  // gloo::IoException when they cannot be used (the worker checked them at start-up).
  GrpcStore(const std::string& address, std::chrono::milliseconds timeout, std::string token = "",
            const TlsFiles& tls = {});

  // gloo::rendezvous::Store. Gloo expects failures as exceptions: these throw gloo::IoException naming the
  // key and the gRPC status (the communicator converts it to a Status at its edge).
  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::string address_;
  std::chrono::milliseconds timeout_;
  std::string token_;
  std::unique_ptr<control::v1::Rendezvous::Stub> stub_;
};

}  // namespace tessera
