// The results of a `tessera bench` run: per-request timings reduced to the summary table (stdout) and the
// same numbers as JSON (--out).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tools/bench/request.h"
#include "tools/bench/stats.h"

namespace tessera::tools::bench {

struct BenchReport {
  int completed = 0, failed = 0;
  std::map<std::string, int> failures;  // status code name -> count
  std::string first_error;              // "CODE: message" of the first failure, if any
  double duration_s = 0;
  int64_t input_tokens = 0, output_tokens = 0;                                 // of the successful requests
  double request_throughput = 0, input_throughput = 0, output_throughput = 0;  // per second
  LatencySummary ttft_ms, itl_ms, tpot_ms, e2e_ms;
};

// Reduces `results` of a run that lasted `duration_s` (first send to last answer). TTFT and E2E are over the
// successful requests, ITL over every gap of every successful stream, TPOT ((e2e - ttft) / (output - 1)) over
// the successful requests with more than one output token.
BenchReport MakeReport(const std::vector<RequestResult>& results, double duration_s);

// The summary table printed at the end of a run; `header` names the run (backend, server, schedule).
std::string FormatReport(const BenchReport& report, const std::string& header);

// The report as a JSON object (every table figure, latencies in ms); `config` is stored under "config".
nlohmann::ordered_json ReportJson(const BenchReport& report, const nlohmann::ordered_json& config);

// Per-request samples for the chart: the successful requests' start time, TTFT and E2E in ms.
std::vector<TimedLatency> TimedLatencies(const std::vector<RequestResult>& results);

}  // namespace tessera::tools::bench
