// Metrics: a small thread-safe registry of counters, gauges and fixed-bucket histograms with optional labels,
// rendered in the Prometheus text exposition format (version 0.0.4), and EngineMetrics, the engine's metric
// set under vLLM V1's names with a `tessera:` prefix (so that dashboards port by a rename).
//
// Locks, all leaves to their callers: MetricsRegistry::mu_ -> MetricFamily::mu_ -> Histogram::mu_ (in that
// order, never the reverse; Render takes them in that order). Counters and gauges are atomics. A caller may
// hold its own lock while it records (the Scheduler records under its mu_: scheduler mu_ -> Histogram::mu_);
// no metrics call calls out. Recording (Add, Set, Observe) never allocates.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tessera {

enum class MetricType { kCounter, kGauge, kHistogram };

// A monotonically increasing value. Thread-safe.
class Counter {
 public:
  // `value` must be >= 0 (CHECKed).
  void Add(double value = 1);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// A value that goes up and down. Thread-safe.
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double value) { value_.fetch_add(value, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into fixed buckets (upper bounds, increasing; +Inf is implicit). Thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value) ABSL_LOCKS_EXCLUDED(mu_);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // [bounds + 1]: observations <= bounds[i]; the last is +Inf (= count)
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;                             // a leaf: see the top
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // [bounds + 1], per bucket (not cumulative)
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
};

// One metric name with its help, type, label names and one child per distinct tuple of label values.
class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
               std::vector<double> bounds);

  // The child for these label values (as many as label names, CHECKed), created on first use; its address is
  // stable for the registry's life. Allocates on first use: resolve children once, not per observation.
  Counter& counter(const std::vector<std::string>& label_values) ABSL_LOCKS_EXCLUDED(mu_);
  Gauge& gauge(const std::vector<std::string>& label_values) ABSL_LOCKS_EXCLUDED(mu_);
  Histogram& histogram(const std::vector<std::string>& label_values) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& name() const { return name_; }
  MetricType type() const { return type_; }
  // Appends this family's # HELP, # TYPE and sample lines to `out`.
  void Render(std::string& out) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Child {
    Counter counter;
    Gauge gauge;
    std::unique_ptr<Histogram> histogram;  // kHistogram only
  };
  Child& ChildFor(const std::vector<std::string>& label_values, MetricType type) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // kHistogram only
  mutable absl::Mutex mu_;            // after MetricsRegistry::mu_, before Histogram::mu_
  std::map<std::vector<std::string>, std::unique_ptr<Child>> children_ ABSL_GUARDED_BY(mu_);
};

// Owns metric families and renders them all. Thread-safe.
class MetricsRegistry {
 public:
  // Registers a family. `name` must match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* (not
  // "le" for histograms), the name must be new and histogram bounds increasing and finite: all CHECKed (the
  // names are our own code's). The family lives as long as the registry.
  MetricFamily& AddCounter(const std::string& name, const std::string& help,
                           std::vector<std::string> label_names = {}) ABSL_LOCKS_EXCLUDED(mu_);
  MetricFamily& AddGauge(const std::string& name, const std::string& help,
                         std::vector<std::string> label_names = {}) ABSL_LOCKS_EXCLUDED(mu_);
  MetricFamily& AddHistogram(const std::string& name, const std::string& help,
                             std::vector<std::string> label_names, std::vector<double> bounds)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Every family in registration order, in the Prometheus text format (Content-Type:
  // "text/plain; version=0.0.4; charset=utf-8"). A family without children renders only # HELP and # TYPE.
  std::string Render() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  MetricFamily& Add(const std::string& name, const std::string& help, MetricType type,
                    std::vector<std::string> label_names, std::vector<double> bounds)
      ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;  // first in the order (see the top)
  std::vector<std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mu_);
};

// The Prometheus text format's pieces, exposed for tests: a sample value ("+Inf", "-Inf", "NaN", else the
// shortest decimal that reads back exactly), a label value with \\, \" and \n escaped, and a help text with
// \\ and \n escaped.
std::string FormatMetricValue(double value);
std::string EscapeLabelValue(const std::string& value);
std::string EscapeHelp(const std::string& help);

// The finish_reason label values of tessera:request_success_total.
enum class FinishLabel { kStop, kLength, kAbort, kError };
inline constexpr int kNumFinishLabels = 4;

// The engine's metrics for one served model, vLLM V1's names with a `tessera:` prefix, every child labelled
// model_name="<model id>" and resolved at construction (recording is an atomic add or one histogram lock).
// Requests are counted per choice, as vLLM V1 counts each of n parallel samples as its own request.
// Thread-safe; it must outlive whatever records into it (the Scheduler).
struct EngineMetrics {
  EngineMetrics(MetricsRegistry& registry, const std::string& model_name);

  Gauge& num_requests_running;                                   // choices admitted and not yet retired
  Gauge& num_requests_waiting;                                   // choices waiting for admission
  Gauge& kv_cache_usage_perc;                                    // KV blocks in use / all blocks, 0..1
  Counter& prompt_tokens_total;                                  // prompt tokens computed (prefill chunks)
  Counter& generation_tokens_total;                              // tokens sampled
  std::array<Counter*, kNumFinishLabels> request_success_total;  // by FinishLabel
  Histogram& time_to_first_token_seconds;                        // arrival -> first token of a choice
  Histogram& inter_token_latency_seconds;                        // between two tokens of a choice
  Histogram& e2e_request_latency_seconds;   // arrival -> last token of a choice (stop or length)
  Histogram& request_queue_time_seconds;    // arrival -> admission
  Histogram& request_prefill_time_seconds;  // admission -> first token
  Histogram& request_decode_time_seconds;   // first token -> last token
  Histogram& iteration_tokens_total;        // tokens scheduled in one step
  Histogram& worker_step_seconds;           // the output rank's worker_seconds of one step
  Histogram& control_plane_seconds;         // one step's round trip minus its worker_seconds
  Counter& num_preemptions_total;           // sequences preempted (blocks freed, resumed later)
  Counter& prefix_cache_queries_total;      // prompt tokens looked up in the prefix cache
  Counter& prefix_cache_hits_total;         // of them, found in the cache

  Counter& request_success(FinishLabel label) { return *request_success_total[static_cast<int>(label)]; }
};

}  // namespace tessera
