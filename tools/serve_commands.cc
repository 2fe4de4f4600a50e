// serve, coordinator and worker: the processes of a serving deployment. serve runs a coordinator and T x P
// local workers; coordinator and worker are the same two halves for several nodes. SIGINT / SIGTERM stop
// everything, children included.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "coordinator/chat_template/model_chat_templates.h"
#include "coordinator/coordinator.h"
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
  cmd->add_option("--device", a.device, "cpu or cuda")->capture_default_str()->envname("TESSERA_DEVICE");
  cmd->add_option("--host", a.host, "Address to listen on")->capture_default_str()->envname("TESSERA_HOST");
  cmd->add_option("--grpc-port", a.grpc_port, "gRPC port (0 = pick a free one and print it)")
      ->capture_default_str()
      ->envname("TESSERA_GRPC_PORT");
  cmd->add_option("--http-port", a.http_port,
                  "OpenAI-compatible HTTP port (-1 = off, 0 = pick a free one and print it)")
      ->capture_default_str()
      ->envname("TESSERA_HTTP_PORT");
  cmd->add_option("--kv-cache-memory", a.kv_cache_memory, "KV cache per worker (e.g. 512MiB, 4GiB)")
      ->capture_default_str()
      ->envname("TESSERA_KV_CACHE_MEMORY");
  cmd->add_option("--threads-per-worker", a.threads_per_worker,
                  "CPU threads per worker (0 = cores / workers)")
      ->capture_default_str()
      ->envname("TESSERA_THREADS_PER_WORKER");
  cmd->add_option("--max-num-seqs", a.max_num_seqs, "Sequences in the running batch")->capture_default_str();
  cmd->add_option("--max-num-batched-tokens", a.max_num_batched_tokens,
                  "Tokens in one step (longer prompts are prefilled in chunks)")
      ->capture_default_str();
  cmd->add_option("--max-queued-requests", a.max_queued_requests,
                  "Requests waiting for admission; more are refused with RESOURCE_EXHAUSTED")
      ->capture_default_str();
  cmd->add_option("--max-model-len", a.max_model_len,
                  "Longest sequence, prompt + max_tokens (0 = the model's; lowered to what the KV cache holds)")
      ->capture_default_str()
      ->envname("TESSERA_MAX_MODEL_LEN");
  cmd->add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", a.enable_prefix_caching,
                "Reuse the KV blocks of prompts that start the same way (on by default)")
      ->envname("TESSERA_ENABLE_PREFIX_CACHING");
  cmd->add_option("--max-queue-time", a.max_queue_time,
                  "A request waiting longer for admission fails with RESOURCE_EXHAUSTED / 429 (0 = no limit)")
      ->capture_default_str();
  cmd->add_option("--prefill-precision", a.prefill_precision, "exact or bf16 (CPU prefill GEMMs)")
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
      ->capture_default_str();
  cmd->add_option("--heartbeat-interval", a.heartbeat_interval, "Between heartbeats")->capture_default_str();
  cmd->add_option("--heartbeat-timeout", a.heartbeat_timeout, "Silence after which a worker counts as failed")
      ->capture_default_str()
      ->envname("TESSERA_HEARTBEAT_TIMEOUT");
  cmd->add_option("--comm-timeout", a.comm_timeout, "Bound on rendezvous and every collective")
      ->capture_default_str();
  cmd->add_option("--startup-timeout", a.startup_timeout, "Bound on workers joining and loading")
      ->capture_default_str();
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
// with sigwait and calls `on_signal` once. Destroying it releases that thread.
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int)> on_signal) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this, on_signal] {
      int sig = 0;
      sigwait(&set_, &sig);
      if (!released_) on_signal(sig);
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

// Runs a coordinator until a signal; with `local_workers`, starts and stops T x P workers too.
int RunServing(const char* command, const ServeArgs& args, bool local_workers) {
  if (absl::Status s = SetUpLogs(args.log_level, args.log_requests); !s.ok()) return Fail(command, s);
  absl::StatusOr<CoordinatorOptions> options = MakeCoordinatorOptions(args);
  if (!options.ok()) return Fail(command, options.status());
  options->single_node = local_workers;
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
  absl::Mutex mu;
  bool stop = false;               // guarded by mu
  LocalEngine* running = nullptr;  // guarded by mu
  auto signals = std::make_unique<SignalWatcher>([&](int sig) {
    Log(LogLevel::kInfo, {.component = command, .rank = -1, .request_id = ""},
        Cat(sig == SIGINT ? "SIGINT" : "SIGTERM", ", shutting down"));
    LocalEngine* engine = nullptr;
    {
      absl::MutexLock lock(&mu);
      stop = true;
      engine = running;
    }
    // Outside the lock: a bring-up in progress ends with CANCELLED; the main thread then finishes the rest.
    if (engine != nullptr) engine->coordinator().Shutdown(std::chrono::milliseconds(3000));
  });
  absl::StatusOr<std::unique_ptr<LocalEngine>> started =
      LocalEngine::Start(*options, local_workers, {"--log-level", args.log_level}, std::move(tokenizer),
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
    std::cout << ready.dump() << std::endl;
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&stop));
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
                                {"prefix_cache_hits", stats.prefix_hits}}
                     .dump()
              << std::endl;
  }
  signals
      .reset();  // joins the watcher, which may still be inside the engine's Shutdown, before the engine goes
  return exit_code;
}

}  // namespace

