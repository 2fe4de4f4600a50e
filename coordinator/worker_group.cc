#include "coordinator/worker_group.h"

#include "core/str_cat.h"

namespace tessera {
namespace {

using control::v1::CoordinatorMessage;
using control::v1::WorkerMessage;
using Clock = std::chrono::steady_clock;

uint64_t NewEpoch() {
  return static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
}

int64_t Millis(Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

}  // namespace

WorkerGroup::WorkerGroup(const WorkerGroupOptions& options, StepResultHandler on_result,
                         FailureHandler on_failure)
    : options_(options),
      epoch_(NewEpoch()),
      on_result_(std::move(on_result)),
      on_failure_(std::move(on_failure)),
      workers_(options.world_size) {
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
}

WorkerGroup::~WorkerGroup() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_heartbeats_ = true;
    shutting_down_ = true;
  }
  cv_.notify_all();
  heartbeat_thread_.join();
}

std::string WorkerGroup::DescribeLocked(int rank) const {
  const Worker& w = workers_[rank];
  if (!w.registered) return Cat("rank ", rank);
  return Cat("rank ", rank, " (pid ", w.pid, " on ", w.hostname, ")");
}

std::string WorkerGroup::Describe(int rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  return DescribeLocked(rank);
}

void WorkerGroup::FailLocked(const absl::Status& status) {
  if (!failure_.ok() || shutting_down_) return;
  failure_ = status;
  cv_.notify_all();
  if (on_failure_) on_failure_(status);
}

grpc::Status WorkerGroup::Register(grpc::ServerContext*, const control::v1::RegisterRequest* request,
                                   control::v1::RegisterResponse* response) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!failure_.ok() || shutting_down_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        Cat("the worker group is not accepting workers: ",
                            shutting_down_ ? "shutting down" : std::string(failure_.message())));
  }
  const int world = options_.world_size;
  int rank = request->requested_rank();
  if (rank >= world) {
    return grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                        Cat("requested rank ", rank, " is outside the world of ", world, " ranks"));
  }
  if (rank >= 0 && workers_[rank].registered) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        Cat("rank ", rank, " is already taken by ", DescribeLocked(rank)));
  }
  if (rank < 0) {
    for (int r = 0; r < world && rank < 0; ++r) {
      if (!workers_[r].registered) rank = r;
    }
    if (rank < 0) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          Cat("all ", world, " ranks are taken; this coordinator serves tp x pp = ", world));
    }
  }
  Worker& w = workers_[rank];
  w.registered = true;
  w.hostname = request->hostname();
  w.pid = request->pid();
  response->set_rank(rank);
  response->set_world_size(world);
  response->set_epoch(epoch_);
  response->set_heartbeat_interval_ms(options_.heartbeat_interval.count());
  response->set_heartbeat_timeout_ms(options_.heartbeat_timeout.count());
  return grpc::Status::OK;
}

grpc::Status WorkerGroup::Session(grpc::ServerContext*,
                                  grpc::ServerReaderWriter<CoordinatorMessage, WorkerMessage>* stream) {
  WorkerMessage message;
  if (!stream->Read(&message) || !message.has_open()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a session must start with an `open` message");
  }
  const int rank = message.rank();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (rank < 0 || rank >= options_.world_size || !workers_[rank].registered) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, Cat("rank ", rank, " is not registered"));
    }
    if (message.epoch() != epoch_) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          Cat("stale epoch ", message.epoch(), " (the coordinator is in epoch ", epoch_, ")"));
    }
    Worker& w = workers_[rank];
    if (w.connected) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          Cat(DescribeLocked(rank), " already has a session"));
    }
    w.connected = true;
    w.closing = false;
    w.last_seen = Clock::now();
    cv_.notify_all();
  }
  std::thread writer([this, rank, stream] { WriterLoop(rank, stream); });
  while (stream->Read(&message)) {
    if (message.epoch() != epoch_) continue;  // a stale message from an earlier life of this rank
    {
      std::lock_guard<std::mutex> lock(mu_);
      workers_[rank].last_seen = Clock::now();
      if (message.has_ack()) {
        workers_[rank].acked = true;
        workers_[rank].ack = message.ack();
        cv_.notify_all();
      } else if (message.has_error()) {
        FailLocked(
            absl::Status(static_cast<absl::StatusCode>(message.error().code()), message.error().message()));
      }
    }
    if (message.has_step_result() && rank == options_.output_rank && on_result_) {
      on_result_(message.step_result());
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    workers_[rank].closing = true;
    workers_[rank].outbox_cv->notify_all();
  }
  writer.join();
  std::lock_guard<std::mutex> lock(mu_);
  Worker& w = workers_[rank];
  w.connected = false;
  w.outbox.clear();
  FailLocked(
      absl::UnavailableError(Cat("worker ", DescribeLocked(rank), " closed its session (it exited?)")));
  cv_.notify_all();
  return grpc::Status::OK;
}

