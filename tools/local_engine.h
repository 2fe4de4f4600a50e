// What `tessera serve`, `tessera coordinator` and `tessera generate` share: the engine's settings as flags
// give them, how they become CoordinatorOptions, and LocalEngine, a coordinator with its tp x pp
// `tessera worker` processes on this node. generate is a client of the same engine that serve runs.
#pragma once

#include <chrono>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"
#include "coordinator/launcher.h"

namespace tessera {
class ModelChatTemplates;
class Tokenizer;
}  // namespace tessera

namespace tessera::tools {

// The engine's settings, as serve's flags hold them (generate fills the ones it has).
struct ServeArgs {
  std::string model_dir;
  std::string served_model_name;
  int tp = 1;
  int pp = 1;
  std::vector<int> pp_layers;
  std::string device = "cpu";
  std::string host = "0.0.0.0";
  int grpc_port = 50051;
  int http_port = -1;  // the OpenAI-compatible HTTP API: -1 off, 0 a free port
  std::string resume_window = "60s";  // resumable streams kept after their client left or their end; 0s: off
  std::string advertise_host;
  std::string kv_cache_memory = "auto";  // 1GiB; on the null device, what its (an H200's) memory holds
  int threads_per_worker = 0;
  int max_num_seqs = 64;
  int max_num_batched_tokens = 2048;
  int max_queued_requests = 1024;
  int max_model_len = 0;  // 0: the model's max_position_embeddings
  bool enable_prefix_caching = true;
  std::string max_queue_time = "0s";  // 0: requests wait as long as it takes
  std::string prefill_precision = "exact";
  std::string quant_activations = "fp32";
  int graph_max_batch = -1;
  bool enforce_eager = false;
  std::string communicator = "auto";
  std::string heartbeat_interval = "500ms";
  std::string heartbeat_timeout = "2s";
  std::string join_token;  // workers must present it (--join-token / TESSERA_JOIN_TOKEN); empty: none
  std::string join_token_file;    // --join-token-file: the join token from a file (a mounted Secret)
  std::string tls_cert, tls_key;  // --tls-cert / --tls-key: HTTPS and gRPC over TLS on the public ports
  int control_port = -1;          // --control-port: the control plane's own port; -1: the gRPC port
  std::string control_ca, control_cert, control_key;  // --control-*: mutual TLS on the control port
  std::string api_key_file;  // --api-key-file: the public API's keys; empty: open
  bool protect_metrics = false;
  int max_n = 16;
  int max_tokens_limit = 0;
  int max_prompt_tokens = 0;
  int max_stop_strings = 16;
  std::string max_request_bytes = "16MiB";
  std::string replacement_timeout = "60s";  // 0: a lost worker fails every request (no recovery)
  std::string step_timeout = "60s";         // a step in flight longer than this: a stuck rank; 0: no watchdog
  std::string comm_timeout = "30s";
  std::string startup_timeout = "10m";
  std::string log_level = "info";     // core/log.h: debug, info, warning, error
  int local_ranks = 0;                // coordinator: ranks 0 .. local_ranks-1 run as local workers
  std::string drain_timeout = "30s";  // SIGTERM: how long accepted requests may take to finish
  bool log_requests = false;          // prompt and output text may appear in the logs
};

// The join token of `flag` (e.g. "--join-token-file") read from `path`: its contents less trailing
// whitespace. Errors: INVALID_ARGUMENT naming the flag and the file when it cannot be read or holds no token.
[[nodiscard]] absl::StatusOr<std::string> ReadJoinTokenFile(const std::string& path, std::string_view flag);

// Hands the join token to the child processes started after this call, never through their argv: the file's
// absolute path in TESSERA_JOIN_TOKEN_FILE when it came from a file (the token is then in no environment),
// else the token in TESSERA_JOIN_TOKEN. Nothing when both are empty.
void HandJoinTokenToChildren(const std::string& token, const std::string& file);

// The `tessera worker` flags that give a child process these control-plane TLS files (paths are not secrets).
[[nodiscard]] std::vector<std::string> ControlTlsArgs(const TlsFiles& files);

// Reads the model's config.json and generation_config.json and checks every setting. Errors:
// INVALID_ARGUMENT naming the flag and its value, or the file; the split's error (naming the numbers).
[[nodiscard]] absl::StatusOr<CoordinatorOptions> MakeCoordinatorOptions(const ServeArgs& args);

class LocalEngine {
 public:
  // Starts the coordinator's server and `local_ranks` `tessera worker --coordinator 127.0.0.1:PORT --device
  // DEVICE --local-ranks 1 --drain-timeout 0s [worker_args...] --rank R` processes, R = 0 .. local_ranks-1
  // (LocalWorkers; -1 = every rank, 0 = none). Waits for nothing. Errors: the coordinator's (a bad split, a
  // port in use), or a worker that cannot be started.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<LocalEngine>> Start(
      const CoordinatorOptions& options, int local_ranks, const std::vector<std::string>& worker_args,
      std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<ModelChatTemplates> chat_templates,
      std::ostream& log);
  ~LocalEngine();  // Shutdown(3 s)

  Coordinator& coordinator() { return *coordinator_; }
  // Coordinator::BringUp: every worker joined, loaded and holds a KV cache.
  [[nodiscard]] absl::Status BringUp() { return coordinator_->BringUp(); }
  // Stops the coordinator (requests end UNAVAILABLE, workers are told to leave) and waits up to `grace` for
  // the local workers to exit before signalling them. Idempotent; thread-safe.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  LocalEngine() = default;

  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<LocalWorkers> workers_;  // null without local workers
};

}  // namespace tessera::tools
