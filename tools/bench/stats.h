// The arithmetic of `tessera bench`, kept free of I/O so it is testable alone: percentiles of latency
// samples, the Poisson arrival schedule, and latency percentiles per time window of the run.
#pragma once

#include <cstdint>
#include <vector>

namespace tessera::tools::bench {

// Mean and percentiles of a set of samples, in the samples' unit. All zero (count 0) for no samples.
struct LatencySummary {
  int64_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};

// The p-th percentile (p in [0, 100]) of `sorted` (ascending, non-empty) with linear interpolation between
// closest ranks, as numpy.percentile's default: rank = p / 100 * (n - 1).
double Percentile(const std::vector<double>& sorted, double p);

// Mean, p50, p90 and p99 of `samples` (any order).
LatencySummary Summarize(std::vector<double> samples);

// Arrival offsets in seconds from the start of the run for `n` requests: a Poisson process of `rate`
// requests per second (exponential gaps drawn from a generator seeded with `seed`; the first request
// arrives after one gap, as vLLM's benchmark_serving), or all at 0 when `rate` is infinite. Non-decreasing.
// The same (n, rate, seed) give the same schedule. Requires rate > 0.
std::vector<double> PoissonArrivals(int n, double rate, uint64_t seed);

// One sample placed in the run: when its request was sent (seconds from the start) and its latencies (ms).
struct TimedLatency {
  double start_s = 0;
  double ttft_ms = 0, e2e_ms = 0;
};

// Percentiles of the requests sent within [start_s, start_s + width) of the run.
struct LatencyWindow {
  double start_s = 0;
  LatencySummary ttft_ms, e2e_ms;
};

// Groups `samples` into windows of `width_s` seconds from 0 by their start time and summarizes each
// non-empty one, in time order. Requires width_s > 0.
std::vector<LatencyWindow> WindowedLatencies(const std::vector<TimedLatency>& samples, double width_s);

// The window width for a run of `duration_s`: one second, widened so the run has at most `max_windows`.
double WindowWidth(double duration_s, int max_windows = 60);

}  // namespace tessera::tools::bench
