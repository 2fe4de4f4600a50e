#include "core/tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstdio>
#include <memory>

#include "core/str_cat.h"

namespace tessera {
namespace {

using grpc::experimental::FileWatcherCertificateProvider;

// The reason of OpenSSL's latest error, and the queue cleared.
std::string OpenSslError() {
  const unsigned long code = ERR_get_error();  // NOLINT(google-runtime-int): OpenSSL's type
  ERR_clear_error();
  if (code == 0) return "no PEM data";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

absl::StatusOr<File> Open(const std::string& path, std::string_view what, std::string_view role) {
  File f(std::fopen(path.c_str(), "r"));
  if (f == nullptr) {
    return absl::InvalidArgumentError(Cat(what, ": cannot read the ", role, " ", path));
  }
  return f;
}

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;
using KeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

// The first certificate of a PEM file, and how many it holds.
absl::StatusOr<X509Ptr> ReadCertificates(const std::string& path, std::string_view what,
                                         std::string_view role, int& count) {
  absl::StatusOr<File> f = Open(path, what, role);
  if (!f.ok()) return f.status();
  X509Ptr first(nullptr, X509_free);
  count = 0;
  while (X509* cert = PEM_read_X509(f->get(), nullptr, nullptr, nullptr)) {
    if (count++ == 0) {
      first.reset(cert);
    } else {
      X509_free(cert);
    }
  }
  ERR_clear_error();  // the end of the file reads as an error
  if (count == 0) {
    return absl::InvalidArgumentError(Cat(what, ": the ", role, " ", path, " holds no PEM certificate"));
  }
  return first;
}

}  // namespace

absl::Status CheckTlsFiles(const TlsFiles& files, std::string_view what, bool need_identity) {
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(Cat(what,
                                          ": a certificate needs its key and a key its certificate (got ",
                                          files.cert.empty() ? "a key" : "a certificate", " only)"));
  }
  if (need_identity && files.cert.empty()) {
    return absl::InvalidArgumentError(Cat(what, ": TLS needs a certificate and its key"));
  }
  if (!files.cert.empty()) {
    int count = 0;
    absl::StatusOr<X509Ptr> cert = ReadCertificates(files.cert, what, "certificate", count);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<File> f = Open(files.key, what, "private key");
    if (!f.ok()) return f.status();
    KeyPtr key(PEM_read_PrivateKey(f->get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
    if (key == nullptr) {
      return absl::InvalidArgumentError(
          Cat(what, ": the private key ", files.key, " is not a PEM private key (", OpenSslError(), ")"));
    }
    if (X509_check_private_key(cert->get(), key.get()) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          Cat(what, ": the private key ", files.key, " is not the key of the certificate ", files.cert));
    }
  }
  if (!files.ca.empty()) {
    int count = 0;
    absl::StatusOr<X509Ptr> ca = ReadCertificates(files.ca, what, "CA bundle", count);
    if (!ca.ok()) return ca.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> GrpcServerCredentials(const TlsFiles& files,
                                                                               std::string_view what) {
  if (files.empty()) return grpc::InsecureServerCredentials();
  if (absl::Status s = CheckTlsFiles(files, what, /*need_identity=*/true); !s.ok()) return s;
  auto provider =
      std::make_shared<FileWatcherCertificateProvider>(files.key, files.cert, files.ca, kTlsReloadSeconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!files.ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> GrpcChannelCredentials(const TlsFiles& files,
                                                                                 std::string_view what) {
  if (files.empty()) return grpc::InsecureChannelCredentials();
  if (absl::Status s = CheckTlsFiles(files, what, /*need_identity=*/false); !s.ok()) return s;
  grpc::experimental::TlsChannelCredentialsOptions options;
  if (!files.ca.empty() || !files.cert.empty()) {
    options.set_certificate_provider(
        std::make_shared<FileWatcherCertificateProvider>(files.key, files.cert, files.ca, kTlsReloadSeconds));
  }
  if (!files.ca.empty()) options.watch_root_certs();  // else the system's roots
  if (!files.cert.empty()) options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

}  // namespace tessera