bool WorkerGroup::Enqueue(int rank, std::shared_ptr<const CoordinatorMessage> message) {
  std::condition_variable* wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Worker& w = workers_[rank];
    if (!w.connected || w.closing) return false;
    w.outbox.push_back(std::move(message));
    wake = w.outbox_cv.get();
  }
  wake->notify_one();  // after unlocking, so that the writer does not wake into a held mutex
  return true;
}

void WorkerGroup::WriterLoop(int rank, grpc::ServerReaderWriter<CoordinatorMessage, WorkerMessage>* stream) {
  std::unique_lock<std::mutex> lock(mu_);
  Worker& w = workers_[rank];
  while (true) {
    w.outbox_cv->wait(lock, [&] { return !w.outbox.empty() || w.closing; });
    if (w.closing) return;
    std::shared_ptr<const CoordinatorMessage> message = std::move(w.outbox.front());
    w.outbox.pop_front();
    lock.unlock();
    const bool written = stream->Write(*message);
    lock.lock();
    if (!written) return;  // the stream is gone; its reader notices and reports it
  }
}

absl::Status WorkerGroup::WaitForWorkers(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto all_connected = [&] {
    for (const Worker& w : workers_) {
      if (!w.connected) return false;
    }
    return true;
  };
  cv_.wait_for(lock, timeout, [&] { return all_connected() || !failure_.ok() || shutting_down_; });
  if (!failure_.ok()) return failure_;
  if (shutting_down_) return absl::CancelledError("shutting down");
  if (!all_connected()) {
    std::string missing;
    for (int r = 0; r < options_.world_size; ++r) {
      if (!workers_[r].connected) missing += Cat(missing.empty() ? "" : ", ", r);
    }
    return absl::DeadlineExceededError(Cat("workers did not join within ", timeout.count(),
                                           " ms; missing ranks: ", missing, " of ", options_.world_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<control::v1::Ack>> WorkerGroup::RunPhase(
    const std::function<CoordinatorMessage(int rank)>& make, std::chrono::milliseconds timeout) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Worker& w : workers_) w.acked = false;
  }
  for (int rank = 0; rank < options_.world_size; ++rank) {
    CoordinatorMessage message = make(rank);
    message.set_epoch(epoch_);
    if (!Write(rank, message)) {
      return absl::UnavailableError(Cat("cannot write to worker ", Describe(rank)));
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  auto all_acked = [&] {
    for (const Worker& w : workers_) {
      if (!w.acked) return false;
    }
    return true;
  };
  cv_.wait_for(lock, timeout, [&] { return all_acked() || !failure_.ok() || shutting_down_; });
  if (!failure_.ok()) return failure_;
  if (shutting_down_) return absl::CancelledError("shutting down");
  if (!all_acked())
    return absl::DeadlineExceededError(Cat("workers did not answer within ", timeout.count(), " ms"));
  std::vector<control::v1::Ack> acks;
  for (const Worker& w : workers_) acks.push_back(w.ack);
  return acks;
}

absl::Status WorkerGroup::SendStep(const std::string& step) {
  auto message = std::make_shared<CoordinatorMessage>();
  message->set_epoch(epoch_);
  message->set_step(step);
  std::vector<std::condition_variable*> wake;
  {
    std::lock_guard<std::mutex> lock(mu_);  // one critical section for all workers
    for (int rank = 0; rank < options_.world_size; ++rank) {
      Worker& w = workers_[rank];
      if (!w.connected || w.closing) {
        return absl::UnavailableError(Cat("cannot send a step to worker ", DescribeLocked(rank)));
      }
      w.outbox.push_back(message);
      wake.push_back(w.outbox_cv.get());
    }
  }
  for (std::condition_variable* cv : wake) cv->notify_one();
  return absl::OkStatus();
}

void WorkerGroup::Shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
  }
  cv_.notify_all();
  CoordinatorMessage message;
  message.set_epoch(epoch_);
  message.mutable_shutdown();
  for (int rank = 0; rank < options_.world_size; ++rank) Write(rank, message);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, grace, [&] {
    for (const Worker& w : workers_) {
      if (w.connected) return false;
    }
    return true;
  });
}

void WorkerGroup::HeartbeatLoop() {
  CoordinatorMessage beat;
  beat.set_epoch(epoch_);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_heartbeats_) {
    cv_.wait_for(lock, options_.heartbeat_interval);
    if (stop_heartbeats_) break;
    const auto now = Clock::now();
    std::vector<int> connected;
    for (int rank = 0; rank < options_.world_size; ++rank) {
      const Worker& w = workers_[rank];
      if (!w.connected) continue;
      connected.push_back(rank);
      if (now - w.last_seen > options_.heartbeat_timeout && !shutting_down_) {
        FailLocked(absl::UnavailableError(Cat("worker ", DescribeLocked(rank), " sent nothing for ",
                                              Millis(now - w.last_seen), " ms (heartbeat timeout ",
                                              options_.heartbeat_timeout.count(), " ms)")));
      }
    }
    lock.unlock();
    beat.mutable_heartbeat()->set_sent_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                   std::chrono::system_clock::now().time_since_epoch())
                                                   .count());
    for (int rank : connected) Write(rank, beat);
    lock.lock();
  }
}

}  // namespace tessera
