// serve, coordinator and worker: the processes of a serving deployment. serve runs a coordinator and T x P
// local workers; coordinator and worker are the same two halves for several nodes. SIGINT / SIGTERM stop
// everything, children included.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/chat_template/model_chat_templates.h"
#include "coordinator/coordinator.h"
#include "coordinator/launcher.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "core/log.h"
#include "core/plugin.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "core/units.h"
#include "kernels/backend_factory.h"
#include "tools/commands.h"
#include "tools/local_engine.h"
#include "worker/checkpoint/model_config.h"
#include "worker/worker_process.h"

namespace tessera::tools {
namespace {

void AddServeOptions(CLI::App* cmd, ServeArgs& a) {
  cmd->add_option("--model", a.model_dir, "Hugging Face model directory")
      ->required()
      ->envname("TESSERA_MODEL");
  cmd->add_option("--served-model-name", a.served_model_name,
                  "Model id clients use (default: the directory name)")
      ->envname("TESSERA_SERVED_MODEL_NAME");
  cmd->add_option("--tp", a.tp, "Tensor-parallel ranks")->capture_default_str()->envname("TESSERA_TP");
  cmd->add_option("--pp", a.pp, "Pipeline stages")->capture_default_str()->envname("TESSERA_PP");
  cmd->add_option("--pp-layers", a.pp_layers, "Layers per stage, e.g. 10,11,11 (default: even)")
      ->delimiter(',')
      ->envname("TESSERA_PP_LAYERS");
  cmd->add_option("--device", a.device,
                  "cpu, cuda or null (the real control and data plane at the model's shapes, without "
                  "arithmetic or weights: docs/null-device.md)")
      ->capture_default_str()
      ->envname("TESSERA_DEVICE");
  cmd->add_option("--host", a.host, "Address to listen on")->capture_default_str()->envname("TESSERA_HOST");
  cmd->add_option("--grpc-port", a.grpc_port, "gRPC port (0 = pick a free one and print it)")
      ->capture_default_str()
      ->envname("TESSERA_GRPC_PORT");
  cmd->add_option("--http-port", a.http_port,
                  "OpenAI-compatible HTTP port (-1 = off, 0 = pick a free one and print it)")
      ->capture_default_str()
      ->envname("TESSERA_HTTP_PORT");
  cmd->add_option("--resume-window", a.resume_window,
                  "A resumable stream whose client went away runs on and can be resumed this long after that "
                  "or after its end, whichever is later (0s: resumption off)")
      ->capture_default_str()
      ->envname("TESSERA_RESUME_WINDOW");
  cmd->add_option("--kv-cache-memory", a.kv_cache_memory,
                  "KV cache per worker (e.g. 512MiB, 4GiB; 0: each worker's default; auto: 1GiB, and on "
                  "--device null what an H200 holds after the weights)")
      ->capture_default_str()
      ->envname("TESSERA_KV_CACHE_MEMORY");
  cmd->add_option("--threads-per-worker", a.threads_per_worker,
                  "CPU threads per worker (0 = cores / workers)")
      ->capture_default_str()
      ->envname("TESSERA_THREADS_PER_WORKER");
  cmd->add_option("--max-num-seqs", a.max_num_seqs, "Sequences in the running batch")
      ->capture_default_str()
      ->envname("TESSERA_MAX_NUM_SEQS");
  cmd->add_option("--max-num-batched-tokens", a.max_num_batched_tokens,
                  "Tokens in one step (longer prompts are prefilled in chunks)")
      ->capture_default_str()
      ->envname("TESSERA_MAX_NUM_BATCHED_TOKENS");
  cmd->add_option("--max-queued-requests", a.max_queued_requests,
                  "Requests waiting for admission; more are refused with RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->envname("TESSERA_MAX_QUEUED_REQUESTS");
  cmd->add_option(
         "--max-model-len", a.max_model_len,
         "Longest sequence, prompt + max_tokens (0 = the model's; lowered to what the KV cache holds)")
      ->capture_default_str()
      ->envname("TESSERA_MAX_MODEL_LEN");
  cmd->add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", a.enable_prefix_caching,
                "Reuse the KV blocks of prompts that start the same way (on by default)")
      ->envname("TESSERA_ENABLE_PREFIX_CACHING");
  cmd->add_option("--max-queue-time", a.max_queue_time,
                  "A request waiting longer for admission fails with RESOURCE_EXHAUSTED / 429 (0 = no limit)")
      ->capture_default_str()
      ->envname("TESSERA_MAX_QUEUE_TIME");
  cmd->add_option("--prefill-precision", a.prefill_precision, "exact or bf16 (CPU prefill GEMMs)")
      ->capture_default_str();
  cmd->add_option(
         "--quant-activations", a.quant_activations,
         "fp32 or int8: CPU decode against quantized (Q8_0/Q4_0/Q4_1) weights keeps fp32 activations "
         "(exact) or quantizes them to int8 as llama.cpp does (faster on 4-bit weights; AVX-512 VNNI)")
      ->capture_default_str();
  cmd->add_option("--graph-max-batch", a.graph_max_batch,
                  "Decode steps of up to this many sequences replay captured CUDA graphs (-1: min(256, "
                  "--max-num-seqs) on CUDA, none on the CPU; 0: none)")
      ->capture_default_str()
      ->envname("TESSERA_GRAPH_MAX_BATCH");
  cmd->add_flag("--enforce-eager", a.enforce_eager, "Never replay graphs (= --graph-max-batch 0)");
  cmd->add_option(
         "--communicator", a.communicator,
         "CUDA tensors between ranks: nccl, gloo (staged through host memory; ranks sharing a GPU) or "
         "auto (nccl, or gloo when one node has fewer GPUs than ranks)")
      ->capture_default_str()
      ->envname("TESSERA_COMMUNICATOR");
  cmd->add_option("--heartbeat-interval", a.heartbeat_interval, "Between heartbeats")->capture_default_str();
  cmd->add_option("--heartbeat-timeout", a.heartbeat_timeout, "Silence after which a worker counts as failed")
      ->capture_default_str()
      ->envname("TESSERA_HEARTBEAT_TIMEOUT");
  cmd->add_option("--join-token", a.join_token,
                  "Workers must present this secret to register (compared in constant time; prefer the "
                  "environment variable: a flag shows in ps)")
      ->envname("TESSERA_JOIN_TOKEN");
  cmd->add_option("--join-token-file", a.join_token_file,
                  "The join token from this file (a mounted Secret), trailing whitespace dropped")
      ->envname("TESSERA_JOIN_TOKEN_FILE");
  cmd->add_option("--tls-cert", a.tls_cert,
                  "PEM certificate chain of the public gRPC and HTTP ports (TLS; re-read when it changes)")
      ->envname("TESSERA_TLS_CERT");
  cmd->add_option("--tls-key", a.tls_key, "PEM private key of --tls-cert")->envname("TESSERA_TLS_KEY");
  cmd->add_option("--control-port", a.control_port,
                  "Workers and the rendezvous store on a port of their own (0 = a free one; -1 = the gRPC "
                  "port). Needed with TLS; serve picks a free one by itself")
      ->capture_default_str()
      ->envname("TESSERA_CONTROL_PORT");
  cmd->add_option("--control-ca", a.control_ca,
                  "Mutual TLS on the control port: the CA bundle workers' certificates must chain to")
      ->envname("TESSERA_CONTROL_CA");
  cmd->add_option("--control-cert", a.control_cert,
                  "The coordinator's certificate on the control port (serve's local workers present it too)")
      ->envname("TESSERA_CONTROL_CERT");
  cmd->add_option("--control-key", a.control_key, "PEM private key of --control-cert")
      ->envname("TESSERA_CONTROL_KEY");
  cmd->add_option("--api-key-file", a.api_key_file,
                  "API keys, one a line: KEY [rpm=N] [tpm=N] [streams=N] (requests and tokens per minute, requests "
                  "in flight); every gRPC and HTTP call then needs `authorization: Bearer KEY` (docs/security.md)")
      ->envname("TESSERA_API_KEY_FILE");
  cmd->add_flag("--protect-metrics", a.protect_metrics, "With --api-key-file, /metrics needs a key too")
      ->envname("TESSERA_PROTECT_METRICS");
  cmd->add_option("--max-n", a.max_n, "Choices per request")->capture_default_str()->envname("TESSERA_MAX_N");
  cmd->add_option("--max-tokens-limit", a.max_tokens_limit,
                  "Most tokens one request may generate (0: the context); an unset max_tokens is capped to it")
      ->capture_default_str()
      ->envname("TESSERA_MAX_TOKENS_LIMIT");
  cmd->add_option("--max-prompt-tokens", a.max_prompt_tokens, "Most prompt tokens (0: the context)")
      ->capture_default_str()
      ->envname("TESSERA_MAX_PROMPT_TOKENS");
  cmd->add_option("--max-stop-strings", a.max_stop_strings, "Stop strings per request")
      ->capture_default_str()
      ->envname("TESSERA_MAX_STOP_STRINGS");
  cmd->add_option("--max-request-bytes", a.max_request_bytes, "Largest HTTP request body (larger: 413)")
      ->capture_default_str()
      ->envname("TESSERA_MAX_REQUEST_BYTES");
  cmd->add_option("--replacement-timeout", a.replacement_timeout,
                  "A lost worker is replaced (serve restarts it) and its requests go on; they end UNAVAILABLE when "
                  "no replacement joins within this long (0: no recovery, fail at once)")
      ->capture_default_str()
      ->envname("TESSERA_REPLACEMENT_TIMEOUT");
  cmd->add_option("--step-timeout", a.step_timeout,
                  "A step running longer than this means a rank is stuck inside it (a hung collective or kernel): "
                  "the group is re-formed and the stuck rank replaced (0: no watchdog)")
      ->capture_default_str()
      ->envname("TESSERA_STEP_TIMEOUT");
  cmd->add_option("--comm-timeout", a.comm_timeout, "Bound on rendezvous and every collective")
      ->capture_default_str()
      ->envname("TESSERA_COMM_TIMEOUT");
  cmd->add_option("--startup-timeout", a.startup_timeout, "Bound on workers joining and loading")
      ->capture_default_str()
      ->envname("TESSERA_STARTUP_TIMEOUT");
  cmd->add_option(
         "--drain-timeout", a.drain_timeout,
         "SIGTERM / SIGINT: readiness turns NOT_SERVING, new requests are refused and accepted ones get "
         "this long to finish before everything stops (a second signal stops at once)")
      ->capture_default_str()
      ->envname("TESSERA_DRAIN_TIMEOUT");
  cmd->add_option("--log-level", a.log_level, "debug, info, warning or error (JSON lines on stderr)")
      ->capture_default_str()
      ->envname("TESSERA_LOG_LEVEL");
  cmd->add_flag("--log-requests", a.log_requests, "Let request text (prompts, outputs) appear in the logs")
      ->envname("TESSERA_LOG_REQUESTS");
}

// Applies --log-level and --log-requests to this process. Errors: INVALID_ARGUMENT naming the level.
absl::Status SetUpLogs(const std::string& level, bool log_requests) {
  ASSIGN_OR_RETURN(LogLevel parsed, ParseLogLevel(level));
  SetLogLevel(parsed);
  SetLogRequests(log_requests);
  return absl::OkStatus();
}

// Blocks SIGINT and SIGTERM in this thread and every thread started after it; a dedicated thread takes them
// with sigwait and calls `on_signal(signal, count)` for each (count: how many came before it). Destroying it
// releases that thread.
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int, int)> on_signal) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this, on_signal] {
      for (int count = 0;; ++count) {
        int sig = 0;
        sigwait(&set_, &sig);
        if (released_) return;
        on_signal(sig, count);
      }
    });
  }
  ~SignalWatcher() {
    released_ = true;
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
  }

 private:
  sigset_t set_;
  std::atomic<bool> released_{false};
  std::thread thread_;
};

