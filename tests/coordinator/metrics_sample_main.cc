// Prints a sample rendering of the engine's metrics (every family with values, a model name that needs
// escaping) for metrics_format_test.py, which parses it with prometheus_client.
#include <iostream>

#include "coordinator/metrics.h"

int main() {
  tessera::MetricsRegistry registry;
  tessera::EngineMetrics metrics(registry, "org/\"tiny\"\\llama\nv2");
  metrics.num_requests_running.Set(3);
  metrics.num_requests_waiting.Set(1);
  metrics.kv_cache_usage_perc.Set(0.375);
  metrics.prompt_tokens_total.Add(1234);
  metrics.generation_tokens_total.Add(56);
  metrics.request_success(tessera::FinishLabel::kStop).Add(2);
  metrics.request_success(tessera::FinishLabel::kLength).Add();
  for (double v : {0.003, 0.2, 1.5, 3000.0}) metrics.time_to_first_token_seconds.Observe(v);
  for (double v : {0.02, 0.02, 0.09}) metrics.inter_token_latency_seconds.Observe(v);
  for (double v : {0.4, 2.0, 9000.0}) {
    metrics.e2e_request_latency_seconds.Observe(v);
    metrics.request_queue_time_seconds.Observe(v / 10);
    metrics.request_prefill_time_seconds.Observe(v / 4);
    metrics.request_decode_time_seconds.Observe(v / 2);
  }
  for (double v : {1.0, 9.0, 2048.0, 20000.0}) metrics.iteration_tokens_total.Observe(v);
  for (double v : {0.0004, 0.012}) metrics.worker_step_seconds.Observe(v);
  for (double v : {0.00005, 0.0002}) metrics.control_plane_seconds.Observe(v);
  std::cout << registry.Render();
  return 0;
}
