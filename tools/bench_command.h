// `tessera bench`: a load generator for a running Tessera server, like vLLM's benchmark_serving. It sends
// streamed completions (gRPC CompleteStream or OpenAI HTTP /v1/completions) on a Poisson schedule or as fast
// as a concurrency cap allows, and reports TTFT, ITL, TPOT and E2E latency and the throughput.
#pragma once

#include <cstdint>
#include <limits>
#include <ostream>
#include <string>

namespace tessera::tools {

enum class BenchBackend { kGrpc, kHttp };

struct BenchOptions {
  std::string server;   // HOST:PORT
  std::string api_key;  // sent with every request when set (--api-key / TESSERA_API_KEY)
  std::string tls_ca;   // --tls-ca: TLS, the server's certificate verified against this PEM CA file
  BenchBackend backend = BenchBackend::kGrpc;
  std::string model;  // empty: the served model (gRPC), GET /v1/models' first (HTTP)
  // The prompts: a JSONL dataset, else random token ids.
  std::string dataset;
  int random_input_len = 0, random_output_len = 0;
  int dataset_max_tokens = 128;  // for dataset lines without "max_tokens"
  bool ignore_eos = false;       // for dataset prompts (random ones always ignore eos)
  int num_prompts = 100;
  double request_rate = std::numeric_limits<double>::infinity();  // requests/s, Poisson; inf: all at once
  int max_concurrency = 0;                                        // 0: every request may be in flight
  uint64_t seed = 0;
  std::string out_json, chart_svg;  // empty: not written
  bool progress = false;            // draw a progress bar on stderr
};

// The most requests in flight at once (one thread each).
inline constexpr int kMaxBenchConcurrency = 1024;

// Runs the benchmark: the summary table on `out`, the progress bar (when options.progress) and diagnostics on
// `err`, and --out / --chart files. Returns 0 when at least one request succeeded; 1, after one line on
// `err`, when every request failed, the server could not be asked what it serves, or a file could not be read
// or written; 2 for options that make no run.
int RunBench(const BenchOptions& options, std::ostream& out, std::ostream& err);

}  // namespace tessera::tools