const char* SignalName(int sig) { return sig == SIGINT ? "SIGINT" : "SIGTERM"; }

// The coordinator's --local-ranks against the LeaderWorkerSet group: the group's pods run the same number of
// ranks each, so LWS_GROUP_SIZE x local ranks must be the world. Errors: INVALID_ARGUMENT naming both.
absl::Status CheckLocalRanks(int local_ranks, int world_size) {
  if (local_ranks < 0 || local_ranks > world_size) {
    return absl::InvalidArgumentError(
        Cat("--local-ranks=", local_ranks, " must be in [0, ", world_size, "] (tp x pp)"));
  }
  const char* group = std::getenv("LWS_GROUP_SIZE");
  if (local_ranks == 0 || group == nullptr || *group == '\0') return absl::OkStatus();
  int pods = 0;
  if (!absl::SimpleAtoi(group, &pods) || pods <= 0) {
    return absl::InvalidArgumentError(Cat("LWS_GROUP_SIZE=\"", group, "\" is not a positive integer"));
  }
  if (int64_t{pods} * local_ranks != world_size) {
    return absl::InvalidArgumentError(Cat("LWS_GROUP_SIZE=", pods, " pods x --local-ranks ", local_ranks,
                                          " = ", int64_t{pods} * local_ranks,
                                          " ranks, but tp x pp = ", world_size));
  }
  return absl::OkStatus();
}

