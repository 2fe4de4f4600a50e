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
  c->workers_ = std::make_unique<WorkerGroup>(
      group, [self](const control::v1::StepResult& result) { self->scheduler_->OnStepResult(result); },
      [self](const absl::Status& status) { self->OnFailure(status); });
  SchedulerOptions scheduler = options.scheduler;
  scheduler.max_steps_in_flight = c->parallel_.pp_size() > 1 ? c->parallel_.pp_size() : 1;
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
  c->inference_ = std::make_unique<InferenceService>(options.model, c->tokenizer_, *c->scheduler_,
                                                     InferenceServiceOptions(), c->chat_);
  c->models_ = std::make_unique<ModelService>(options.model, *c->scheduler_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(), &c->port_);
  builder.RegisterService(c->workers_.get());
  builder.RegisterService(c->rendezvous_.get());
  builder.RegisterService(c->inference_.get());
  builder.RegisterService(c->models_.get());
  c->server_ = builder.BuildAndStart();
  if (c->server_ == nullptr || c->port_ == 0) {
    return absl::UnavailableError(Cat("cannot listen on ", options.listen_address, " (port in use?)"));
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
    auto api = std::make_shared<const OpenAiApi>(options.model, c->tokenizer_, c->chat_);
    ASSIGN_OR_RETURN(c->http_, HttpServer::Start(http, std::move(api), *c->scheduler_));
  }
  return c;
}

int Coordinator::http_port() const { return http_ != nullptr ? http_->port() : -1; }

absl::Status Coordinator::BringUp() {
  const int world = parallel_.world_size();
  const auto t0 = Clock::now();
  Log(Cat("coordinator: waiting for ", world, " workers on port ", port_));
  RETURN_IF_ERROR(workers_->WaitForWorkers(options_.startup_timeout));
  Log(Cat("coordinator: ", world, " workers joined in ", SecondsSince(t0), " s (", parallel_.ToString(),
          ")"));
  const ServedModel& model = options_.model;
  const SchedulerOptions& limits = options_.scheduler;
  RETURN_IF_ERROR(workers_
                      ->RunPhase(
                          [&](int rank) {
                            CoordinatorMessage m;
                            auto* shard = m.mutable_assign_shard();
                            shard->set_model_dir(model.dir);
                            shard->set_rank(rank);
                            shard->set_tp_size(parallel_.tp_size());
                            shard->set_pp_size(parallel_.pp_size());
                            for (int p = 0; p < parallel_.pp_size(); ++p) {
                              shard->add_pp_layers(static_cast<int>(parallel_.StageLayers(p).size()));
                            }
                            shard->set_device(model.device);
                            shard->set_num_threads(options_.threads_per_worker);
                            shard->set_max_num_tokens(limits.max_num_batched_tokens);
                            shard->set_max_num_seqs(limits.max_num_seqs);
                            shard->set_prefill_precision(options_.prefill_precision);
                            if (options_.graph_max_batch >= 0) {
                              shard->set_graph_max_batch(options_.graph_max_batch);
                            }
                            shard->set_communicator(options_.communicator);
                            shard->set_single_node(options_.single_node);
                            return m;
                          },
                          options_.startup_timeout)
                      .status());
  const std::string prefix = Cat("epoch", workers_->epoch());
  RETURN_IF_ERROR(workers_
                      ->RunPhase(
                          [&](int) {
                            CoordinatorMessage m;
                            auto* comm = m.mutable_init_comm();
                            comm->set_store_address(Cat(options_.advertise_host, ":", port_));
                            comm->set_group_prefix(prefix);
                            comm->set_timeout_ms(options_.comm_timeout.count());
                            return m;
                          },
                          options_.startup_timeout)
                      .status());
  const auto t_load = Clock::now();
  ASSIGN_OR_RETURN(std::vector<control::v1::Ack> loaded, workers_->RunPhase(
                                                             [](int) {
                                                               CoordinatorMessage m;
                                                               m.mutable_load_weights();
                                                               return m;
                                                             },
                                                             options_.startup_timeout));
  for (int rank = 0; rank < world; ++rank) {
    Log(Cat("coordinator: rank ", rank, " loaded its shard in ", loaded[rank].seconds(), " s (",
            loaded[rank].bytes_read(), " bytes read, peak RSS ", loaded[rank].peak_rss_bytes(), ")"));
  }
  Log(Cat("coordinator: every shard loaded in ", SecondsSince(t_load), " s"));
  ASSIGN_OR_RETURN(std::vector<control::v1::Ack> profiled,
                   workers_->RunPhase(
                       [&](int) {
                         CoordinatorMessage m;
                         m.mutable_profile_memory()->set_kv_cache_memory_bytes(options_.kv_cache_memory);
                         return m;
                       },
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
  const int max_model_len = scheduler_->Activate(num_blocks);
  if (max_model_len < options_.scheduler.max_model_len) {
    Log(Cat("coordinator: max_model_len lowered from ", options_.scheduler.max_model_len, " to ", max_model_len,
            ": the KV cache holds ", num_blocks, " blocks of 16 tokens; raise --kv-cache-memory for longer "
            "sequences"),
        LogLevel::kWarning);
  }
  server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);
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
  Log(Cat("coordinator: ", status.message(), "; not serving"), LogLevel::kError);
  // Readiness first: a client whose request ends with UNAVAILABLE must then find the service NOT_SERVING.
  if (server_ != nullptr) server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
  if (scheduler_ != nullptr) scheduler_->Fail(status);
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
  if (workers_ != nullptr) workers_->Shutdown(grace);
  if (rendezvous_ != nullptr) rendezvous_->Shutdown();
  if (server_ != nullptr)
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  absl::MutexLock lock(&shutdown_mu_);
  shutdown_done_ = true;
}

}  // namespace tessera
