#include "coordinator/coordinator.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <chrono>

#include "coordinator/http/http_server.h"
#include "coordinator/inference_service.h"
#include "coordinator/metrics.h"
#include "coordinator/rendezvous_service.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "coordinator/worker_group.h"
#include "core/log.h"
#include "core/secret.h"
#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

constexpr char kServiceName[] = "tessera.v1.InferenceService";
using control::v1::CoordinatorMessage;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

Coordinator::Coordinator(const CoordinatorOptions& options, ParallelConfig parallel, std::ostream& log)
    : options_(options), parallel_(std::move(parallel)), log_(log) {}

Coordinator::~Coordinator() { Shutdown(std::chrono::milliseconds(2000)); }

std::string Coordinator::MetricsText() const {
  const std::vector<double> busy = workers_->busy_seconds();
  for (size_t rank = 0; rank < busy.size() && rank < busy_gauges_.size(); ++rank) {
    busy_gauges_[rank]->Set(busy[rank]);
  }
  return metrics_->Render();
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(
    const CoordinatorOptions& options, std::unique_ptr<Tokenizer> tokenizer,
    std::unique_ptr<ModelChatTemplates> chat_templates, std::ostream& log) {
  ASSIGN_OR_RETURN(ParallelConfig parallel, ParallelConfig::Create(options.shape, options.model.tp_size,
                                                                   options.model.pp_size, options.pp_layers));
  std::unique_ptr<Coordinator> c(new Coordinator(options, std::move(parallel), log));
  c->tokenizer_ = std::move(tokenizer);
  Coordinator* self = c.get();
  WorkerGroupOptions group;
  group.world_size = c->parallel_.world_size();
  group.output_rank = c->parallel_.output_rank();
  group.heartbeat_interval = options.heartbeat_interval;
  group.heartbeat_timeout = options.heartbeat_timeout;
  group.join_token = options.join_token;
  c->workers_ = std::make_unique<WorkerGroup>(
      group, [self](const control::v1::StepResult& result) { self->scheduler_->OnStepResult(result); },
      [self](const absl::Status& status) { self->OnFailure(status); });
  SchedulerOptions scheduler = options.scheduler;
  scheduler.max_steps_in_flight = c->parallel_.pp_size() > 1 ? c->parallel_.pp_size() : 1;
  scheduler.suspend_on_send_failure = options.replacement_timeout.count() > 0;
  c->metrics_ = std::make_unique<MetricsRegistry>();
  c->engine_metrics_ = std::make_unique<EngineMetrics>(*c->metrics_, options.model.id);
  MetricFamily& busy = c->metrics_->AddGauge(
      "tessera:worker_busy_seconds",
      "Seconds the rank has spent computing steps (from its heartbeats): its rate is the stage's utilisation.",
      {"model_name", "rank"});
  for (int rank = 0; rank < c->parallel_.world_size(); ++rank) {
    c->busy_gauges_.push_back(&busy.gauge({options.model.id, std::to_string(rank)}));
  }
  c->scheduler_ = std::make_unique<Scheduler>(scheduler, *c->workers_, c->engine_metrics_.get());
  c->rendezvous_ = std::make_unique<RendezvousService>();
  c->chat_ = std::make_shared<ChatRenderer>(std::move(chat_templates), options.model.dir);
  if (options.resume_window.count() > 0) {
    StreamJournalStoreOptions journals;
    journals.window = absl::FromChrono(options.resume_window);
    c->journals_ = std::make_unique<StreamJournalStore>(*c->scheduler_, journals);
  }
  if (!options.api_key_file.empty()) {
    ASSIGN_OR_RETURN(c->api_keys_, ApiKeys::Load(options.api_key_file));
  }
  InferenceServiceOptions inference;
  inference.api_keys = c->api_keys_.get();
  inference.limits = options.limits;
  c->inference_ = std::make_unique<InferenceService>(options.model, c->tokenizer_, *c->scheduler_, inference,
                                                     c->chat_, c->journals_.get());
  c->models_ = std::make_unique<ModelService>(options.model, *c->scheduler_, c->api_keys_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  const bool own_control_port = !options.control_address.empty();
  if (!own_control_port && (!options.public_tls.empty() || !options.control_tls.empty())) {
    return absl::InvalidArgumentError(
        "with TLS the control plane needs a port of its own (--control-port): its certificates are not the "
        "public API's");
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> public_credentials,
                   GrpcServerCredentials(options.public_tls, "--tls-cert / --tls-key"));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, public_credentials, &c->port_);
  if (!own_control_port) {
    builder.RegisterService(c->workers_.get());
    builder.RegisterService(c->rendezvous_.get());
  }
  builder.RegisterService(c->inference_.get());
  builder.RegisterService(c->models_.get());
  c->server_ = builder.BuildAndStart();
  if (c->server_ == nullptr || c->port_ == 0) {
    return absl::UnavailableError(Cat("cannot listen on ", options.listen_address, " (port in use?)"));
  }
  if (own_control_port) {
    ASSIGN_OR_RETURN(
        std::shared_ptr<grpc::ServerCredentials> control_credentials,
        GrpcServerCredentials(options.control_tls, "--control-cert / --control-key / --control-ca"));
    grpc::ServerBuilder control;
    control.AddListeningPort(options.control_address, control_credentials, &c->control_port_);
    control.RegisterService(c->workers_.get());
    control.RegisterService(c->rendezvous_.get());
    c->control_server_ = control.BuildAndStart();
    if (c->control_server_ == nullptr || c->control_port_ == 0) {
      return absl::UnavailableError(
          Cat("cannot listen on the control address ", options.control_address, " (port in use?)"));
    }
  }
  c->server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
  if (options.http_port >= 0) {
    HttpServerOptions http;
    const std::string& address = options.listen_address;
    http.host = address.substr(0, address.rfind(':'));
    if (http.host.size() >= 2 && http.host.front() == '[')
      http.host = http.host.substr(1, http.host.size() - 2);
    http.port = options.http_port;
    http.threads = options.http_threads;
    http.metrics = [self] { return self->MetricsText(); };
    http.api_keys = c->api_keys_.get();
    http.max_body_bytes = options.max_request_bytes;
    http.protect_metrics = options.protect_metrics;
    http.tls = options.public_tls;
    http.log = [self](const std::string& line) { self->Log(line); };
    OpenAiApiOptions api_options;
    api_options.resumable_streams = c->journals_ != nullptr;
    api_options.limits = options.limits;
    auto api = std::make_shared<const OpenAiApi>(options.model, c->tokenizer_, c->chat_, api_options);
    ASSIGN_OR_RETURN(c->http_, HttpServer::Start(http, std::move(api), *c->scheduler_, c->journals_.get()));
  }
  return c;
}

int Coordinator::http_port() const { return http_ != nullptr ? http_->port() : -1; }

CoordinatorMessage Coordinator::AssignShardMessage(int rank) const {
  const SchedulerOptions& limits = options_.scheduler;
  CoordinatorMessage m;
  auto* shard = m.mutable_assign_shard();
  shard->set_model_dir(options_.model.dir);
  shard->set_rank(rank);
  shard->set_tp_size(parallel_.tp_size());
  shard->set_pp_size(parallel_.pp_size());
  for (int p = 0; p < parallel_.pp_size(); ++p) {
    shard->add_pp_layers(static_cast<int>(parallel_.StageLayers(p).size()));
  }
  shard->set_device(options_.model.device);
  shard->set_num_threads(options_.threads_per_worker);
  shard->set_max_num_tokens(limits.max_num_batched_tokens);
  shard->set_max_num_seqs(limits.max_num_seqs);
  shard->set_prefill_precision(options_.prefill_precision);
  shard->set_quant_activations(options_.quant_activations);
  if (options_.graph_max_batch >= 0) shard->set_graph_max_batch(options_.graph_max_batch);
  shard->set_communicator(options_.communicator);
  shard->set_single_node(options_.single_node);
  return m;
}

CoordinatorMessage Coordinator::LoadWeightsMessage() {
  CoordinatorMessage m;
  m.mutable_load_weights();
  return m;
}

CoordinatorMessage Coordinator::ProfileMemoryMessage() const {
  CoordinatorMessage m;
  m.mutable_profile_memory()->set_kv_cache_memory_bytes(options_.kv_cache_memory);
  return m;
}

CoordinatorMessage Coordinator::InitCommMessage() {
  const uint64_t epoch = workers_->epoch();
  if (store_token_.empty() || store_token_epoch_ != epoch) {
    store_token_ = RandomToken();
    store_token_epoch_ = epoch;
    rendezvous_->SetToken(store_token_);
  }
  CoordinatorMessage m;
  auto* comm = m.mutable_init_comm();
  comm->set_store_token(store_token_);
  comm->set_store_address(Cat(options_.advertise_host, ":", control_port()));
  comm->set_group_prefix(Cat("epoch", workers_->epoch()));  // a new epoch's groups never meet the old ones
  comm->set_timeout_ms(options_.comm_timeout.count());
  return m;
}

absl::Status Coordinator::BringUp() {
  // A worker lost while the group comes up (killed, crashed while loading) does not end the start-up: every
  // rank is dropped and started again (tessera serve restarts its children; elsewhere they rejoin), at most
  // kMaxStartAttempts times. Any other error (a bad checkpoint, a split that does not fit) ends it at once.
  constexpr int kMaxStartAttempts = 3;
  for (int attempt = 1;; ++attempt) {
    absl::Status status = BringUpOnce();
    if (status.ok() || !absl::IsUnavailable(status) || attempt == kMaxStartAttempts ||
        options_.replacement_timeout.count() == 0) {
      return status;
    }
    Log(Cat("coordinator: start-up attempt ", attempt, " failed: ", status.message(), "; starting every rank again"),
        LogLevel::kWarning);
    ASSIGN_OR_RETURN(WorkerGroup::Recovery recovery,
                     workers_->BeginRecovery(std::chrono::seconds(10), /*drop_all=*/true));
    rendezvous_->RetireAllBut(Cat("epoch", recovery.new_epoch, "/"));
    if (options_.replace_rank) {
      for (int rank : recovery.vacant) options_.replace_rank(rank, /*kill=*/true);
    }
    scheduler_->Resume();  // clears the failure the lost worker reported (nothing runs before Activate)
  }
}

absl::Status Coordinator::BringUpOnce() {
  const int world = parallel_.world_size();
  const auto t0 = Clock::now();
  Log(Cat("coordinator: waiting for ", world, " workers on port ", control_port()));
  RETURN_IF_ERROR(workers_->WaitForWorkers(options_.startup_timeout));
  Log(Cat("coordinator: ", world, " workers joined in ", SecondsSince(t0), " s (", parallel_.ToString(),
          ")"));
  const ServedModel& model = options_.model;
  RETURN_IF_ERROR(
      workers_->RunPhase([&](int rank) { return AssignShardMessage(rank); }, options_.startup_timeout).status());
  RETURN_IF_ERROR(
      workers_->RunPhase([&](int) { return InitCommMessage(); }, options_.startup_timeout).status());
  const auto t_load = Clock::now();
  ASSIGN_OR_RETURN(std::vector<control::v1::Ack> loaded, workers_->RunPhase(
                                                             [](int) { return LoadWeightsMessage(); },
                                                             options_.startup_timeout));
  for (int rank = 0; rank < world; ++rank) {
    Log(Cat("coordinator: rank ", rank, " loaded its shard in ", loaded[rank].seconds(), " s (",
            loaded[rank].bytes_read(), " bytes read, peak RSS ", loaded[rank].peak_rss_bytes(), ")"));
  }
  Log(Cat("coordinator: every shard loaded in ", SecondsSince(t_load), " s"));
  ASSIGN_OR_RETURN(std::vector<control::v1::Ack> profiled,
                   workers_->RunPhase(
                       [&](int) { return ProfileMemoryMessage(); },
                       options_.startup_timeout));
  int num_blocks = profiled[0].max_kv_blocks();
  for (const auto& ack : profiled) num_blocks = std::min(num_blocks, ack.max_kv_blocks());
  if (options_.max_kv_blocks > 0) num_blocks = std::min(num_blocks, options_.max_kv_blocks);
  if (num_blocks <= 0) {
    return absl::ResourceExhaustedError(Cat("the KV cache budget holds no block of ",
                                            profiled[0].kv_block_bytes(),
                                            " bytes on some rank; raise --kv-cache-memory"));
  }
  RETURN_IF_ERROR(workers_
                      ->RunPhase(
                          [&](int) {
                            CoordinatorMessage m;
                            m.mutable_allocate_kv_cache()->set_num_blocks(num_blocks);
                            return m;
                          },
                          options_.startup_timeout)
                      .status());
  num_kv_blocks_ = num_blocks;
  const int max_model_len = scheduler_->Activate(num_blocks);
  if (max_model_len < options_.scheduler.max_model_len) {
    Log(Cat("coordinator: max_model_len lowered from ", options_.scheduler.max_model_len, " to ", max_model_len,
            ": the KV cache holds ", num_blocks, " blocks of 16 tokens; raise --kv-cache-memory for longer "
            "sequences"),
        LogLevel::kWarning);
  }
  server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  {
    absl::MutexLock lock(&recovery_mu_);
    serving_ = true;
  }
  if (options_.step_timeout.count() > 0 && !watchdog_thread_.joinable()) {
    watchdog_thread_ = std::thread([this] { WatchdogLoop(); });
  }
  Log(Cat("coordinator: serving ", model.id, " with ", num_blocks, " KV blocks per rank (",
          num_blocks * int64_t{16}, " tokens) after ", SecondsSince(t0), " s"));
  return absl::OkStatus();
}

void Coordinator::Log(const std::string& line, LogLevel level) {
  absl::MutexLock lock(&log_mu_);  // then WriteLog's own lock, a leaf
  WriteLog(log_, level, {.component = "coordinator", .rank = -1, .request_id = ""}, line);
}

absl::StatusOr<std::vector<control::v1::Ack>> Coordinator::DrainWorkers(std::chrono::milliseconds timeout) {
  return workers_->RunPhase(
      [](int) {
        CoordinatorMessage m;
        m.mutable_drain();
        return m;
      },
      timeout);
}

void Coordinator::OnFailure(const absl::Status& status) {
  // Readiness first: a client whose request ends with UNAVAILABLE must then find the service NOT_SERVING.
  if (server_ != nullptr) server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
  bool recover = false;
  {
    absl::MutexLock lock(&recovery_mu_);
    absl::MutexLock shutdown(&shutdown_mu_);
    if (serving_ && !shut_down_ && options_.replacement_timeout.count() > 0) {
      recover = true;
      scheduler_->Suspend();  // before the recovery can resume it
      if (recovering_) {
        failed_again_ = true;  // the running recovery starts over
      } else {
        recovering_ = true;
        if (recovery_thread_.joinable()) recovery_thread_.join();  // the last recovery's, finished
        recovery_thread_ = std::thread([this] { RecoverLoop(); });
      }
    }
  }
  if (!recover) {
    Log(Cat("coordinator: ", status.message(), "; not serving"), LogLevel::kError);
    if (scheduler_ != nullptr) scheduler_->Fail(status);
    return;
  }
  Log(Cat("coordinator: ", status.message(), "; re-forming the group (requests wait)"), LogLevel::kWarning);
}

void Coordinator::WatchdogLoop() {
  const double limit = std::chrono::duration<double>(options_.step_timeout).count();
  uint64_t reported = 0;  // a step is reported once
  while (!stop_watchdog_.WaitForNotificationWithTimeout(absl::Milliseconds(100))) {
    const auto [step, age] = scheduler_->OldestStepInFlight();
    if (step == 0 || step == reported || age < limit) continue;
    reported = step;
    OnFailure(absl::DeadlineExceededError(Cat("step ", step, " has run for ", age,
                                              " s (--step-timeout): a rank is stuck inside it")));
  }
}

void Coordinator::RecoverLoop() {
  const Clock::time_point detected = Clock::now();
  Clock::time_point deadline = detected + options_.replacement_timeout;
  bool failed_requests = false;
  RecoveryState state;  // across attempts
  for (int attempt = 1;; ++attempt) {
    {
      absl::MutexLock lock(&recovery_mu_);
      failed_again_ = false;
    }
    const absl::Status status = RecoverOnce(deadline, state);
    bool again = false;
    {
      absl::MutexLock lock(&recovery_mu_);
      absl::MutexLock shutdown(&shutdown_mu_);
      if (shut_down_) {
        recovering_ = false;
        return;
      }
      again = failed_again_;
      if (status.ok() && !again) {
        recovering_ = false;  // a failure from here on starts a new recovery (and suspends after this)
        scheduler_->Resume();
        server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);
      }
    }
    if (status.ok() && !again) {
      Log(Cat("coordinator: the group is whole again in epoch ", workers_->epoch(), ", ", SecondsSince(detected),
              " s after the failure (", attempt, attempt == 1 ? " attempt" : " attempts",
              "); requests continue"));
      return;
    }
    Log(Cat("coordinator: recovery attempt ", attempt, " failed: ",
            status.ok() ? "another failure came" : std::string(status.message())),
        LogLevel::kWarning);
    if (Clock::now() >= deadline) {
      if (!failed_requests) {
        // The requests cannot wait any longer; the group still recovers when its ranks come back.
        scheduler_->Fail(absl::UnavailableError(
            Cat("no replacement for the lost workers within --replacement-timeout (",
                options_.replacement_timeout.count(), " ms): ", status.message())));
        failed_requests = true;
      }
      deadline = Clock::now() + options_.startup_timeout;
    }
    // Another failure is already known (a second rank lost): start over at once; otherwise pause before trying
    // again (nothing has changed yet).
    if (!again) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

absl::Status Coordinator::RecoverOnce(Clock::time_point deadline, RecoveryState& state) {
  const auto t0 = Clock::now();
  std::vector<int>& to_set_up = state.to_set_up;
  // A replacement an earlier attempt began to set up starts again from a new process (its setup cannot be
  // resumed half-way); one that joined but was not yet set up just waits for this attempt.
  ASSIGN_OR_RETURN(WorkerGroup::Recovery recovery,
                   workers_->BeginRecovery(std::chrono::seconds(10), /*drop_all=*/false, state.setup_begun));
  state.setup_begun.clear();
  rendezvous_->RetireAllBut(Cat("epoch", recovery.new_epoch, "/"));  // a rank joining an old group gives up
  for (int rank : recovery.lost) {
    if (std::find(to_set_up.begin(), to_set_up.end(), rank) == to_set_up.end()) to_set_up.push_back(rank);
  }
  std::sort(to_set_up.begin(), to_set_up.end());
  std::string lost;
  for (int rank : recovery.lost) lost += Cat(lost.empty() ? "" : ", ", rank);
  Log(Cat("coordinator: epoch ", recovery.old_epoch, " -> ", recovery.new_epoch,
          recovery.lost.empty() ? "; no rank lost" : Cat("; replacing rank(s) ", lost)));
  if (options_.replace_rank) {
    // The lost ranks' processes are replaced (killed first: one may be stopped or stuck); a vacant rank whose
    // replacement died before it joined is started again.
    for (int rank : recovery.vacant) {
      const bool lost_now = std::binary_search(recovery.lost.begin(), recovery.lost.end(), rank);
      options_.replace_rank(rank, /*kill=*/lost_now);
    }
  }
  // The survivors finish what they were doing (a step whose collective lost its peer fails within
  // --comm-timeout), forget their sequences, close their communicators and move to the new epoch.
  const auto t_reset = Clock::now();
  absl::Status reset = workers_
                           ->RunPhase(
                               [&](int) {
                                 CoordinatorMessage m;
                                 m.set_epoch(recovery.old_epoch);
                                 m.mutable_reset()->set_new_epoch(recovery.new_epoch);
                                 return m;
                               },
                               options_.comm_timeout + std::chrono::seconds(10), recovery.survivors)
                           .status();
  // A survivor that cannot even take a Reset is stuck inside a step: the next attempt replaces it.
  if (absl::IsDeadlineExceeded(reset)) workers_->MarkLost(workers_->Unanswered());
  RETURN_IF_ERROR(reset);
  const auto t_join = Clock::now();
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    const absl::Status joined =
        workers_->WaitForWorkers(std::clamp(left, std::chrono::milliseconds(1), std::chrono::milliseconds(500)));
    if (joined.ok()) break;
    if (!absl::IsDeadlineExceeded(joined) || Clock::now() >= deadline) return joined;
    // A replacement that died before it joined (killed while starting) is started again.
    if (options_.replace_rank) {
      for (int rank : workers_->Missing()) options_.replace_rank(rank, /*kill=*/false);
    }
  }
  const auto t_setup = Clock::now();
  state.setup_begun = to_set_up;
  if (!to_set_up.empty()) {
    RETURN_IF_ERROR(workers_
                        ->RunPhase([&](int rank) { return AssignShardMessage(rank); }, options_.startup_timeout,
                                   to_set_up)
                        .status());
  }
  RETURN_IF_ERROR(
      workers_->RunPhase([&](int) { return InitCommMessage(); }, options_.startup_timeout).status());
  const auto t_load = Clock::now();
  if (!to_set_up.empty()) {
    RETURN_IF_ERROR(workers_
                        ->RunPhase(
                            [](int) { return LoadWeightsMessage(); },
                            options_.startup_timeout, to_set_up)
                        .status());
    ASSIGN_OR_RETURN(std::vector<control::v1::Ack> profiled,
                     workers_->RunPhase(
                         [&](int) { return ProfileMemoryMessage(); },
                         options_.startup_timeout, to_set_up));
    for (int rank : to_set_up) {
      if (profiled[rank].max_kv_blocks() < num_kv_blocks_) {
        return absl::ResourceExhaustedError(Cat("replacement rank ", rank, " holds ",
                                                profiled[rank].max_kv_blocks(), " KV blocks, the group ",
                                                num_kv_blocks_, "; raise --kv-cache-memory"));
      }
    }
    RETURN_IF_ERROR(workers_
                        ->RunPhase(
                            [&](int) {
                              CoordinatorMessage m;
                              m.mutable_allocate_kv_cache()->set_num_blocks(num_kv_blocks_);
                              m.mutable_allocate_kv_cache()->set_skip_graphs(true);
                              return m;
                            },
                            options_.startup_timeout, to_set_up)
                        .status());
  }
  auto secs = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  to_set_up.clear();
  state.setup_begun.clear();
  Log(Cat("coordinator: re-formed in ", secs(t0, Clock::now()), " s: survivors reset ", secs(t_reset, t_join),
          " s, replacements joined ", secs(t_join, t_setup), " s, communicators and loading ",
          secs(t_setup, Clock::now()), " s (of which loading ", secs(t_load, Clock::now()), " s)"));
  return absl::OkStatus();
}

void Coordinator::BeginDrain() {
  // Readiness first, so that a load balancer stops sending before the refusals begin.
  if (server_ != nullptr) server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
  if (scheduler_ != nullptr) scheduler_->StartDraining();
}

void Coordinator::Shutdown(std::chrono::milliseconds grace) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) {
      shutdown_mu_.Await(absl::Condition(&shutdown_done_));
      return;
    }
    shut_down_ = true;
  }
  if (server_ != nullptr) server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
  if (scheduler_ != nullptr) scheduler_->Fail(absl::UnavailableError("the server is shutting down"));
  if (http_ != nullptr) http_->Stop();  // after Fail: every HTTP request has its OnDone
  stop_watchdog_.Notify();
  if (watchdog_thread_.joinable()) watchdog_thread_.join();
  if (workers_ != nullptr) workers_->Shutdown(grace);  // a recovery in progress ends with CANCELLED
  std::thread recovery;
  {
    absl::MutexLock lock(&recovery_mu_);
    recovery = std::move(recovery_thread_);
  }
  if (recovery.joinable()) recovery.join();
  if (rendezvous_ != nullptr) rendezvous_->Shutdown();
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(500);
  if (server_ != nullptr) server_->Shutdown(deadline);
  if (control_server_ != nullptr) control_server_->Shutdown(deadline);
  absl::MutexLock lock(&shutdown_mu_);
  shutdown_done_ = true;
}

}  // namespace tessera
