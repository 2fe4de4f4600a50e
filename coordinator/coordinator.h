// Coordinator: one gRPC server (one port) carrying the public API (InferenceService, ModelService, health,
// reflection), the control plane (Control) and the rendezvous store; the worker group and the scheduler
// behind them; and the bring-up that takes T x P registered workers from nothing to serving.
#pragma once

#include <chrono>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/scheduler.h"
#include "coordinator/served_model.h"
#include "core/log.h"
#include "parallel/parallel_config.h"
#include "tessera/control/v1/control.pb.h"

namespace grpc {
class Server;
}

namespace tessera {

class ChatRenderer;
class ModelChatTemplates;
class Tokenizer;
class WorkerGroup;
class RendezvousService;
class InferenceService;
class ModelService;
class HttpServer;
class Gauge;
class MetricsRegistry;
struct EngineMetrics;

struct CoordinatorOptions {
  ServedModel model;
  ShardedShape shape;                        // the model's dimensions that sharding depends on
  std::vector<int> pp_layers;                // layers per stage; empty = even
  std::string listen_address = "0.0.0.0:0";  // HOST:PORT; port 0 picks a free one
  // The OpenAI-compatible HTTP API (coordinator/http) on listen_address's host: -1 off, 0 a free port.
  int http_port = -1;
  int http_threads = 2;  // its io_context threads
  // How workers reach this server's rendezvous store (HOST; the port is the listening one).
  std::string advertise_host = "127.0.0.1";
  int64_t kv_cache_memory = 0;  // bytes per rank; 0 = each worker decides
  int max_kv_blocks = 0;        // at most this many KV blocks per rank (what a batch needs); 0 = no bound
  int threads_per_worker = 0;   // 0 = each worker's share of its cores
  std::string prefill_precision = "exact";
  int graph_max_batch = -1;    // decode graphs up to this batch; 0 = never; -1 = each worker's default
  std::string communicator;    // CUDA: "nccl", "gloo" (ranks sharing a GPU) or "" (auto)
  bool single_node = false;    // every worker runs on this node (tessera serve)
  SchedulerOptions scheduler;  // num_kv_blocks and max_steps_in_flight are set by the coordinator
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{5000};
  std::chrono::milliseconds comm_timeout{30000};      // rendezvous and every collective
  std::chrono::milliseconds startup_timeout{600000};  // workers joining, loading
};

class Coordinator {
 public:
  // Validates the split (INVALID_ARGUMENT naming the numbers), starts the server (UNAVAILABLE naming the
  // address when it cannot listen) and waits for nothing. `tokenizer` may be null (token-id prompts only);
  // `chat_templates` may be null (no chat prompts).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Coordinator>> Start(
      const CoordinatorOptions& options, std::unique_ptr<Tokenizer> tokenizer,
      std::unique_ptr<ModelChatTemplates> chat_templates, std::ostream& log);
  ~Coordinator();

  int port() const { return port_; }
  // The HTTP API's port; -1 when it is off.
  int http_port() const;
  const CoordinatorOptions& options() const { return options_; }
  const ParallelConfig& parallel() const { return parallel_; }

  // Waits for every worker, then runs assign shard, init comm, load weights, profile memory and allocate KV
  // cache on all of them, and starts serving (health SERVING). Errors: the first failure, naming the rank;
  // CANCELLED when Shutdown is called meanwhile.
  [[nodiscard]] absl::Status BringUp();
  // Waits until every worker has finished the steps sent so far (a drain) and returns each rank's Ack, by
  // rank (peak_rss_bytes: its peak resident set). Errors: as WorkerGroup::RunPhase.
  [[nodiscard]] absl::StatusOr<std::vector<control::v1::Ack>> DrainWorkers(std::chrono::milliseconds timeout);
  // A graceful stop (SIGTERM) begins: readiness turns NOT_SERVING at once (liveness, service "", stays
  // SERVING) and new requests are refused with UNAVAILABLE (HTTP 503); accepted ones go on. Idempotent.
  void BeginDrain();
  // After BeginDrain: waits up to `timeout` for the accepted requests to end; returns how many are left.
  int WaitDrained(absl::Duration timeout) { return scheduler_->WaitIdle(timeout); }
  // Stops everything: requests end with UNAVAILABLE, workers are told to shut down (up to `grace` for them to
  // leave), the server stops. Idempotent; thread-safe: a call while another is in progress returns when that
  // one has finished (so that the caller may then destroy the coordinator).
  void Shutdown(std::chrono::milliseconds grace);

  Scheduler& scheduler() { return *scheduler_; }
  // The engine's metrics (tessera:*, labelled with the served model's id) in the Prometheus text format, for
  // GET /metrics (Content-Type "text/plain; version=0.0.4; charset=utf-8"). Thread-safe; never blocks on the
  // scheduler.
  std::string MetricsText() const;
  // What every front end of this coordinator shares: the tokenizer (null without tokenizer.json) and the chat
  // template (ChatRenderer::has_template() false without one).
  const std::shared_ptr<const Tokenizer>& tokenizer() const { return tokenizer_; }
  const std::shared_ptr<ChatRenderer>& chat() const { return chat_; }

 private:
  Coordinator(const CoordinatorOptions& options, ParallelConfig parallel, std::ostream& log);
  void OnFailure(const absl::Status& status);
  // Writes one structured line (core/log.h) to the log (callers on several threads: bring-up, failure
  // handler).
  void Log(const std::string& line, LogLevel level = LogLevel::kInfo);

  const CoordinatorOptions options_;
  const ParallelConfig parallel_;
  absl::Mutex log_mu_;
  std::ostream& log_ ABSL_GUARDED_BY(log_mu_);
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::shared_ptr<ChatRenderer> chat_;
  std::unique_ptr<MetricsRegistry> metrics_;       // outlives the scheduler, which records into it
  std::unique_ptr<EngineMetrics> engine_metrics_;  // in metrics_
  std::vector<Gauge*> busy_gauges_;                // in metrics_: tessera:worker_busy_seconds by rank
  std::unique_ptr<WorkerGroup> workers_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<RendezvousService> rendezvous_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<ModelService> models_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HttpServer> http_;  // null when off
  int port_ = 0;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;      // a Shutdown began
  bool shutdown_done_ ABSL_GUARDED_BY(shutdown_mu_) = false;  // ... and finished
};

}  // namespace tessera
