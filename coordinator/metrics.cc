#include "coordinator/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

#include "core/check.h"

namespace tessera {
namespace {

bool ValidName(const std::string& name, bool colons) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colons && c == ':') ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// {a="x",b="y"} plus an optional extra label (le), or "" when there are none.
void AppendLabels(std::string& out, const std::vector<std::string>& names,
                  const std::vector<std::string>& values, const char* extra_name = nullptr,
                  const std::string& extra_value = "") {
  if (names.empty() && extra_name == nullptr) return;
  out += '{';
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    out += names[i];
    out += "=\"";
    out += EscapeLabelValue(values[i]);
    out += '"';
  }
  if (extra_name != nullptr) {
    if (!names.empty()) out += ',';
    out += extra_name;
    out += "=\"";
    out += extra_value;
    out += '"';
  }
  out += '}';
}

void AppendSample(std::string& out, const std::string& name, const char* suffix,
                  const std::vector<std::string>& names, const std::vector<std::string>& values, double value,
                  const char* extra_name = nullptr, const std::string& extra_value = "") {
  out += name;
  out += suffix;
  AppendLabels(out, names, values, extra_name, extra_value);
  out += ' ';
  out += FormatMetricValue(value);
  out += '\n';
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Plain decimals where Go's strconv (Prometheus, prometheus_client) writes them: 1e-04 <= |value| < 1e21,
  // so that bucket labels read le="0.0001" as other exporters write them.
  const double magnitude = std::fabs(value);
  const bool fixed = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e21);
  char buffer[64];
  const std::to_chars_result result =
      fixed ? std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::fixed)
            : std::to_chars(buffer, buffer + sizeof(buffer), value);
  TESSERA_CHECK(result.ec == std::errc());
  return std::string(buffer, result.ptr);
}

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(const std::string& help) {
  std::string out;
  out.reserve(help.size());
  for (const char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Counter::Add(double value) {
  TESSERA_CHECK(value >= 0);
  value_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  // The first bucket whose upper bound holds the value (le: <=); past the last bound, +Inf.
  const size_t bucket =
      static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  absl::MutexLock lock(&mu_);
  ++counts_[bucket];
  sum_ += value;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot snapshot;
  absl::MutexLock lock(&mu_);
  snapshot.cumulative.resize(counts_.size());
  uint64_t total = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    total += counts_[i];
    snapshot.cumulative[i] = total;
  }
  snapshot.sum = sum_;
  snapshot.count = total;
  return snapshot;
}

MetricFamily::MetricFamily(std::string name, std::string help, MetricType type,
                           std::vector<std::string> label_names, std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      bounds_(std::move(bounds)) {}

MetricFamily::Child& MetricFamily::ChildFor(const std::vector<std::string>& label_values, MetricType type) {
  TESSERA_CHECK(type == type_);
  TESSERA_CHECK(label_values.size() == label_names_.size());
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Child>& child = children_[label_values];
  if (child == nullptr) {
    child = std::make_unique<Child>();
    if (type_ == MetricType::kHistogram) child->histogram = std::make_unique<Histogram>(bounds_);
  }
  return *child;
}

Counter& MetricFamily::counter(const std::vector<std::string>& label_values) {
  return ChildFor(label_values, MetricType::kCounter).counter;
}

Gauge& MetricFamily::gauge(const std::vector<std::string>& label_values) {
  return ChildFor(label_values, MetricType::kGauge).gauge;
}

Histogram& MetricFamily::histogram(const std::vector<std::string>& label_values) {
  return *ChildFor(label_values, MetricType::kHistogram).histogram;
}

void MetricFamily::Render(std::string& out) const {
  out += "# HELP " + name_ + " " + EscapeHelp(help_) + "\n";
  out += "# TYPE " + name_ + " " + TypeName(type_) + "\n";
  absl::MutexLock lock(&mu_);
  for (const auto& [values, child] : children_) {
    switch (type_) {
      case MetricType::kCounter:
        AppendSample(out, name_, "", label_names_, values, child->counter.value());
        break;
      case MetricType::kGauge:
        AppendSample(out, name_, "", label_names_, values, child->gauge.value());
        break;
      case MetricType::kHistogram: {
        const Histogram::Snapshot snapshot = child->histogram->snapshot();
        for (size_t i = 0; i < snapshot.cumulative.size(); ++i) {
          const std::string le = i < bounds_.size() ? FormatMetricValue(bounds_[i]) : "+Inf";
          AppendSample(out, name_, "_bucket", label_names_, values,
                       static_cast<double>(snapshot.cumulative[i]), "le", le);
        }
        AppendSample(out, name_, "_sum", label_names_, values, snapshot.sum);
        AppendSample(out, name_, "_count", label_names_, values, static_cast<double>(snapshot.count));
        break;
      }
    }
  }
}

MetricFamily& MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                          std::vector<std::string> label_names) {
  return Add(name, help, MetricType::kCounter, std::move(label_names), {});
}

MetricFamily& MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                        std::vector<std::string> label_names) {
  return Add(name, help, MetricType::kGauge, std::move(label_names), {});
}

MetricFamily& MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                            std::vector<std::string> label_names,
                                            std::vector<double> bounds) {
  TESSERA_CHECK(!bounds.empty());
  for (size_t i = 0; i < bounds.size(); ++i) {
    TESSERA_CHECK(std::isfinite(bounds[i]));
    if (i > 0) TESSERA_CHECK(bounds[i] > bounds[i - 1]);
  }
  return Add(name, help, MetricType::kHistogram, std::move(label_names), std::move(bounds));
}

