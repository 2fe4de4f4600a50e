// CheckTlsFiles and the gRPC credentials on the test PKI (tests/data/tls) and on malformed files.
#include "core/tls.h"

#include <gmock/gmock.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace tessera {
namespace {

using ::testing::HasSubstr;

std::string Pki(const std::string& name) { return std::string(TESSERA_TLS_DIR) + "/" + name; }

// A file of `text` in the test's temporary directory.
std::string Write(const std::string& name, const std::string& text) {
  const std::string path = (std::filesystem::temp_directory_path() / ("tessera_tls_test_" + name)).string();
  std::ofstream(path) << text;
  return path;
}

TEST(CheckTlsFilesTest, AcceptsTheTestIdentitiesAndEmptyFiles) {
  EXPECT_TRUE(
      CheckTlsFiles({.cert = Pki("server.pem"), .key = Pki("server.key"), .ca = Pki("ca.pem")}, "--x", true)
          .ok());
  EXPECT_TRUE(CheckTlsFiles({.cert = "", .key = "", .ca = Pki("ca.pem")}, "--x", false).ok());
  EXPECT_TRUE(CheckTlsFiles({}, "--x", false).ok());
}

TEST(CheckTlsFilesTest, NamesTheFlagAndTheFileOfEachProblem) {
  struct Case {
    TlsFiles files;
    bool need_identity;
    std::string message;
  };
  const std::string garbage = Write("garbage.pem", "not PEM at all\n");
  const std::string truncated = Write("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
  const std::string bad_key =
      Write("bad.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  const Case cases[] = {
      {{.cert = "", .key = "", .ca = ""}, true, "needs a certificate and its key"},
      {{.cert = Pki("server.pem"), .key = "", .ca = ""}, false, "got a certificate only"},
      {{.cert = "", .key = Pki("server.key"), .ca = ""}, false, "got a key only"},
      {{.cert = Pki("absent.pem"), .key = Pki("server.key"), .ca = ""}, false, "cannot read the certificate"},
      {{.cert = garbage, .key = Pki("server.key"), .ca = ""}, false, "holds no PEM certificate"},
      {{.cert = truncated, .key = Pki("server.key"), .ca = ""}, false, "holds no PEM certificate"},
      {{.cert = Pki("server.pem"), .key = Pki("absent.key"), .ca = ""}, false, "cannot read the private key"},
      {{.cert = Pki("server.pem"), .key = bad_key, .ca = ""}, false, "is not a PEM private key"},
      {{.cert = Pki("server.pem"), .key = Pki("worker.key"), .ca = ""},
       false,
       "is not the key of the certificate"},
      {{.cert = "", .key = "", .ca = garbage}, false, "CA bundle"},
  };
  for (const Case& c : cases) {
    const absl::Status s = CheckTlsFiles(c.files, "--flag", c.need_identity);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(s.message(), HasSubstr("--flag")) << c.message;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
  }
  EXPECT_THAT(CheckTlsFiles({.cert = garbage, .key = Pki("server.key"), .ca = ""}, "--flag", false).message(),
              HasSubstr(garbage));
}

TEST(GrpcCredentialsTest, EmptyFilesAreInsecureAndBadFilesAreErrors) {
  EXPECT_TRUE(GrpcServerCredentials({}, "--x").ok());
  EXPECT_TRUE(GrpcChannelCredentials({}, "--x").ok());
  EXPECT_TRUE(
      GrpcServerCredentials({.cert = Pki("server.pem"), .key = Pki("server.key"), .ca = Pki("ca.pem")}, "--x")
          .ok());
  EXPECT_TRUE(GrpcChannelCredentials(
                  {.cert = Pki("worker.pem"), .key = Pki("worker.key"), .ca = Pki("ca.pem")}, "--x")
                  .ok());
  // A server needs an identity; a CA alone is not one.
  EXPECT_EQ(GrpcServerCredentials({.cert = "", .key = "", .ca = Pki("ca.pem")}, "--x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GrpcChannelCredentials({.cert = "", .key = "", .ca = Pki("absent.pem")}, "--x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera
