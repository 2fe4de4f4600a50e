// The arithmetic of `tessera bench`: percentiles against numpy's definition, the Poisson schedule's
// statistics and determinism, the time windows, the SSE splitter and the SVG chart's structure.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "tools/bench/chart.h"
#include "tools/bench/http_client.h"
#include "tools/bench/report.h"
#include "tools/bench/stats.h"

namespace tessera::tools::bench {
namespace {

using ::testing::HasSubstr;

TEST(PercentileTest, InterpolatesBetweenClosestRanksAsNumpy) {
  const std::vector<double> sorted = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(Percentile(sorted, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(sorted, 100), 4);
  EXPECT_DOUBLE_EQ(Percentile(sorted, 50), 2.5);     // numpy.percentile([1,2,3,4], 50)
  EXPECT_DOUBLE_EQ(Percentile(sorted, 90), 3.7);     // rank 2.7
  EXPECT_NEAR(Percentile(sorted, 99), 3.97, 1e-12);  // rank 2.97
  EXPECT_DOUBLE_EQ(Percentile({7.5}, 99), 7.5);      // one sample is every percentile
}

TEST(PercentileTest, MatchesASortedRankOnRandomSamples) {
  std::mt19937 rng(std::random_device{}());
  const int n = 1 + static_cast<int>(rng() % 997);  // awkward sizes
  std::vector<double> samples(n);
  std::exponential_distribution<double> dist(0.1);
  for (double& s : samples) s = dist(rng);
  const LatencySummary summary = Summarize(samples);
  std::sort(samples.begin(), samples.end());
  EXPECT_EQ(summary.count, n);
  EXPECT_NEAR(summary.mean, std::accumulate(samples.begin(), samples.end(), 0.0) / n, 1e-9);
  for (auto [p, value] : {std::pair{50.0, summary.p50}, {90.0, summary.p90}, {99.0, summary.p99}}) {
    const double rank = p / 100 * (n - 1);
    const size_t lo = static_cast<size_t>(rank);
    const double expected =
        lo + 1 < samples.size() ? samples[lo] + (samples[lo + 1] - samples[lo]) * (rank - lo) : samples[lo];
    EXPECT_NEAR(value, expected, 1e-9) << "p" << p << " of " << n;
    EXPECT_GE(value, samples.front());
    EXPECT_LE(value, samples.back());
  }
  EXPECT_LE(summary.p50, summary.p90);
  EXPECT_LE(summary.p90, summary.p99);
}

TEST(PercentileTest, SummaryOfNoSamplesIsZero) {
  const LatencySummary summary = Summarize({});
  EXPECT_EQ(summary.count, 0);
  EXPECT_EQ(summary.p99, 0);
}

TEST(PoissonArrivalsTest, GapsAreExponentialWithTheRequestedRate) {
  const double rate = 7.25;
  const int n = 20011;
  const std::vector<double> arrivals = PoissonArrivals(n, rate, /*seed=*/std::random_device{}());
  ASSERT_EQ(arrivals.size(), static_cast<size_t>(n));
  EXPECT_TRUE(std::is_sorted(arrivals.begin(), arrivals.end()));
  EXPECT_GT(arrivals.front(), 0);
  std::vector<double> gaps(n);
  std::adjacent_difference(arrivals.begin(), arrivals.end(), gaps.begin());
  const double mean = std::accumulate(gaps.begin(), gaps.end(), 0.0) / n;
  double var = 0;
  for (double g : gaps) var += (g - mean) * (g - mean);
  var /= n - 1;
  // Exponential(rate): mean 1/rate, variance 1/rate^2; 20k samples put both within a few percent.
  EXPECT_NEAR(mean, 1 / rate, 0.05 / rate);
  EXPECT_NEAR(var, 1 / (rate * rate), 0.1 / (rate * rate));
  // Memorylessness: about e^-1 of gaps exceed the mean gap.
  const double longer = std::count_if(gaps.begin(), gaps.end(), [&](double g) { return g > 1 / rate; });
  EXPECT_NEAR(longer / n, std::exp(-1.0), 0.02);
}

TEST(PoissonArrivalsTest, SameSeedSameScheduleOtherSeedAnother) {
  EXPECT_EQ(PoissonArrivals(37, 3.0, 11), PoissonArrivals(37, 3.0, 11));
  EXPECT_NE(PoissonArrivals(37, 3.0, 11), PoissonArrivals(37, 3.0, 12));
}

TEST(PoissonArrivalsTest, InfiniteRateSendsEverythingAtZero) {
  const std::vector<double> arrivals = PoissonArrivals(13, std::numeric_limits<double>::infinity(), 5);
  EXPECT_EQ(arrivals, std::vector<double>(13, 0.0));
}

TEST(WindowedLatenciesTest, GroupsByStartSecondAndSkipsEmptyWindows) {
  const std::vector<TimedLatency> samples = {
      {0.1, 10, 100}, {0.9, 30, 300}, {2.5, 50, 500}, {2.0, 70, 700}, {2.99, 90, 900}};
  const std::vector<LatencyWindow> windows = WindowedLatencies(samples, 1.0);
  ASSERT_EQ(windows.size(), 2u);
  EXPECT_DOUBLE_EQ(windows[0].start_s, 0);
  EXPECT_EQ(windows[0].ttft_ms.count, 2);
  EXPECT_DOUBLE_EQ(windows[0].ttft_ms.p50, 20);
  EXPECT_DOUBLE_EQ(windows[1].start_s, 2);
  EXPECT_EQ(windows[1].e2e_ms.count, 3);
  EXPECT_DOUBLE_EQ(windows[1].e2e_ms.p50, 700);
}

TEST(WindowedLatenciesTest, WidthIsOneSecondUntilTheRunHasTooManyWindows) {
  EXPECT_DOUBLE_EQ(WindowWidth(0.3), 1);
  EXPECT_DOUBLE_EQ(WindowWidth(59), 1);
  EXPECT_DOUBLE_EQ(WindowWidth(121, 60), 3);
}

TEST(MakeReportTest, ComputesTpotItlAndCountsFailuresByCode) {
  std::vector<RequestResult> results(3);
  results[0].ok = true;
  results[0].ttft_s = 0.1;
  results[0].e2e_s = 0.5;
  results[0].itl_s = {0.2, 0.2};
  results[0].input_tokens = 4;
  results[0].output_tokens = 5;
  results[1].ok = true;
  results[1].ttft_s = results[1].e2e_s = 0.3;
  results[1].input_tokens = 6;
  results[1].output_tokens = 1;
  results[2].error = "UNAVAILABLE: gone";
  results[2].code = "UNAVAILABLE";
  const BenchReport report = MakeReport(results, 2.0);
  EXPECT_EQ(report.completed, 2);
  EXPECT_EQ(report.failed, 1);
  EXPECT_EQ(report.failures.at("UNAVAILABLE"), 1);
  EXPECT_EQ(report.first_error, "UNAVAILABLE: gone");
  EXPECT_EQ(report.input_tokens, 10);
  EXPECT_EQ(report.output_tokens, 6);
  EXPECT_DOUBLE_EQ(report.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(report.output_throughput, 3.0);
  EXPECT_EQ(report.tpot_ms.count, 1);           // one output token has no TPOT
  EXPECT_NEAR(report.tpot_ms.mean, 100, 1e-9);  // (500 - 100) / (5 - 1)
  EXPECT_EQ(report.itl_ms.count, 2);
  EXPECT_NEAR(report.ttft_ms.mean, 200, 1e-9);
  EXPECT_THAT(FormatReport(report, "h"), HasSubstr("UNAVAILABLE"));
}

TEST(SseParserTest, SplitsEventsAcrossArbitraryChunkBoundaries) {
  const std::string stream =
      ": comment\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\nevent: e\ndata: [DONE]\n\n";
  std::mt19937 rng(std::random_device{}());
  SseParser parser;
  std::vector<std::string> events;
  for (size_t pos = 0; pos < stream.size();) {
    const size_t len = 1 + rng() % 7;
    for (std::string& e : parser.Feed(stream.substr(pos, len))) events.push_back(e);
    pos += len;
  }
  EXPECT_EQ(events, (std::vector<std::string>{"{\"a\":1}", "x\ny", "[DONE]"}));
  EXPECT_TRUE(parser.Feed("data: unfinished\n").empty());
}

TEST(LatencyChartSvgTest, DrawsThreePercentilesInTwoPanelsAndEscapesTheTitle) {
  const std::vector<LatencyWindow> windows = WindowedLatencies({{0.5, 10, 100}, {1.5, 20, 200}}, 1.0);
  const std::string svg = LatencyChartSvg(windows, 1.0, "a < b & c");
  EXPECT_THAT(svg, HasSubstr("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  EXPECT_THAT(svg, HasSubstr("a &lt; b &amp; c"));
  size_t polylines = 0;
  for (size_t pos = svg.find("<polyline"); pos != std::string::npos; pos = svg.find("<polyline", pos + 1)) {
    ++polylines;
  }
  EXPECT_EQ(polylines, 6u);  // p50, p90, p99 of TTFT and of E2E
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  EXPECT_THAT(LatencyChartSvg({}, 1.0, "t"), HasSubstr("no successful requests"));
}

}  // namespace
}  // namespace tessera::tools::bench
