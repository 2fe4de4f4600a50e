// The HTTP side of `tessera bench`: OpenAI /v1/completions with stream=true over Boost.Beast (one connection
// per request), reading the server-sent events as they arrive.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/bench/request.h"

namespace tessera::tools::bench {

// Splits a byte stream of server-sent events into the payloads of their "data:" lines. Not thread-safe.
class SseParser {
 public:
  // Appends `bytes` and returns the data of each event they complete (an event ends at a blank line; several
  // data lines of one event are joined with "\n"; "\r\n" line ends are accepted; comments are dropped).
  std::vector<std::string> Feed(const std::string& bytes);

 private:
  std::string buffer_;
};

class HttpBenchClient : public BenchClient {
 public:
  // `server` is HOST:PORT; `model` is the "model" field of every request; `api_key` (when set) goes with
  // every request as `Authorization: Bearer KEY`.
  // `tls_ca` (when set): HTTPS, the server's certificate verified against this PEM CA file and its host name.
  HttpBenchClient(const std::string& server, const std::string& model, const std::string& api_key = "",
                  const std::string& tls_ca = "");
  RequestResult Send(const BenchRequest& request, Clock::time_point run_start) override;

 private:
  std::string host_, port_, model_, authorization_, tls_ca_;
};

// The first model id of GET /v1/models on `server`. UNAVAILABLE "the server does not answer HTTP at SERVER:
// ..." when it cannot be reached or does not speak HTTP; INTERNAL for an answer without a model id.
[[nodiscard]] absl::StatusOr<std::string> QueryHttpModel(const std::string& server,
                                                         const std::string& api_key = "",
                                                         const std::string& tls_ca = "");

}  // namespace tessera::tools::bench
