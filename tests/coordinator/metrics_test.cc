// The metrics registry's Prometheus text (histogram buckets, _sum, _count, labels, escaping) and the engine's
// metrics as a Scheduler records them against a scripted StepSink (tokens, successes by finish reason, the
// running and waiting gauges, KV cache usage, the per-request and per-step histograms).
#include "coordinator/metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator/scheduler.h"
#include "tessera/control/v1/control.pb.h"
#include "tests/coordinator/recording_sink.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using control::v1::Step;
using control::v1::StepResult;
using ::tessera::testing::RecordingSink;
using ::testing::HasSubstr;

TEST(MetricsTest, RendersAHistogramsCumulativeBucketsSumAndCount) {
  MetricsRegistry registry;
  Histogram& h =
      registry.AddHistogram("x:latency_seconds", "Latency.", {"model_name"}, {1, 2.5, 10}).histogram({"m"});
  for (double v : {0.5, 1.0, 4.0, 16.0}) h.Observe(v);  // 1.0 falls in le="1" (upper bounds are inclusive)
  EXPECT_EQ(registry.Render(),
            "# HELP x:latency_seconds Latency.\n"
            "# TYPE x:latency_seconds histogram\n"
            "x:latency_seconds_bucket{model_name=\"m\",le=\"1\"} 2\n"
            "x:latency_seconds_bucket{model_name=\"m\",le=\"2.5\"} 2\n"
            "x:latency_seconds_bucket{model_name=\"m\",le=\"10\"} 3\n"
            "x:latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 4\n"
            "x:latency_seconds_sum{model_name=\"m\"} 21.5\n"
            "x:latency_seconds_count{model_name=\"m\"} 4\n");
}

TEST(MetricsTest, RendersCountersAndGaugesWithAndWithoutLabelsInRegistrationOrder) {
  MetricsRegistry registry;
  registry.AddGauge("g", "A gauge.").gauge({}).Set(-0.25);
  MetricFamily& c = registry.AddCounter("c_total", "A counter.", {"a", "b"});
  c.counter({"x", "2"}).Add(3);
  c.counter({"x", "1"}).Add();
  c.counter({"x", "1"}).Add(0.5);
  registry.AddCounter("unused_total", "No children yet.", {"a"});
  EXPECT_EQ(registry.Render(),
            "# HELP g A gauge.\n"
            "# TYPE g gauge\n"
            "g -0.25\n"
            "# HELP c_total A counter.\n"
            "# TYPE c_total counter\n"
            "c_total{a=\"x\",b=\"1\"} 1.5\n"
            "c_total{a=\"x\",b=\"2\"} 3\n"
            "# HELP unused_total No children yet.\n"
            "# TYPE unused_total counter\n");
}

TEST(MetricsTest, EscapesLabelValuesAndHelpText) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(EscapeHelp("a\"b\\c\nd"), "a\"b\\\\c\\nd");
  MetricsRegistry registry;
  registry.AddGauge("g", "Two\nlines \\ here.", {"model_name"}).gauge({"org/\"quoted\"\\model"}).Set(1);
  EXPECT_EQ(registry.Render(),
            "# HELP g Two\\nlines \\\\ here.\n"
            "# TYPE g gauge\n"
            "g{model_name=\"org/\\\"quoted\\\"\\\\model\"} 1\n");
}