void AddServeCommands(CLI::App& app, std::vector<Subcommand>& commands) {
  auto serve = std::make_shared<ServeArgs>();
  CLI::App* serve_cmd =
      app.add_subcommand("serve", "Serve a model on this node: a coordinator and T x P workers");
  AddServeOptions(serve_cmd, *serve);
  commands.push_back({serve_cmd, [serve] { return RunServing("serve", *serve, /*local_workers=*/true); }});

  auto coord = std::make_shared<ServeArgs>();
  CLI::App* coord_cmd = app.add_subcommand(
      "coordinator", "Serve a model with T x P workers that join from anywhere (tessera worker)");
  AddServeOptions(coord_cmd, *coord);
  coord_cmd
      ->add_option("--advertise-host", coord->advertise_host,
                   "How workers reach this host for the rendezvous store (default 127.0.0.1)")
      ->envname("TESSERA_ADVERTISE_HOST");
  commands.push_back(
      {coord_cmd, [coord] { return RunServing("coordinator", *coord, /*local_workers=*/false); }});

  auto worker = std::make_shared<WorkerOptions>();
  auto rank = std::make_shared<int>(-1);
  auto device = std::make_shared<std::string>("cpu");
  CLI::App* worker_cmd = app.add_subcommand("worker", "Join a coordinator as one rank");
  worker_cmd->add_option("--coordinator", worker->coordinator, "HOST:PORT of the coordinator")
      ->required()
      ->envname("TESSERA_COORDINATOR");
  worker_cmd->add_option("--rank", *rank,
                         "This worker's rank (default: LWS_WORKER_INDEX, else registration order)");
  worker_cmd->add_option("--device", *device, "cpu or cuda")
      ->capture_default_str()
      ->envname("TESSERA_DEVICE");
  worker_cmd
      ->add_option("--gpu", worker->device_index, "CUDA: the GPU to use (default: rank modulo the GPUs)")
      ->envname("TESSERA_GPU");
  worker_cmd->add_option("--listen-host", worker->listen_host, "Address other ranks reach this one at")
      ->capture_default_str()
      ->envname("TESSERA_LISTEN_HOST");
  auto log_level = std::make_shared<std::string>("info");
  worker_cmd->add_option("--log-level", *log_level, "debug, info, warning or error (JSON lines)")
      ->capture_default_str()
      ->envname("TESSERA_LOG_LEVEL");
  auto log_file = std::make_shared<std::string>();
  worker_cmd->add_option("--log-file", *log_file, "Append the worker's log lines to FILE (default: stderr)")
      ->envname("TESSERA_WORKER_LOG_FILE");
  commands.push_back({worker_cmd, [worker, rank, device, log_file, log_level] {
                        if (absl::Status s = SetUpLogs(*log_level, false); !s.ok()) return Fail("worker", s);
                        absl::StatusOr<int> requested = RequestedRankFromFlagOrEnv(*rank);
                        if (!requested.ok()) return Fail("worker", requested.status());
                        worker->requested_rank = *requested;
                        absl::StatusOr<DeviceKind> kind = ParseDeviceKind(*device);
                        if (!kind.ok()) return Fail("worker", kind.status());
                        worker->device = *kind;
                        std::ofstream log;
                        if (!log_file->empty()) {
                          log.open(*log_file, std::ios::app);
                          if (!log) {
                            return Fail("worker", absl::InvalidArgumentError(
                                                      Cat("--log-file ", *log_file, " cannot be opened")));
                          }
                        }
                        worker->log = log_file->empty() ? &std::cerr : &log;
                        absl::Status s = RunWorker(*worker);
                        return s.ok() ? 0 : Fail("worker", s);
                      }});
}

}  // namespace tessera::tools
