// `tessera bench`: the flags, the prompts and schedule, the run, and the report files.
#include "tools/bench_command.h"

#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/tls.h"
#include "tools/bench/chart.h"
#include "tools/bench/grpc_client.h"
#include "tools/bench/http_client.h"
#include "tools/bench/prompts.h"
#include "tools/bench/report.h"
#include "tools/bench/runner.h"
#include "tools/bench/stats.h"
#include "tools/commands.h"

namespace tessera::tools {
namespace {

using bench::BenchRequest;

// Token ids for random prompts when the server does not report its vocabulary (below every Llama-family
// vocabulary, above the usual special and byte tokens).
constexpr int32_t kSafeIdBegin = 1000, kSafeIdEnd = 20000;

int Usage(std::ostream& err, const std::string& message) {
  err << "tessera bench: " << message << "\n";
  return 2;
}

int CheckOptions(const BenchOptions& o, std::ostream& err) {
  const bool random = o.random_input_len > 0 || o.random_output_len > 0;
  if (o.dataset.empty() == !random) {
    return Usage(err, "give either --dataset or --random-input-len with --random-output-len");
  }
  if (random && (o.random_input_len <= 0 || o.random_output_len <= 0)) {
    return Usage(err, "--random-input-len and --random-output-len must both be positive");
  }
  if (o.num_prompts <= 0)
    return Usage(err, absl::StrCat("--num-prompts must be positive, got ", o.num_prompts));
  if (!(o.request_rate > 0)) return Usage(err, "--request-rate must be positive (or inf)");
  if (o.max_concurrency < 0 || o.max_concurrency > kMaxBenchConcurrency) {
    return Usage(err, absl::StrCat("--max-concurrency must be in [1, ", kMaxBenchConcurrency, "], got ",
                                   o.max_concurrency));
  }
  if (o.dataset_max_tokens <= 0) return Usage(err, "--max-tokens must be positive");
  return 0;
}

// The random prompts' id range: [1000, vocab_size) from the server's model list over gRPC, else the safe one.
absl::StatusOr<std::pair<int32_t, int32_t>> RandomIdRange(
    const BenchOptions& o, const std::shared_ptr<grpc::ChannelCredentials>& credentials, std::ostream& err) {
  if (o.backend == BenchBackend::kHttp) return std::pair{kSafeIdBegin, kSafeIdEnd};
  absl::StatusOr<int> vocab =
      bench::QueryVocabSize(o.server, o.model, o.api_key, absl::Seconds(10), credentials);
  if (vocab.ok()) {
    const int32_t begin = *vocab > 2 * kSafeIdBegin ? kSafeIdBegin : 0;
    return std::pair{begin, static_cast<int32_t>(*vocab)};
  }
  const absl::StatusCode code = vocab.status().code();
  if (code == absl::StatusCode::kNotFound || code == absl::StatusCode::kFailedPrecondition ||
      code == absl::StatusCode::kUnimplemented) {
    err << "tessera bench: " << vocab.status().message() << "; drawing prompt ids from [" << kSafeIdBegin
        << ", " << kSafeIdEnd << ")\n";
    return std::pair{kSafeIdBegin, kSafeIdEnd};
  }
  return absl::UnavailableError(
      absl::StrCat("the server does not answer gRPC at ", o.server, ": ", vocab.status().ToString()));
}

void DrawProgress(std::ostream& err, int done, int total) {
  constexpr int kBar = 40;
  const int filled = total > 0 ? done * kBar / total : kBar;
  err << "\r[" << std::string(filled, '#') << std::string(kBar - filled, '.') << "] " << done << "/" << total
      << " requests" << (done == total ? "\n" : "") << std::flush;
}

nlohmann::ordered_json ConfigJson(const BenchOptions& o, const std::string& model, int concurrency) {
  nlohmann::ordered_json config = {{"backend", o.backend == BenchBackend::kGrpc ? "grpc" : "http"},
                                   {"server", o.server},
                                   {"model", model},
                                   {"num_prompts", o.num_prompts}};
  if (o.dataset.empty()) {
    config["random_input_len"] = o.random_input_len;
    config["random_output_len"] = o.random_output_len;
  } else {
    config["dataset"] = o.dataset;
  }
  config["request_rate"] =
      std::isinf(o.request_rate) ? nlohmann::ordered_json("inf") : nlohmann::ordered_json(o.request_rate);
  config["max_concurrency"] = concurrency;
  config["seed"] = o.seed;
  return config;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream file(path);
  file << text;
  file.close();
  if (!file) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

int RunBench(const BenchOptions& o, std::ostream& out, std::ostream& err) {
  if (int code = CheckOptions(o, err); code != 0) return code;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      GrpcChannelCredentials(TlsFiles{.cert = "", .key = "", .ca = o.tls_ca}, "--tls-ca");
  if (!credentials.ok()) return Fail("bench", credentials.status());
  std::string model = o.model;
  if (o.backend == BenchBackend::kHttp && model.empty()) {
    absl::StatusOr<std::string> served = bench::QueryHttpModel(o.server, o.api_key, o.tls_ca);
    if (!served.ok()) return Fail("bench", served.status());
    model = *served;
  }
  std::vector<BenchRequest> requests;
  if (o.dataset.empty()) {
    absl::StatusOr<std::pair<int32_t, int32_t>> range = RandomIdRange(o, *credentials, err);
    if (!range.ok()) return Fail("bench", range.status());
    requests = bench::RandomRequests(o.num_prompts, o.random_input_len, o.random_output_len, range->first,
                                     range->second, o.seed);
  } else {
    absl::StatusOr<std::vector<BenchRequest>> read =
        bench::ReadDataset(o.dataset, o.num_prompts, o.dataset_max_tokens, o.ignore_eos);
    if (!read.ok()) return Fail("bench", read.status());
    requests = *std::move(read);
  }
  const std::vector<double> arrivals = bench::PoissonArrivals(o.num_prompts, o.request_rate, o.seed);
  const int concurrency =
      o.max_concurrency > 0 ? o.max_concurrency : std::min(o.num_prompts, kMaxBenchConcurrency);

  std::unique_ptr<bench::BenchClient> client;
  if (o.backend == BenchBackend::kGrpc) {
    client = std::make_unique<bench::GrpcBenchClient>(o.server, model, o.api_key, *credentials);
  } else {
    client = std::make_unique<bench::HttpBenchClient>(o.server, model, o.api_key, o.tls_ca);
  }
  const bench::RunResult run =
      bench::RunRequests(*client, requests, arrivals, concurrency, [&](int done, int total) {
        if (o.progress) DrawProgress(err, done, total);
      });

  const bench::BenchReport report = bench::MakeReport(run.results, run.duration_s);
  const std::string header = absl::StrFormat(
      "Backend: %s  Server: %s  Request rate: %s  Max concurrency: %d",
      o.backend == BenchBackend::kGrpc ? "grpc" : "http", o.server,
      std::isinf(o.request_rate) ? "inf" : absl::StrFormat("%g/s", o.request_rate), concurrency);
  out << bench::FormatReport(report, header) << std::flush;

  const double width = bench::WindowWidth(run.duration_s);
  const std::vector<bench::LatencyWindow> windows =
      bench::WindowedLatencies(bench::TimedLatencies(run.results), width);
  if (!o.out_json.empty()) {
    nlohmann::ordered_json json = bench::ReportJson(report, ConfigJson(o, model, concurrency));
    nlohmann::ordered_json series = nlohmann::ordered_json::array();
    for (const bench::LatencyWindow& w : windows) {
      series.push_back({{"start_s", w.start_s},
                        {"requests", w.e2e_ms.count},
                        {"ttft_ms", {{"p50", w.ttft_ms.p50}, {"p90", w.ttft_ms.p90}, {"p99", w.ttft_ms.p99}}},
                        {"e2e_ms", {{"p50", w.e2e_ms.p50}, {"p90", w.e2e_ms.p90}, {"p99", w.e2e_ms.p99}}}});
    }
    json["window_s"] = width;
    json["windows"] = series;
    if (absl::Status s = WriteFile(
            o.out_json, json.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n");
        !s.ok()) {
      return Fail("bench", s);
    }
  }
  if (!o.chart_svg.empty()) {
    const std::string title = absl::StrCat("tessera bench: ", header);
    if (absl::Status s = WriteFile(o.chart_svg, bench::LatencyChartSvg(windows, width, title)); !s.ok()) {
      return Fail("bench", s);
    }
  }
  if (report.completed == 0) {
    err << "tessera bench: every request failed; the first: " << report.first_error << "\n";
    return 1;
  }
  return 0;
}

void AddBenchCommand(CLI::App& app, std::vector<Subcommand>& commands) {
  auto options = std::make_shared<BenchOptions>();
  auto rate = std::make_shared<std::string>("inf");
  BenchOptions& o = *options;
  CLI::App* cmd =
      app.add_subcommand("bench", "Load-test a running Tessera server (gRPC or HTTP) and report latencies");
  cmd->add_option("--server", o.server, "The server's address, HOST:PORT")->required();
  cmd->add_option("--api-key", o.api_key, "The server's API key (prefer the environment variable: a flag shows in ps)")
      ->envname("TESSERA_API_KEY");
  cmd->add_option("--tls-ca", o.tls_ca,
                  "TLS (gRPC and HTTPS): the PEM CA bundle the server's certificate chains to")
      ->envname("TESSERA_TLS_CA");
  auto* grpc_flag = cmd->add_flag_callback(
      "--grpc", [options] { options->backend = BenchBackend::kGrpc; }, "Streamed gRPC CompleteStream calls");
  auto* http_flag = cmd->add_flag_callback(
      "--http", [options] { options->backend = BenchBackend::kHttp; },
      "Streamed OpenAI /v1/completions over HTTP (server-sent events)");
  grpc_flag->excludes(http_flag);
  cmd->add_option("--model", o.model, "Model name (default: the served model)");
  cmd->add_option(
      "--dataset", o.dataset,
      "JSONL prompts: {\"prompt\": TEXT} or {\"prompt_token_ids\": [...]}, optional \"max_tokens\"");
  cmd->add_option("--random-input-len", o.random_input_len, "Random prompts of this many token ids");
  cmd->add_option("--random-output-len", o.random_output_len,
                  "Tokens each random prompt asks for (ignore_eos)");
  cmd->add_option("--max-tokens", o.dataset_max_tokens, "Tokens for dataset lines without max_tokens")
      ->default_val(128);
  cmd->add_flag("--ignore-eos", o.ignore_eos, "Dataset prompts generate past eos");
  cmd->add_option("--num-prompts", o.num_prompts, "Requests to send")->default_val(100);
  cmd->add_option("--request-rate", *rate, "Requests per second, Poisson arrivals; inf sends all at once")
      ->default_val("inf");
  cmd->add_option("--max-concurrency", o.max_concurrency,
                  absl::StrCat("Most requests in flight (one thread each; default: all, at most ",
                               kMaxBenchConcurrency, ")"));
  cmd->add_option("--seed", o.seed, "Seed of the arrival times and random prompts")->default_val(0);
  cmd->add_option("--out", o.out_json, "Write the results as JSON here");
  cmd->add_option("--chart", o.chart_svg, "Write an SVG chart of TTFT and E2E percentiles over the run here");
  commands.push_back({cmd, [options, rate, grpc_flag, http_flag] {
                        if (grpc_flag->count() + http_flag->count() != 1) {
                          return Usage(std::cerr, "give exactly one of --grpc and --http");
                        }
                        if (*rate == "inf" || *rate == "INF" || *rate == "Inf") {
                          options->request_rate = std::numeric_limits<double>::infinity();
                        } else {
                          char* end = nullptr;
                          options->request_rate = std::strtod(rate->c_str(), &end);
                          if (rate->empty() || *end != '\0' || !(options->request_rate > 0) ||
                              std::isinf(options->request_rate)) {
                            return Usage(std::cerr, absl::StrCat("--request-rate \"", *rate,
                                                                 "\" is not a positive number or inf"));
                          }
                        }
                        options->progress = isatty(STDERR_FILENO) != 0;
                        return RunBench(*options, std::cout, std::cerr);
                      }});
}

}  // namespace tessera::tools