// Runs a coordinator until a signal, with `local_ranks` of its workers (-1: all) as child processes. The
// first SIGTERM / SIGINT after bring-up drains (up to --drain-timeout); a second one, or one during bring-up,
// stops at once.
int RunServing(const char* command, const ServeArgs& given, int local_ranks) {
  if (absl::Status s = SetUpLogs(given.log_level, given.log_requests); !s.ok()) return Fail(command, s);
  ServeArgs args = given;
  // TLS separates the control plane from the public API; serve's workers are its own children, so it picks
  // the control port itself (a coordinator's remote workers need it named).
  const bool tls = !args.tls_cert.empty() || !args.control_cert.empty() || !args.control_ca.empty();
  if (tls && args.control_port < 0 && local_ranks < 0) args.control_port = 0;
  absl::StatusOr<CoordinatorOptions> options = MakeCoordinatorOptions(args);
  if (!options.ok()) return Fail(command, options.status());
  absl::StatusOr<std::chrono::milliseconds> drain_timeout = ParseDuration(args.drain_timeout);
  if (!drain_timeout.ok()) return Fail(command, drain_timeout.status());
  const int world = options->model.tp_size * options->model.pp_size;
  if (local_ranks >= 0) {
    if (absl::Status s = CheckLocalRanks(local_ranks, world); !s.ok()) return Fail(command, s);
  }
  options->single_node = local_ranks < 0 || local_ranks == world;
  std::unique_ptr<Tokenizer> tokenizer;
  if (std::filesystem::exists(args.model_dir + "/tokenizer.json")) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(args.model_dir);
    if (!loaded.ok()) return Fail(command, loaded.status());
    tokenizer = std::move(*loaded);
  }
  std::unique_ptr<ModelChatTemplates> chat_templates;
  if (std::filesystem::exists(args.model_dir + "/tokenizer_config.json")) {
    absl::StatusOr<ModelChatTemplates> loaded = ModelChatTemplates::Load(args.model_dir);
    if (!loaded.ok()) return Fail(command, loaded.status());
    chat_templates = std::make_unique<ModelChatTemplates>(*std::move(loaded));
  }
  const LogContext context{.component = command, .rank = -1, .request_id = ""};
  absl::Mutex mu;
  bool stop = false;               // guarded by mu: a signal came
  bool serving = false;            // guarded by mu: bring-up finished; a first signal drains
  LocalEngine* running = nullptr;  // guarded by mu
  auto signals = std::make_unique<SignalWatcher>([&](int sig, int count) {
    LocalEngine* engine = nullptr;
    bool drain = false;
    {
      absl::MutexLock lock(&mu);
      stop = true;
      engine = running;
      drain = serving && count == 0 && drain_timeout->count() > 0;
    }
    if (drain) {
      Log(LogLevel::kInfo, context,
          Cat(SignalName(sig),
              ": draining: readiness NOT_SERVING, new requests refused, accepted ones get up to ",
              drain_timeout->count() / 1000.0, " s (a second signal stops at once)"));
      return;  // the main thread drains
    }
    Log(LogLevel::kInfo, context, Cat(SignalName(sig), ", shutting down"));
    // Outside the lock: a bring-up in progress ends with CANCELLED, a drain with every request UNAVAILABLE;
    // the main thread then finishes the rest.
    if (engine != nullptr) engine->coordinator().Shutdown(std::chrono::milliseconds(3000));
  });
  absl::StatusOr<std::unique_ptr<LocalEngine>> started =
      LocalEngine::Start(*options, local_ranks, {"--log-level", args.log_level}, std::move(tokenizer),
                         std::move(chat_templates), std::cerr);
  if (!started.ok()) return Fail(command, started.status());
  std::unique_ptr<LocalEngine> engine = std::move(*started);
  {
    absl::MutexLock lock(&mu);
    running = engine.get();
    if (stop) engine->coordinator().Shutdown(std::chrono::milliseconds(3000));
  }
  const int port = engine->coordinator().port();
  nlohmann::json listening = {{"event", "listening"}, {"grpc_port", port}};
  if (engine->coordinator().control_port() != port)
    listening["control_port"] = engine->coordinator().control_port();
  const int http_port = engine->coordinator().http_port();
  if (http_port >= 0) listening["http_port"] = http_port;
  std::cout << listening.dump() << std::endl;
  absl::Status up = engine->BringUp();
  int exit_code = 0;
  if (up.ok()) {
    nlohmann::json ready = {{"event", "ready"},
                            {"grpc_port", port},
                            {"model", options->model.id},
                            {"tp", options->model.tp_size},
                            {"pp", options->model.pp_size},
                            {"kv_blocks", engine->coordinator().scheduler().num_blocks()},
                            {"max_model_len", engine->coordinator().scheduler().max_model_len()}};
    if (http_port >= 0) ready["http_port"] = http_port;
    if (listening.contains("control_port")) ready["control_port"] = listening["control_port"];
    std::cout << ready.dump() << std::endl;
    bool drain = false;
    {
      absl::MutexLock lock(&mu);
      serving = !stop;
      mu.Await(absl::Condition(&stop));
      drain = serving && drain_timeout->count() > 0;
    }
    if (drain) {
      const auto t0 = std::chrono::steady_clock::now();
      engine->coordinator().BeginDrain();
      const int left = engine->coordinator().WaitDrained(absl::FromChrono(*drain_timeout));
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (left == 0) {
        Log(LogLevel::kInfo, context, Cat("drained in ", took, " s; stopping"));
      } else {
        Log(LogLevel::kWarning, context,
            Cat("--drain-timeout ", drain_timeout->count() / 1000.0, " s passed with ", left,
                " requests unfinished; they end UNAVAILABLE"));
      }
    }
  } else {
    absl::MutexLock lock(&mu);
    if (!stop) exit_code = Fail(command, up);
  }
  engine->Shutdown(std::chrono::milliseconds(3000));
  const Scheduler::Stats stats = engine->coordinator().scheduler().stats();
  if (stats.steps >
      0) {  // the control plane's cost: step round trip minus the output rank's time in the step
    std::cout << nlohmann::json{{"event", "stats"},
                                {"steps", stats.steps},
                                {"step_ms", 1e3 * stats.step_seconds / stats.steps},
                                {"worker_ms", 1e3 * stats.worker_seconds / stats.steps},
                                {"send_ms", 1e3 * stats.send_seconds / stats.steps},
                                {"control_plane_ms",
                                 1e3 * (stats.step_seconds - stats.worker_seconds) / stats.steps},
                                {"schedule_us", 1e6 * stats.schedule_seconds / stats.steps},
                                {"preemptions", stats.preemptions},
                                {"prefix_cache_queries", stats.prefix_queries},
                                {"prefix_cache_hits", stats.prefix_hits},
                                {"step_bytes", static_cast<double>(stats.step_bytes) / stats.steps},
                                {"result_bytes", static_cast<double>(stats.result_bytes) / stats.steps}}
                     .dump()
              << std::endl;
  }
  signals
      .reset();  // joins the watcher, which may still be inside the engine's Shutdown, before the engine goes
  return exit_code;
}

