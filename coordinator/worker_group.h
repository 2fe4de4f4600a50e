// WorkerGroup: the coordinator's side of the control plane. It implements the Control service (Register and
// one Session stream per worker), keeps the registry of ranks, runs the setup phases (one message per rank,
// waiting for every Ack), writes steps to every worker, routes the output rank's step results, and watches
// heartbeats. The first failure (a worker that closes its session, misses heartbeats or reports an error)
// is reported once to the failure handler; the group stays failed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/scheduler.h"
#include "tessera/control/v1/control.grpc.pb.h"

namespace tessera {

struct WorkerGroupOptions {
  int world_size = 1;
  int output_rank = 0;  // the rank whose StepResults are routed to the step-result handler
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{5000};
};

class WorkerGroup final : public control::v1::Control::Service, public StepSink {
 public:
  using StepResultHandler = std::function<void(const control::v1::StepResult&)>;
  using FailureHandler = std::function<void(const absl::Status&)>;

  // Handlers are called on gRPC or heartbeat threads; set them before any worker registers.
  WorkerGroup(const WorkerGroupOptions& options, StepResultHandler on_result, FailureHandler on_failure);
  ~WorkerGroup() override;

  uint64_t epoch() const { return epoch_; }

  // Waits until every rank has registered and opened its session. Errors: DEADLINE_EXCEEDED naming the
  // missing ranks; the group's failure; CANCELLED after Shutdown.
  [[nodiscard]] absl::Status WaitForWorkers(std::chrono::milliseconds timeout);
  // Sends make(rank) to every rank and waits for every Ack. Returns the acks by rank. Errors: the first
  // worker's error (its code, its message naming the rank); DEADLINE_EXCEEDED; the group's failure.
  [[nodiscard]] absl::StatusOr<std::vector<control::v1::Ack>> RunPhase(
      const std::function<control::v1::CoordinatorMessage(int rank)>& make,
      std::chrono::milliseconds timeout);
  // StepSink: writes the serialized Step to every worker.
  [[nodiscard]] absl::Status SendStep(const std::string& step) override;
  // Sends Shutdown to every connected worker and waits (up to `grace`) for their sessions to end.
  void Shutdown(std::chrono::milliseconds grace);
  // "rank 3 (pid 1234 on host)".
  std::string Describe(int rank) const;

  grpc::Status Register(grpc::ServerContext* context, const control::v1::RegisterRequest* request,
                        control::v1::RegisterResponse* response) override;
  grpc::Status Session(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<control::v1::CoordinatorMessage, control::v1::WorkerMessage>* stream) override;

 private:
  struct Worker {
    bool registered = false;
    bool connected = false;  // its Session is open
    std::string hostname;
    int pid = 0;
    bool closing = false;  // its session is ending: the writer stops
    // Messages for the worker's writer thread, which writes them in order while the session lasts (so that a
    // step reaches every worker at once instead of one blocking write after another).
    std::deque<std::shared_ptr<const control::v1::CoordinatorMessage>> outbox;
    std::unique_ptr<std::condition_variable> outbox_cv = std::make_unique<std::condition_variable>();
    std::chrono::steady_clock::time_point last_seen;
    bool acked = false;
    control::v1::Ack ack;
  };

  // Queues a message for the worker's writer; false when the worker has no open session.
  bool Enqueue(int rank, std::shared_ptr<const control::v1::CoordinatorMessage> message);
  bool Write(int rank, const control::v1::CoordinatorMessage& message) {
    return Enqueue(rank, std::make_shared<const control::v1::CoordinatorMessage>(message));
  }
  void WriterLoop(
      int rank,
      grpc::ServerReaderWriter<control::v1::CoordinatorMessage, control::v1::WorkerMessage>* stream);
  void FailLocked(const absl::Status& status);
  void HeartbeatLoop();
  std::string DescribeLocked(int rank) const;

  const WorkerGroupOptions options_;
  const uint64_t epoch_;
  StepResultHandler on_result_;
  FailureHandler on_failure_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Worker> workers_;
  absl::Status failure_;
  bool shutting_down_ = false;
  bool stop_heartbeats_ = false;
  std::thread heartbeat_thread_;
};

}  // namespace tessera
