#include "tools/bench/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>

#include "core/check.h"

namespace tessera::tools::bench {

double Percentile(const std::vector<double>& sorted, double p) {
  TESSERA_CHECK(!sorted.empty());
  TESSERA_CHECK(p >= 0 && p <= 100);
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * fraction;
}

LatencySummary Summarize(std::vector<double> samples) {
  LatencySummary summary;
  if (samples.empty()) return summary;
  std::sort(samples.begin(), samples.end());
  summary.count = static_cast<int64_t>(samples.size());
  summary.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(samples.size());
  summary.p50 = Percentile(samples, 50);
  summary.p90 = Percentile(samples, 90);
  summary.p99 = Percentile(samples, 99);
  return summary;
}

std::vector<double> PoissonArrivals(int n, double rate, uint64_t seed) {
  TESSERA_CHECK(rate > 0);
  std::vector<double> arrivals(std::max(n, 0), 0.0);
  if (std::isinf(rate)) return arrivals;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  double t = 0;
  for (double& arrival : arrivals) {
    t += gap(rng);
    arrival = t;
  }
  return arrivals;
}

std::vector<LatencyWindow> WindowedLatencies(const std::vector<TimedLatency>& samples, double width_s) {
  TESSERA_CHECK(width_s > 0);
  std::map<int64_t, std::pair<std::vector<double>, std::vector<double>>> by_window;
  for (const TimedLatency& s : samples) {
    auto& [ttft, e2e] = by_window[static_cast<int64_t>(std::floor(std::max(0.0, s.start_s) / width_s))];
    ttft.push_back(s.ttft_ms);
    e2e.push_back(s.e2e_ms);
  }
  std::vector<LatencyWindow> windows;
  for (auto& [index, latencies] : by_window) {
    windows.push_back({static_cast<double>(index) * width_s, Summarize(std::move(latencies.first)),
                       Summarize(std::move(latencies.second))});
  }
  return windows;
}

double WindowWidth(double duration_s, int max_windows) {
  TESSERA_CHECK(max_windows > 0);
  return std::max(1.0, std::ceil(duration_s / max_windows));
}

}  // namespace tessera::tools::bench