TEST(MetricsTest, FormatsValuesExactlyAndSpecialValuesAsPrometheusDoes) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(0.001), "0.001");
  EXPECT_EQ(FormatMetricValue(0.0001), "0.0001");
  EXPECT_EQ(FormatMetricValue(0.00005), "5e-05");
  EXPECT_EQ(FormatMetricValue(-2.5), "-2.5");
  EXPECT_EQ(FormatMetricValue(1e21), "1e+21");
  EXPECT_EQ(FormatMetricValue(123456789012.0), "123456789012");
  EXPECT_EQ(FormatMetricValue(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(MetricsTest, CountsObservationsFromManyThreads) {
  MetricsRegistry registry;
  Histogram& h = registry.AddHistogram("h", "H.", {}, {0.5}).histogram({});
  Counter& c = registry.AddCounter("c_total", "C.").counter({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        h.Observe(i % 2);
        c.Add();
        if (i % 100 == 0) registry.Render();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const Histogram::Snapshot snapshot = h.snapshot();
  EXPECT_EQ(snapshot.count, 4000u);
  EXPECT_EQ(snapshot.cumulative[0], 2000u);
  EXPECT_EQ(snapshot.sum, 2000);
  EXPECT_EQ(c.value(), 4000);
}

// The engine's metrics through a Scheduler. The sink records steps; results are fed back by the test. Every
// call pumps on the calling thread, so each Submit / OnStepResult returns with the next step sent.
class Observer : public GenerationObserver {
 public:
  explicit Observer(int32_t stop_on = -1) : stop_on_(stop_on) {}
  bool OnToken(int, int32_t token) override { return token == stop_on_; }
  void OnChoiceEnd(int, FinishReason) override {}
  void OnDone(const absl::Status&) override {}

 private:
  const int32_t stop_on_;
};

GenerationRequest MakeRequest(const std::string& id, int prompt_len, int max_tokens, int n = 1) {
  GenerationRequest r;
  r.id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(100 + i);
  r.max_tokens = max_tokens;
  r.stop_token_ids = {2};
  r.n = n;
  return r;
}

StepResult Result(const Step& step, const std::vector<int32_t>& tokens, double worker_seconds) {
  StepResult result;
  result.set_step_id(step.step_id());
  result.mutable_tokens()->Add(tokens.begin(), tokens.end());
  result.set_worker_seconds(worker_seconds);
  return result;
}

SchedulerOptions Options() {
  SchedulerOptions o;
  o.num_kv_blocks = 8;
  o.max_num_seqs = 2;
  o.max_num_batched_tokens = 64;
  o.max_queued_requests = 4;
  return o;
}

uint64_t Count(const Histogram& h) { return h.snapshot().count; }

TEST(SchedulerMetricsTest, CountsTokensSuccessesByReasonGaugesAndTimings) {
  MetricsRegistry registry;
  EngineMetrics metrics(registry, "tiny-llama");
  RecordingSink sink;
  Scheduler scheduler(Options(), sink, &metrics);
  scheduler.Activate(8);
  std::vector<GenerationRequest> requests;
  requests.push_back(MakeRequest("a", 5, 3));   // ends by length
  requests.push_back(MakeRequest("b", 4, 10));  // stop token 2
  requests.push_back(MakeRequest("c", 3, 10));  // waits: max_num_seqs=2
  ASSERT_OK(scheduler.SubmitBatch(
      std::move(requests),
      {std::make_shared<Observer>(), std::make_shared<Observer>(), std::make_shared<Observer>()}));

  // Step 0: the prompts of a and b (9 tokens), one block each.
  ASSERT_EQ(sink.count(), 1u);
  EXPECT_EQ(metrics.num_requests_running.value(), 2);
  EXPECT_EQ(metrics.num_requests_waiting.value(), 1);
  EXPECT_EQ(metrics.kv_cache_usage_perc.value(), 2.0 / 8);
  EXPECT_EQ(metrics.request_queue_time_seconds.snapshot().count, 2u);
  scheduler.OnStepResult(Result(sink.last(), {7, 2}, 0.5));  // b stops; c is admitted

  // Step 1: a's token and c's prompt (4 tokens).
  ASSERT_EQ(sink.count(), 2u);
  EXPECT_EQ(metrics.num_requests_waiting.value(), 0);
  EXPECT_EQ(metrics.num_requests_running.value(), 2);
  scheduler.OnStepResult(Result(sink.last(), {8, 2}, 0.25));  // c stops

  // Step 2: a's last token (max_tokens 3).
  ASSERT_EQ(sink.count(), 3u);
  EXPECT_EQ(metrics.num_requests_running.value(), 1);
  scheduler.OnStepResult(Result(sink.last(), {9}, 0.25));
  EXPECT_EQ(sink.count(), 3u);

  EXPECT_EQ(metrics.prompt_tokens_total.value(), 5 + 4 + 3);
  EXPECT_EQ(metrics.generation_tokens_total.value(), 3 + 1 + 1);
  EXPECT_EQ(metrics.request_success(FinishLabel::kStop).value(), 2);
  EXPECT_EQ(metrics.request_success(FinishLabel::kLength).value(), 1);
  EXPECT_EQ(metrics.request_success(FinishLabel::kAbort).value(), 0);
  EXPECT_EQ(metrics.num_requests_running.value(), 0);
  EXPECT_EQ(metrics.num_requests_waiting.value(), 0);
  EXPECT_EQ(metrics.kv_cache_usage_perc.value(), 0);

  EXPECT_EQ(Count(metrics.time_to_first_token_seconds), 3u);
  EXPECT_EQ(Count(metrics.request_queue_time_seconds), 3u);
  EXPECT_EQ(Count(metrics.request_prefill_time_seconds), 3u);
  EXPECT_EQ(Count(metrics.request_decode_time_seconds), 3u);
  EXPECT_EQ(Count(metrics.e2e_request_latency_seconds), 3u);
  EXPECT_EQ(Count(metrics.inter_token_latency_seconds), 2u);  // a's second and third tokens
  const Histogram::Snapshot iteration = metrics.iteration_tokens_total.snapshot();
  EXPECT_EQ(iteration.count, 3u);
  EXPECT_EQ(iteration.sum, 9 + 4 + 1);
  const Histogram::Snapshot worker = metrics.worker_step_seconds.snapshot();
  EXPECT_EQ(worker.count, 3u);
  EXPECT_EQ(worker.sum, 1.0);
  EXPECT_EQ(Count(metrics.control_plane_seconds), 3u);

  const std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr("tessera:generation_tokens_total{model_name=\"tiny-llama\"} 5\n"));
  EXPECT_THAT(
      text,
      HasSubstr("tessera:request_success_total{model_name=\"tiny-llama\",finished_reason=\"stop\"} 2\n"));
  EXPECT_THAT(text,
              HasSubstr("tessera:iteration_tokens_total_bucket{model_name=\"tiny-llama\",le=\"1\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("tessera:iteration_tokens_total_bucket{model_name=\"tiny-llama\",le=\"8\"} 2\n"));
  EXPECT_THAT(text,
              HasSubstr("tessera:iteration_tokens_total_bucket{model_name=\"tiny-llama\",le=\"16\"} 3\n"));
}

TEST(SchedulerMetricsTest, CountsNChoicesAsRequestsAndALengthEndTurnedStopByAStopStringAsStop) {
  MetricsRegistry registry;
  EngineMetrics metrics(registry, "m");
  RecordingSink sink;
  Scheduler scheduler(Options(), sink, &metrics);
  scheduler.Activate(8);
  // max_tokens 1: the scheduler queues a length end; the observer's stop string (41) makes it a stop.
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 1, /*n=*/2), std::make_shared<Observer>(/*stop_on=*/41)));
  EXPECT_EQ(metrics.num_requests_running.value(), 2);
  EXPECT_EQ(metrics.prompt_tokens_total.value(), 0);  // counted when the step's result comes
  scheduler.OnStepResult(Result(sink.last(), {}, 0));  // the prompt but its last token, once
  EXPECT_EQ(metrics.prompt_tokens_total.value(), 2);
  scheduler.OnStepResult(Result(sink.last(), {41, 5}, 0));  // the fork: each choice computes the last token
  EXPECT_EQ(metrics.prompt_tokens_total.value(), 4);
  EXPECT_EQ(metrics.request_success(FinishLabel::kStop).value(), 1);
  EXPECT_EQ(metrics.request_success(FinishLabel::kLength).value(), 1);
  EXPECT_EQ(Count(metrics.time_to_first_token_seconds), 2u);
  EXPECT_EQ(Count(metrics.e2e_request_latency_seconds), 2u);
  EXPECT_EQ(metrics.num_requests_running.value(), 0);
}

TEST(SchedulerMetricsTest, CountsCancelledChoicesAsAbortAndAFailedGroupsAsError) {
  MetricsRegistry registry;
  EngineMetrics metrics(registry, "m");
  RecordingSink sink;
  Scheduler scheduler(Options(), sink, &metrics);
  scheduler.Activate(8);
  ASSERT_OK(scheduler.Submit(MakeRequest("running", 3, 5, /*n=*/2), std::make_shared<Observer>()));
  ASSERT_OK(scheduler.Submit(MakeRequest("waiting", 3, 5), std::make_shared<Observer>()));
  EXPECT_EQ(metrics.num_requests_waiting.value(), 1);
  ASSERT_OK(scheduler.Cancel("waiting"));
  EXPECT_EQ(metrics.request_success(FinishLabel::kAbort).value(), 1);
  EXPECT_EQ(metrics.num_requests_waiting.value(), 0);
  ASSERT_OK(scheduler.Cancel("running"));
  EXPECT_EQ(metrics.request_success(FinishLabel::kAbort).value(), 3);
  // The prompt's prefill is in flight until its result; the second choice was never forked from it.
  EXPECT_EQ(metrics.num_requests_running.value(), 1);
  scheduler.OnStepResult(Result(sink.last(), {}, 0));
  EXPECT_EQ(metrics.num_requests_running.value(), 0);
  EXPECT_EQ(metrics.generation_tokens_total.value(), 0);  // tokens of ended choices are dropped

  ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 5), std::make_shared<Observer>()));
  scheduler.Fail(absl::UnavailableError("worker rank 1 closed its session"));
  EXPECT_EQ(metrics.request_success(FinishLabel::kError).value(), 1);
  EXPECT_EQ(metrics.request_success(FinishLabel::kStop).value(), 0);
  EXPECT_EQ(metrics.num_requests_running.value(), 0);
  EXPECT_EQ(metrics.kv_cache_usage_perc.value(), 0);
  EXPECT_EQ(Count(metrics.e2e_request_latency_seconds), 0u);  // only stop and length ends are timed
}

TEST(SchedulerMetricsTest, RendersEveryEngineMetricLabelledWithTheModel) {
  MetricsRegistry registry;
  EngineMetrics metrics(registry, "m");
  const std::string text = registry.Render();
  for (const char* name :
       {"tessera:num_requests_running", "tessera:num_requests_waiting", "tessera:kv_cache_usage_perc",
        "tessera:prompt_tokens_total", "tessera:generation_tokens_total", "tessera:request_success_total",
        "tessera:time_to_first_token_seconds", "tessera:inter_token_latency_seconds",
        "tessera:e2e_request_latency_seconds", "tessera:request_queue_time_seconds",
        "tessera:request_prefill_time_seconds", "tessera:request_decode_time_seconds",
        "tessera:iteration_tokens_total", "tessera:worker_step_seconds", "tessera:control_plane_seconds"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + name + " ")) << name;
    EXPECT_THAT(text, HasSubstr(std::string("\n") + name)) << name << " has no sample";
  }
  EXPECT_THAT(text,
              HasSubstr("tessera:request_success_total{model_name=\"m\",finished_reason=\"abort\"} 0\n"));
  EXPECT_THAT(text,
              HasSubstr("tessera:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 0\n"));
}

}  // namespace
}  // namespace tessera