MetricFamily& MetricsRegistry::Add(const std::string& name, const std::string& help, MetricType type,
                                   std::vector<std::string> label_names, std::vector<double> bounds) {
  TESSERA_CHECK(ValidName(name, /*colons=*/true));
  for (const std::string& label : label_names) {
    TESSERA_CHECK(ValidName(label, /*colons=*/false) && label.rfind("__", 0) != 0);
    TESSERA_CHECK(type != MetricType::kHistogram || label != "le");
  }
  absl::MutexLock lock(&mu_);
  for (const auto& family : families_) TESSERA_CHECK(family->name() != name);
  families_.push_back(
      std::make_unique<MetricFamily>(name, help, type, std::move(label_names), std::move(bounds)));
  return *families_.back();
}

std::string MetricsRegistry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& family : families_) family->Render(out);
  return out;
}

namespace {

// vLLM V1's buckets (vllm/v1/metrics/loggers.py).
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                          0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                          20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kInterTokenBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                                0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kRequestLatencyBuckets = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                                    5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const std::vector<double> kIterationTokenBuckets = {1,   8,    16,   32,   64,   128,  256,
                                                    512, 1024, 2048, 4096, 8192, 16384};
// Tessera's own: a step's worker and control-plane time, from 100 us (a decode step on a small model) to 10
// s.
const std::vector<double> kStepBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                          0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};

// tessera:request_success_total's children, by FinishLabel.
std::array<Counter*, kNumFinishLabels> SuccessCounters(MetricsRegistry& r, const std::string& model_name) {
  MetricFamily& family =
      r.AddCounter("tessera:request_success_total", "Count of successfully processed requests.",
                   {"model_name", "finished_reason"});
  const char* reasons[kNumFinishLabels] = {"stop", "length", "abort", "error"};
  std::array<Counter*, kNumFinishLabels> counters;
  for (int i = 0; i < kNumFinishLabels; ++i) counters[i] = &family.counter({model_name, reasons[i]});
  return counters;
}

}  // namespace

EngineMetrics::EngineMetrics(MetricsRegistry& r, const std::string& model_name)
    : num_requests_running(r.AddGauge("tessera:num_requests_running",
                                      "Number of requests in model execution batches.", {"model_name"})
                               .gauge({model_name})),
      num_requests_waiting(r.AddGauge("tessera:num_requests_waiting",
                                      "Number of requests waiting to be processed.", {"model_name"})
                               .gauge({model_name})),
      kv_cache_usage_perc(r.AddGauge("tessera:kv_cache_usage_perc",
                                     "KV-cache usage. 1 means 100 percent usage.", {"model_name"})
                              .gauge({model_name})),
      prompt_tokens_total(
          r.AddCounter("tessera:prompt_tokens_total", "Number of prefill tokens processed.", {"model_name"})
              .counter({model_name})),
      generation_tokens_total(r.AddCounter("tessera:generation_tokens_total",
                                           "Number of generation tokens processed.", {"model_name"})
                                  .counter({model_name})),
      request_success_total(SuccessCounters(r, model_name)),
      time_to_first_token_seconds(r.AddHistogram("tessera:time_to_first_token_seconds",
                                                 "Histogram of time to first token in seconds.",
                                                 {"model_name"}, kTtftBuckets)
                                      .histogram({model_name})),
      inter_token_latency_seconds(r.AddHistogram("tessera:inter_token_latency_seconds",
                                                 "Histogram of inter-token latency in seconds.",
                                                 {"model_name"}, kInterTokenBuckets)
                                      .histogram({model_name})),
      e2e_request_latency_seconds(r.AddHistogram("tessera:e2e_request_latency_seconds",
                                                 "Histogram of e2e request latency in seconds.",
                                                 {"model_name"}, kRequestLatencyBuckets)
                                      .histogram({model_name})),
      request_queue_time_seconds(r.AddHistogram("tessera:request_queue_time_seconds",
                                                "Histogram of time spent in WAITING phase for request.",
                                                {"model_name"}, kRequestLatencyBuckets)
                                     .histogram({model_name})),
      request_prefill_time_seconds(r.AddHistogram("tessera:request_prefill_time_seconds",
                                                  "Histogram of time spent in PREFILL phase for request.",
                                                  {"model_name"}, kRequestLatencyBuckets)
                                       .histogram({model_name})),
      request_decode_time_seconds(r.AddHistogram("tessera:request_decode_time_seconds",
                                                 "Histogram of time spent in DECODE phase for request.",
                                                 {"model_name"}, kRequestLatencyBuckets)
                                      .histogram({model_name})),
      iteration_tokens_total(r.AddHistogram("tessera:iteration_tokens_total",
                                            "Histogram of number of tokens per engine_step.", {"model_name"},
                                            kIterationTokenBuckets)
                                 .histogram({model_name})),
      worker_step_seconds(r.AddHistogram("tessera:worker_step_seconds",
                                         "Histogram of the output rank's time in one step, in seconds.",
                                         {"model_name"}, kStepBuckets)
                              .histogram({model_name})),
      control_plane_seconds(
          r.AddHistogram("tessera:control_plane_seconds",
                         "Histogram of one step's round trip minus the output rank's time in it, in seconds.",
                         {"model_name"}, kStepBuckets)
              .histogram({model_name})),
      num_preemptions_total(r.AddCounter("tessera:num_preemptions_total",
                                         "Cumulative number of preemption from the engine.", {"model_name"})
                                .counter({model_name})),
      prefix_cache_queries_total(
          r.AddCounter("tessera:prefix_cache_queries_total",
                       "Prefix cache queries, in terms of number of queried tokens.", {"model_name"})
              .counter({model_name})),
      prefix_cache_hits_total(r.AddCounter("tessera:prefix_cache_hits_total",
                                           "Prefix cache hits, in terms of number of cached tokens.",
                                           {"model_name"})
                                  .counter({model_name})) {}

}  // namespace tessera