struct WorkerArgs {
  WorkerOptions options;
  int rank = -1;
  int local_ranks = 1;
  std::string device = "cpu";
  int health_port = -1;
  std::string drain_timeout = "30s";
  std::string log_level = "info";
  std::string log_file;
  std::string join_token_file;  // --join-token-file
};

// grpc.health.v1 alone on `port` (all interfaces), service "" SERVING: the liveness of a worker pod. Errors:
// UNAVAILABLE naming the port when it cannot listen.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartHealthServer(int port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(Cat("0.0.0.0:", port), grpc::InsecureServerCredentials(), &bound);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    return absl::UnavailableError(Cat("--health-port ", port, ": cannot listen on 0.0.0.0:", port));
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

// `tessera worker`: one rank in this process, or --local-ranks N > 1 child processes (one rank each, ranks
// first .. first+N-1) supervised until they all leave; the command fails as soon as one of them fails (the
// pod restarts). SIGTERM / SIGINT: stay until the coordinator ends the session (it drains first), at most
// --drain-timeout + 5 s; a second signal ends it at once.
int RunWorkerCommand(WorkerArgs& a) {
  if (absl::Status s = SetUpLogs(a.log_level, false); !s.ok()) return Fail("worker", s);
  if (a.local_ranks < 1) {
    return Fail("worker", absl::InvalidArgumentError(Cat("--local-ranks=", a.local_ranks, " must be >= 1")));
  }
  absl::StatusOr<std::chrono::milliseconds> drain = ParseDuration(a.drain_timeout);
  if (!drain.ok()) return Fail("worker", drain.status());
  absl::StatusOr<DeviceKind> kind = ParseDeviceKind(a.device);
  if (!kind.ok()) return Fail("worker", kind.status());
  a.options.device = *kind;
  int first = a.rank;
  if (first < 0) {
    absl::StatusOr<int> index = RequestedRankFromFlagOrEnv(-1);
    if (!index.ok()) return Fail("worker", index.status());
    first = *index < 0 ? -1 : *index * a.local_ranks;
  }
  if (a.local_ranks > 1 && first < 0) {
    return Fail("worker", absl::InvalidArgumentError(
                              Cat("--local-ranks ", a.local_ranks,
                                  " needs --rank (the first rank) or "
                                  "LWS_WORKER_INDEX (the first is LWS_WORKER_INDEX x --local-ranks)")));
  }
  std::ofstream log;
  if (!a.log_file.empty()) {
    log.open(a.log_file, std::ios::app);
    if (!log) {
      return Fail("worker", absl::InvalidArgumentError(Cat("--log-file ", a.log_file, " cannot be opened")));
    }
  }
  std::ostream& out = a.log_file.empty() ? std::cerr : log;
  const LogContext context{.component = "worker", .rank = a.local_ranks == 1 ? first : -1, .request_id = ""};
  std::unique_ptr<SignalWatcher> signals;
  if (drain->count() > 0) {
    const int64_t bound_s = (drain->count() + 999) / 1000 + 5;
    signals = std::make_unique<SignalWatcher>([&out, context, bound_s](int sig, int count) {
      if (count > 0) {
        WriteLog(out, LogLevel::kWarning, context, Cat(SignalName(sig), " again: stopping at once"));
        _exit(1);  // children (if any) follow through PR_SET_PDEATHSIG
      }
      WriteLog(
          out, LogLevel::kInfo, context,
          Cat(SignalName(sig), ": serving until the coordinator ends the session, at most ", bound_s, " s"));
      alarm(static_cast<unsigned>(bound_s));  // SIGALRM's default action ends the process
    });
  }
  std::unique_ptr<grpc::Server> health;
  if (a.health_port >= 0) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> started = StartHealthServer(a.health_port);
    if (!started.ok()) return Fail("worker", started.status());
    health = std::move(*started);
  }
  if (!a.join_token_file.empty()) {
    if (!a.options.join_token.empty()) {
      return Fail("worker", absl::InvalidArgumentError("give --join-token or --join-token-file, not both"));
    }
    absl::StatusOr<std::string> token = ReadJoinTokenFile(a.join_token_file, "--join-token-file");
    if (!token.ok()) return Fail("worker", token.status());
    a.options.join_token = *std::move(token);
  }
  int code = 0;
  // --local-ranks children get the join token through their environment, never their argv.
  HandJoinTokenToChildren(a.options.join_token, a.join_token_file.empty()
                                                    ? ""
                                                    : std::filesystem::absolute(a.join_token_file).string());
  if (a.local_ranks == 1) {
    a.options.requested_rank = first;
    a.options.log = &out;
    absl::Status s = RunWorker(a.options);
    code = s.ok() ? 0 : Fail("worker", s);
  } else {
    std::vector<std::string> args = {"worker",
                                     "--coordinator",
                                     a.options.coordinator,
                                     "--device",
                                     a.device,
                                     "--listen-host",
                                     a.options.listen_host,
                                     "--local-ranks",
                                     "1",
                                     "--health-port",
                                     "-1",
                                     "--drain-timeout",
                                     "0s",
                                     "--log-level",
                                     a.log_level};
    if (a.options.device_index >= 0) {
      return Fail("worker",
                  absl::InvalidArgumentError("--gpu cannot be combined with --local-ranks > 1 (each "
                                             "rank takes the GPU rank modulo the GPUs)"));
    }
    if (!a.log_file.empty()) {
      args.push_back("--log-file");
      args.push_back(a.log_file);
    }
    for (std::string& arg : ControlTlsArgs(a.options.control_tls)) args.push_back(std::move(arg));
    absl::StatusOr<std::unique_ptr<LocalWorkers>> children =
        LocalWorkers::Start(ExecutablePath(), args, a.local_ranks, out, first);
    if (!children.ok()) return Fail("worker", children.status());
    WriteLog(
        out, LogLevel::kInfo, context,
        Cat("running ranks ", first, "-", first + a.local_ranks - 1, " as ", a.local_ranks, " processes"));
    // A rank that fails is restarted (it rejoins the group, which the coordinator re-forms), unless it fails
    // kMaxRestarts times within a minute: then the pod gives up (and Kubernetes restarts it).
    constexpr int kMaxRestarts = 5;
    std::map<int, std::deque<std::chrono::steady_clock::time_point>> restarts;
    bool failed = false;
    std::vector<int> failed_ranks;
    while ((*children)->Reap(&failed, &failed_ranks) > 0 || !failed_ranks.empty()) {
      bool give_up = false;
      for (int rank : failed_ranks) {
        const auto now = std::chrono::steady_clock::now();
        auto& times = restarts[rank];
        while (!times.empty() && now - times.front() > std::chrono::minutes(1)) times.pop_front();
        if (static_cast<int>(times.size()) >= kMaxRestarts) {
          give_up = true;
          code = Fail("worker", absl::UnavailableError(Cat("rank ", rank, " failed ", kMaxRestarts + 1,
                                                           " times within a minute; stopping ranks ", first, "-",
                                                           first + a.local_ranks - 1)));
          break;
        }
        times.push_back(now);
        if (absl::Status s = (*children)->Respawn(rank, /*kill=*/false); !s.ok()) {
          give_up = true;
          code = Fail("worker", s);
          break;
        }
      }
      failed_ranks.clear();
      if (give_up) {
        (*children)->Stop(std::chrono::milliseconds(0));
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  if (health != nullptr) health->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  return code;
}

}  // namespace

void AddServeCommands(CLI::App& app, std::vector<Subcommand>& commands) {
  auto serve = std::make_shared<ServeArgs>();
  CLI::App* serve_cmd =
      app.add_subcommand("serve", "Serve a model on this node: a coordinator and T x P workers");
  AddServeOptions(serve_cmd, *serve);
  commands.push_back({serve_cmd, [serve] { return RunServing("serve", *serve, /*local_ranks=*/-1); }});

  auto coord = std::make_shared<ServeArgs>();
  CLI::App* coord_cmd = app.add_subcommand(
      "coordinator", "Serve a model with T x P workers that join from anywhere (tessera worker)");
  AddServeOptions(coord_cmd, *coord);
  coord_cmd
      ->add_option("--advertise-host", coord->advertise_host,
                   "How workers reach this host for the rendezvous store (default 127.0.0.1)")
      ->envname("TESSERA_ADVERTISE_HOST");
  coord_cmd
      ->add_option("--local-ranks", coord->local_ranks,
                   "Also run ranks 0 .. N-1 here as worker processes (the leader pod's GPUs); with "
                   "LWS_GROUP_SIZE set, LWS_GROUP_SIZE x N must be tp x pp")
      ->capture_default_str()
      ->envname("TESSERA_LOCAL_RANKS");
  commands.push_back({coord_cmd, [coord] { return RunServing("coordinator", *coord, coord->local_ranks); }});

  auto worker = std::make_shared<WorkerArgs>();
  CLI::App* worker_cmd =
      app.add_subcommand("worker", "Join a coordinator as one rank, or as several (--local-ranks)");
  worker_cmd->add_option("--coordinator", worker->options.coordinator, "HOST:PORT of the coordinator")
      ->required()
      ->envname("TESSERA_COORDINATOR");
  worker_cmd->add_option("--rank", worker->rank,
                         "This worker's rank, or the first of --local-ranks (default: LWS_WORKER_INDEX x "
                         "--local-ranks, else registration order)");
  worker_cmd
      ->add_option("--local-ranks", worker->local_ranks,
                   "Ranks this command runs, one process each (a pod's GPUs)")
      ->capture_default_str()
      ->envname("TESSERA_LOCAL_RANKS");
  worker_cmd->add_option("--device", worker->device, "cpu, cuda or null")
      ->capture_default_str()
      ->envname("TESSERA_DEVICE");
  worker_cmd
      ->add_option("--gpu", worker->options.device_index,
                   "CUDA: the GPU to use (default: rank modulo the GPUs)")
      ->envname("TESSERA_GPU");
  worker_cmd
      ->add_option("--listen-host", worker->options.listen_host, "Address other ranks reach this one at")
      ->capture_default_str()
      ->envname("TESSERA_LISTEN_HOST");
  worker_cmd
      ->add_option("--join-token", worker->options.join_token,
                   "The coordinator's join token (prefer the environment variable: a flag shows in ps)")
      ->envname("TESSERA_JOIN_TOKEN");
  worker_cmd
      ->add_option("--join-token-file", worker->join_token_file,
                   "The join token from this file (a mounted Secret), trailing whitespace dropped")
      ->envname("TESSERA_JOIN_TOKEN_FILE");
  worker_cmd
      ->add_option("--control-ca", worker->options.control_tls.ca,
                   "Mutual TLS with the coordinator's control port: the CA its certificate must chain to")
      ->envname("TESSERA_CONTROL_CA");
  worker_cmd
      ->add_option("--control-cert", worker->options.control_tls.cert,
                   "This worker's certificate (signed by the CA the coordinator's --control-ca holds)")
      ->envname("TESSERA_CONTROL_CERT");
  worker_cmd
      ->add_option("--control-key", worker->options.control_tls.key, "PEM private key of --control-cert")
      ->envname("TESSERA_CONTROL_KEY");
  worker_cmd
      ->add_option("--health-port", worker->health_port,
                   "grpc.health.v1 on this port (service \"\" SERVING while the worker runs); -1 = off")
      ->capture_default_str()
      ->envname("TESSERA_HEALTH_PORT");
  worker_cmd
      ->add_option("--drain-timeout", worker->drain_timeout,
                   "SIGTERM / SIGINT: keep serving until the coordinator ends the session, at most this "
                   "long plus 5 s (0: stop at once)")
      ->capture_default_str()
      ->envname("TESSERA_DRAIN_TIMEOUT");
  worker_cmd->add_option("--log-level", worker->log_level, "debug, info, warning or error (JSON lines)")
      ->capture_default_str()
      ->envname("TESSERA_LOG_LEVEL");
  worker_cmd
      ->add_option("--log-file", worker->log_file, "Append the worker's log lines to FILE (default: stderr)")
      ->envname("TESSERA_WORKER_LOG_FILE");
  commands.push_back({worker_cmd, [worker] { return RunWorkerCommand(*worker); }});
}

}  // namespace tessera::tools
