// Coordinator: a gRPC server carrying the public API (InferenceService, ModelService, health, reflection)
// and, on the same port or on a control port of its own (CoordinatorOptions::control_address, mutual TLS with
// control_tls), the control plane (Control) and the rendezvous store; the worker group and the scheduler
// behind them; and the bring-up that takes T x P registered workers from nothing to serving.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "coordinator/api_keys.h"
#include "coordinator/completion_limits.h"
#include "coordinator/scheduler.h"
#include "coordinator/served_model.h"
#include "core/log.h"
#include "core/tls.h"
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
class StreamJournalStore;
class Gauge;
class MetricsRegistry;
struct EngineMetrics;

struct CoordinatorOptions {
  ServedModel model;
  ShardedShape shape;                        // the model's dimensions that sharding depends on
  std::vector<int> pp_layers;                // layers per stage; empty = even
  std::string listen_address = "0.0.0.0:0";  // HOST:PORT; port 0 picks a free one
  // TLS of the public gRPC and HTTP ports (cert + key, re-read when they change); empty: plaintext.
  TlsFiles public_tls;
  // The control plane (workers' sessions, the rendezvous store) on a port of its own, HOST:PORT (port 0: a
  // free one); empty: on listen_address. Required when public_tls or control_tls is set: the control plane's
  // identity and trust differ from the public API's.
  std::string control_address;
  // Mutual TLS on the control port: cert + key (the coordinator's identity) and ca (the CA workers'
  // certificates must chain to; workers verify the coordinator against their own copy). Empty: plaintext.
  TlsFiles control_tls;
  // The OpenAI-compatible HTTP API (coordinator/http) on listen_address's host: -1 off, 0 a free port.
  int http_port = -1;
  int http_threads = 2;  // its io_context threads
  // The public API's keys (--api-key-file, ApiKeys::Parse's format); empty: the API is open. protect_metrics:
  // /metrics needs a key too (health checks stay open).
  std::string api_key_file;
  bool protect_metrics = false;
  CompletionLimits limits;                  // per request, on both APIs
  size_t max_request_bytes = 16 << 20;      // an HTTP request body (larger: 413); gRPC keeps its 4 MiB
  // Resumable streams (gRPC and HTTP) are kept this long after their client left or their end, whichever is
  // later, for the client to reattach; 0: resumption off (resumable requests are refused).
  std::chrono::milliseconds resume_window{60000};
  // How workers reach this server's rendezvous store (HOST; the port is the listening one).
  std::string advertise_host = "127.0.0.1";
  int64_t kv_cache_memory = 0;  // bytes per rank; 0 = each worker decides
  int max_kv_blocks = 0;        // at most this many KV blocks per rank (what a batch needs); 0 = no bound
  int threads_per_worker = 0;   // 0 = each worker's share of its cores
  std::string prefill_precision = "exact";
  std::string quant_activations = "fp32";  // or "int8" (CPU decode against quantized weights)
  int graph_max_batch = -1;    // decode graphs up to this batch; 0 = never; -1 = each worker's default
  std::string communicator;    // CUDA: "nccl", "gloo" (ranks sharing a GPU) or "" (auto)
  bool single_node = false;    // every worker runs on this node (tessera serve)
  SchedulerOptions scheduler;  // num_kv_blocks and max_steps_in_flight are set by the coordinator
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{2000};
  // Workers must present this (WorkerGroupOptions::join_token); empty: any worker that reaches the port joins.
  std::string join_token;
  // The file join_token was read from (an absolute path; empty: it was given as it is). The launcher's local
  // workers read it there too, so that the token is in no process's environment.
  std::string join_token_file;
  std::chrono::milliseconds comm_timeout{30000};      // rendezvous and every collective
  std::chrono::milliseconds startup_timeout{600000};  // workers joining, loading
  // A lost worker (exited, killed, silent past heartbeat_timeout) is replaced and its requests go on: the group
  // is re-formed in a new epoch, and the requests running are re-prefilled from their token logs. When no
  // replacement has joined within this long, the requests end UNAVAILABLE (the group still recovers whenever
  // the ranks come back). 0: no recovery; a lost worker fails every request (fail-stop).
  std::chrono::milliseconds replacement_timeout{60000};
  // A step in flight longer than this (a rank stuck inside it: a hung collective, a deadlocked kernel) counts
  // as a failure: the group is re-formed, and a rank that does not answer then is replaced. 0: no watchdog.
  std::chrono::milliseconds step_timeout{60000};
  // Called (on the recovery thread) with each vacant rank, to start a replacement: `tessera serve` restarts its
  // child process (killing the old one first when `kill`, else only when it is no longer running). Empty:
  // replacements come by themselves (a restarted pod).
  std::function<void(int rank, bool kill)> replace_rank;
};

