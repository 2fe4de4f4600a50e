#include "tools/bench/report.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera::tools::bench {

BenchReport MakeReport(const std::vector<RequestResult>& results, double duration_s) {
  BenchReport report;
  report.duration_s = duration_s;
  std::vector<double> ttft, itl, tpot, e2e;
  for (const RequestResult& r : results) {
    if (!r.ok) {
      ++report.failed;
      ++report.failures[r.code];
      if (report.first_error.empty()) report.first_error = r.error;
      continue;
    }
    ++report.completed;
    report.input_tokens += r.input_tokens;
    report.output_tokens += r.output_tokens;
    ttft.push_back(r.ttft_s * 1e3);
    e2e.push_back(r.e2e_s * 1e3);
    for (double gap : r.itl_s) itl.push_back(gap * 1e3);
    if (r.output_tokens > 1) tpot.push_back((r.e2e_s - r.ttft_s) * 1e3 / (r.output_tokens - 1));
  }
  if (duration_s > 0) {
    report.request_throughput = report.completed / duration_s;
    report.input_throughput = static_cast<double>(report.input_tokens) / duration_s;
    report.output_throughput = static_cast<double>(report.output_tokens) / duration_s;
  }
  report.ttft_ms = Summarize(std::move(ttft));
  report.itl_ms = Summarize(std::move(itl));
  report.tpot_ms = Summarize(std::move(tpot));
  report.e2e_ms = Summarize(std::move(e2e));
  return report;
}

std::string FormatReport(const BenchReport& report, const std::string& header) {
  std::string out = absl::StrCat("============ Serving Benchmark Result ============\n", header, "\n");
  auto row = [&out](const std::string& name, const std::string& value) {
    absl::StrAppendFormat(&out, "%-36s %13s\n", name, value);
  };
  row("Successful requests:", absl::StrCat(report.completed));
  row("Failed requests:", absl::StrCat(report.failed));
  for (const auto& [code, count] : report.failures) row(absl::StrCat("  ", code, ":"), absl::StrCat(count));
  row("Benchmark duration (s):", absl::StrFormat("%.2f", report.duration_s));
  row("Total input tokens:", absl::StrCat(report.input_tokens));
  row("Total generated tokens:", absl::StrCat(report.output_tokens));
  row("Request throughput (req/s):", absl::StrFormat("%.2f", report.request_throughput));
  row("Input token throughput (tok/s):", absl::StrFormat("%.2f", report.input_throughput));
  row("Output token throughput (tok/s):", absl::StrFormat("%.2f", report.output_throughput));
  absl::StrAppendFormat(&out, "%-14s %10s %10s %10s %10s\n", "Latency (ms)", "mean", "p50", "p90", "p99");
  for (const auto& [name, s] : {std::pair<const char*, const LatencySummary&>{"TTFT", report.ttft_ms},
                                {"ITL", report.itl_ms},
                                {"TPOT", report.tpot_ms},
                                {"E2E", report.e2e_ms}}) {
    absl::StrAppendFormat(&out, "%-14s %10.2f %10.2f %10.2f %10.2f\n", name, s.mean, s.p50, s.p90, s.p99);
  }
  if (!report.first_error.empty()) absl::StrAppend(&out, "First failure: ", report.first_error, "\n");
  out += "==================================================\n";
  return out;
}

namespace {

nlohmann::ordered_json SummaryJson(const LatencySummary& s) {
  return {{"count", s.count}, {"mean", s.mean}, {"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}};
}

}  // namespace

nlohmann::ordered_json ReportJson(const BenchReport& report, const nlohmann::ordered_json& config) {
  nlohmann::ordered_json failures = nlohmann::ordered_json::object();
  for (const auto& [code, count] : report.failures) failures[code] = count;
  return {{"config", config},
          {"completed", report.completed},
          {"failed", report.failed},
          {"failures", failures},
          {"first_error", report.first_error},
          {"duration_s", report.duration_s},
          {"total_input_tokens", report.input_tokens},
          {"total_output_tokens", report.output_tokens},
          {"request_throughput", report.request_throughput},
          {"input_throughput", report.input_throughput},
          {"output_throughput", report.output_throughput},
          {"ttft_ms", SummaryJson(report.ttft_ms)},
          {"itl_ms", SummaryJson(report.itl_ms)},
          {"tpot_ms", SummaryJson(report.tpot_ms)},
          {"e2e_ms", SummaryJson(report.e2e_ms)}};
}

std::vector<TimedLatency> TimedLatencies(const std::vector<RequestResult>& results) {
  std::vector<TimedLatency> samples;
  for (const RequestResult& r : results) {
    if (r.ok) samples.push_back({r.start_s, r.ttft_s * 1e3, r.e2e_s * 1e3});
  }
  return samples;
}

}  // namespace tessera::tools::bench
