// TLS for Tessera's gRPC servers and channels: the public API (server-side TLS) and the control plane (mutual
// TLS between the coordinator and its workers). PEM files are checked once at start-up, so a wrong path, a
// key that does not match its certificate or a file that is not PEM is an error naming the file, not a
// handshake that fails later; after that gRPC re-reads the files every kTlsReloadSeconds, so a renewed
// certificate (cert-manager rewriting a Kubernetes Secret) is served without a restart.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace tessera {

// How often certificate files are re-read (gRPC's file watcher; the HTTP server checks their modification
// time as often).
inline constexpr unsigned kTlsReloadSeconds = 2;

// The PEM files of one side of a TLS connection. Empty paths are not used.
struct TlsFiles {
  std::string cert;  // certificate chain: this side's identity
  std::string key;   // the private key of `cert`
  std::string ca;    // CA bundle the peer's certificate must chain to
  bool empty() const { return cert.empty() && key.empty() && ca.empty(); }
};

// OK when the files make a usable identity: `cert` and `key` both set or both empty, each readable PEM, the
// key the certificate's, `ca` (when set) a readable PEM bundle of at least one certificate. INVALID_ARGUMENT
// otherwise, naming `what` (e.g. "--tls-cert") and the file. `need_identity`: cert and key are required.
[[nodiscard]] absl::Status CheckTlsFiles(const TlsFiles& files, std::string_view what, bool need_identity);

// Server credentials: insecure when `files` is empty; else TLS with cert + key (required), re-read on change;
// with `ca`, clients must present a certificate that chains to it (mutual TLS). Checks the files first.
[[nodiscard]] absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> GrpcServerCredentials(
    const TlsFiles& files, std::string_view what);

// Channel credentials: insecure when `files` is empty; else TLS verifying the server against `ca` (the
// system's roots when empty) and its host name, presenting cert + key when set (mutual TLS), re-read on
// change.
[[nodiscard]] absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> GrpcChannelCredentials(
    const TlsFiles& files, std::string_view what);

}  // namespace tessera
