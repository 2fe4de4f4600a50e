// What `tessera bench` sends and what it measures per request, shared by the prompt sources, the gRPC and
// HTTP clients and the report.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tessera::tools::bench {

using Clock = std::chrono::steady_clock;

// One request of the run: a text prompt (tokenized by the server) or token ids, and how many tokens to ask
// for.
struct BenchRequest {
  std::optional<std::string> text;  // set: a text prompt; else token_ids
  std::vector<int32_t> token_ids;
  int max_tokens = 0;
  bool ignore_eos = false;
};

// The timing of one request. Times are seconds; `start_s` is from the start of the run.
struct RequestResult {
  bool ok = false;
  std::string error;          // when !ok: "CODE: message", CODE a gRPC status code name (e.g. "UNAVAILABLE")
  std::string code;           // when !ok: the CODE alone, for counting failures
  double start_s = 0;         // when the request was sent
  double ttft_s = 0;          // first token
  double e2e_s = 0;           // last event
  std::vector<double> itl_s;  // gaps between successive streamed chunks that carried tokens
  int input_tokens = 0;       // as the server counted them (the header / usage), else the ids sent
  int output_tokens = 0;
};

// A client that sends one streamed completion and times it. Implementations are safe to call from many
// threads at once; every failure (connection, status, a malformed stream) is reported in the result.
class BenchClient {
 public:
  virtual ~BenchClient() = default;
  // Sends `request` now; `run_start` is the run's time zero for RequestResult::start_s.
  virtual RequestResult Send(const BenchRequest& request, Clock::time_point run_start) = 0;
};

}  // namespace tessera::tools::bench