class Coordinator {
 public:
  using Clock = std::chrono::steady_clock;
  // Validates the split (INVALID_ARGUMENT naming the numbers), starts the server (UNAVAILABLE naming the
  // address when it cannot listen) and waits for nothing. `tokenizer` may be null (token-id prompts only);
  // `chat_templates` may be null (no chat prompts).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Coordinator>> Start(
      const CoordinatorOptions& options, std::unique_ptr<Tokenizer> tokenizer,
      std::unique_ptr<ModelChatTemplates> chat_templates, std::ostream& log);
  ~Coordinator();

  int port() const { return port_; }
  // The port workers and the rendezvous store use: control_address's, or port().
  int control_port() const { return control_port_ > 0 ? control_port_ : port_; }
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
  // One start-up: wait for the workers, run every setup phase, activate the scheduler.
  [[nodiscard]] absl::Status BringUpOnce();
  // The setup messages of BringUp, also sent to replacements.
  control::v1::CoordinatorMessage AssignShardMessage(int rank) const;
  // Carries the current epoch's store token, made (and given to the rendezvous store) the first time an epoch
  // asks: only that epoch's registered workers, which get it here, can use the store.
  control::v1::CoordinatorMessage InitCommMessage();
  static control::v1::CoordinatorMessage LoadWeightsMessage();
  control::v1::CoordinatorMessage ProfileMemoryMessage() const;
  // Re-forms the group after failures until it is whole again (or the coordinator shuts down): the recovery
  // thread's loop. Requests wait meanwhile; they end UNAVAILABLE once replacement_timeout has passed.
  void RecoverLoop() ABSL_LOCKS_EXCLUDED(recovery_mu_);
  // The step watchdog's loop: every 100 ms, a step older than step_timeout fails the group (OnFailure).
  void WatchdogLoop();
  struct RecoveryState {
    std::vector<int> to_set_up;    // ranks lost in any attempt: their replacements need the whole setup
    std::vector<int> setup_begun;  // of them, those an attempt began to set up (dropped by the next attempt)
  };
  // One attempt: drop the lost ranks (adding them to to_set_up), reset the survivors into the new epoch, wait
  // for replacements until `deadline`, set up every rank of to_set_up (cleared on success) and re-form the
  // communicators. Errors: the group's next failure, a timeout.
  [[nodiscard]] absl::Status RecoverOnce(Clock::time_point deadline, RecoveryState& state);
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
  // Resumable streams (null: resume_window 0); used by the APIs, cancels in scheduler_.
  std::unique_ptr<StreamJournalStore> journals_;
  std::unique_ptr<RendezvousService> rendezvous_;
  std::unique_ptr<ApiKeys> api_keys_;  // null: the API is open
  uint64_t store_token_epoch_ = 0;  // the epoch store_token_ belongs to (the bring-up / recovery thread's)
  std::string store_token_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<ModelService> models_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> control_server_;  // null: the control plane is on server_
  std::unique_ptr<HttpServer> http_;  // null when off
  int port_ = 0;
  int control_port_ = 0;   // 0: no control server of its own
  int num_kv_blocks_ = 0;  // per rank, from BringUp: what a replacement must hold
  absl::Mutex recovery_mu_;
  bool serving_ ABSL_GUARDED_BY(recovery_mu_) = false;     // BringUp finished
  bool recovering_ ABSL_GUARDED_BY(recovery_mu_) = false;  // the recovery thread runs RecoverLoop
  bool failed_again_ ABSL_GUARDED_BY(recovery_mu_) = false;  // a failure came during the recovery
  std::thread recovery_thread_;  // joined by Shutdown
  std::thread watchdog_thread_;  // the step watchdog (step_timeout > 0); joined by Shutdown
  absl::Notification stop_watchdog_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;      // a Shutdown began
  bool shutdown_done_ ABSL_GUARDED_BY(shutdown_mu_) = false;  // ... and finished
};

}  // namespace tessera
