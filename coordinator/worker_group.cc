#include "coordinator/worker_group.h"

#include <algorithm>
#include <utility>

#include "absl/time/time.h"
#include "core/log.h"
#include "core/secret.h"
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
    absl::MutexLock lock(&mu_);
    stop_heartbeats_ = true;
    shutting_down_ = true;  // releases waiting senders
    heartbeat_cv_.Signal();
  }
  heartbeat_thread_.join();
}

std::string WorkerGroup::DescribeLocked(int rank) const {
  const Worker& w = workers_[rank];
  if (!w.registered) return Cat("rank ", rank);
  return Cat("rank ", rank, " (pid ", w.pid, " on ", w.hostname, ")");
}

std::string WorkerGroup::Describe(int rank) const {
  absl::MutexLock lock(&mu_);
  return DescribeLocked(rank);
}

std::vector<double> WorkerGroup::busy_seconds() const {
  absl::MutexLock lock(&mu_);
  std::vector<double> busy;
  busy.reserve(workers_.size());
  for (const Worker& w : workers_) busy.push_back(w.busy_seconds);
  return busy;
}

WorkerGroup::Stats WorkerGroup::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool WorkerGroup::FailLocked(const absl::Status& status) {
  if (!failure_.ok() || shutting_down_) return false;
  failure_ = status;  // wakes every Await on OverLocked
  return true;
}

void WorkerGroup::ReportFailure(const absl::Status& status) {
  if (on_failure_) on_failure_(status);
}

bool WorkerGroup::AllConnectedLocked() const {
  for (const Worker& w : workers_) {
    if (!w.connected) return false;
  }
  return true;
}

bool WorkerGroup::AllAckedLocked() const {
  for (const Worker& w : workers_) {
    if (!w.acked) return false;
  }
  return true;
}

bool WorkerGroup::NoneConnectedLocked() const {
  for (const Worker& w : workers_) {
    if (w.connected) return false;
  }
  return true;
}

bool WorkerGroup::StepCanGoLocked() const {
  if (OverLocked()) return true;
  for (const Worker& w : workers_) {
    if (!w.connected || w.closing) return true;  // SendStep fails
    if (!HasRoomLocked(w)) return false;
  }
  return true;
}

grpc::Status WorkerGroup::CheckJoinToken(const grpc::ServerContext& context, const char* call) const {
  if (options_.join_token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(kJoinTokenMetadata);
  if (it != metadata.end() &&
      ConstantTimeEquals(std::string_view(it->second.data(), it->second.size()), options_.join_token)) {
    return grpc::Status::OK;
  }
  const std::string why = it == metadata.end() ? "without the join token" : "with a wrong join token";
  Log(LogLevel::kWarning, {.component = "coordinator", .rank = -1, .request_id = ""},
      Cat("refused a worker's ", call, " from ", context.peer(), ": it came ", why));
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      Cat("this coordinator takes only workers with its join token (--join-token / "
                          "TESSERA_JOIN_TOKEN); this ", call, " came ", why));
}

grpc::Status WorkerGroup::Register(grpc::ServerContext* context, const control::v1::RegisterRequest* request,
                                   control::v1::RegisterResponse* response) {
  if (grpc::Status s = CheckJoinToken(*context, "registration"); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
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
  response->set_epoch(epoch());
  response->set_heartbeat_interval_ms(options_.heartbeat_interval.count());
  response->set_heartbeat_timeout_ms(options_.heartbeat_timeout.count());
  return grpc::Status::OK;
}

grpc::Status WorkerGroup::Session(grpc::ServerContext* context,
                                  grpc::ServerReaderWriter<CoordinatorMessage, WorkerMessage>* stream) {
  if (grpc::Status s = CheckJoinToken(*context, "session"); !s.ok()) return s;
  WorkerMessage message;
  if (!stream->Read(&message) || !message.has_open()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a session must start with an `open` message");
  }
  const int rank = message.rank();
  {
    absl::MutexLock lock(&mu_);
    if (rank < 0 || rank >= options_.world_size || !workers_[rank].registered) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, Cat("rank ", rank, " is not registered"));
    }
    if (message.epoch() != epoch()) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          Cat("stale epoch ", message.epoch(), " (the coordinator is in epoch ", epoch(), ")"));
    }
    Worker& w = workers_[rank];
    if (w.connected) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          Cat(DescribeLocked(rank), " already has a session"));
    }
    w.connected = true;
    w.closing = false;
    w.lost = false;
    w.dropping = false;
    w.context = context;
    w.last_seen = Clock::now();
  }
  std::thread writer([this, rank, stream] { WriterLoop(rank, stream); });
  while (stream->Read(&message)) {
    absl::Status failure;
    bool first_failure = false;
    bool route = false;
    {
      absl::MutexLock lock(&mu_);
      workers_[rank].last_seen = Clock::now();  // any message shows the worker is alive, whatever its epoch
      if (message.epoch() != epoch()) continue;  // from before the group was re-formed
      if (message.has_heartbeat()) workers_[rank].busy_seconds = message.heartbeat().busy_seconds();
      route = message.has_step_result() && rank == options_.output_rank && failure_.ok();
      if (message.has_ack()) {
        workers_[rank].acked = true;
        workers_[rank].ack = message.ack();
      } else if (message.has_error()) {
        failure =
            absl::Status(static_cast<absl::StatusCode>(message.error().code()), message.error().message());
        first_failure = FailLocked(failure);
      }
    }
    if (first_failure) ReportFailure(failure);
    if (route && on_result_) on_result_(message.step_result());
  }
  {
    absl::MutexLock lock(&mu_);
    workers_[rank].closing = true;
    workers_[rank].outbox_cv->Signal();
  }
  writer.join();
  absl::Status failure;
  bool first_failure = false;
  {
    absl::MutexLock lock(&mu_);
    Worker& w = workers_[rank];
    w.connected = false;
    w.context = nullptr;
    w.outbox.clear();
    if (!w.dropping) {
      failure =
          absl::UnavailableError(Cat("worker ", DescribeLocked(rank), " closed its session (it exited?)"));
      first_failure = FailLocked(failure);
    }
  }
  if (first_failure) ReportFailure(failure);
  return grpc::Status::OK;
}

bool WorkerGroup::Enqueue(int rank, Message message, WhenFull when_full) {
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[rank];
  if (when_full == WhenFull::kWait && !HasRoomLocked(w)) {
    auto room_or_over = [this, &w]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return HasRoomLocked(w) || !w.connected || w.closing || OverLocked();
    };
    mu_.Await(absl::Condition(&room_or_over));
    if (OverLocked()) return false;
  }
  if (!w.connected || w.closing || !HasRoomLocked(w)) return false;
  w.outbox.push_back(std::move(message));
  w.outbox_cv->Signal();
  return true;
}

void WorkerGroup::WriterLoop(int rank, grpc::ServerReaderWriter<CoordinatorMessage, WorkerMessage>* stream) {
  mu_.Lock();
  Worker& w = workers_[rank];
  while (true) {
    while (w.outbox.empty() && !w.closing) w.outbox_cv->Wait(&mu_);
    if (w.closing) break;
    Message message = std::move(w.outbox.front());
    w.outbox.pop_front();  // room for a waiting sender
    mu_.Unlock();
    const bool written = stream->Write(*message);  // blocks while the worker does not read
    mu_.Lock();
    if (!written) break;  // the stream is gone; its reader notices and reports it
  }
  mu_.Unlock();
}

absl::Status WorkerGroup::WaitForWorkers(std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &WorkerGroup::WorkersOrOverLocked), absl::FromChrono(timeout));
  if (!failure_.ok()) return failure_;
  if (shutting_down_) return absl::CancelledError("shutting down");
  if (!AllConnectedLocked()) {
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
    const std::function<CoordinatorMessage(int rank)>& make, std::chrono::milliseconds timeout,
    const std::vector<int>& ranks) {
  std::vector<int> all;
  if (ranks.empty()) {
    for (int rank = 0; rank < options_.world_size; ++rank) all.push_back(rank);
  }
  const std::vector<int>& asked = ranks.empty() ? all : ranks;
  {
    absl::MutexLock lock(&mu_);
    for (Worker& w : workers_) w.acked = true;  // ranks not asked count as answered
    for (int rank : asked) workers_[rank].acked = false;
  }
  for (int rank : asked) {
    CoordinatorMessage message = make(rank);
    if (message.epoch() == 0) message.set_epoch(epoch());
    if (!Write(rank, message)) {
      absl::MutexLock lock(&mu_);
      if (!failure_.ok()) return failure_;
      if (shutting_down_) return absl::CancelledError("shutting down");
      return absl::UnavailableError(Cat("cannot write to worker ", DescribeLocked(rank)));
    }
  }
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &WorkerGroup::AcksOrOverLocked), absl::FromChrono(timeout));
  if (!failure_.ok()) return failure_;
  if (shutting_down_) return absl::CancelledError("shutting down");
  if (!AllAckedLocked()) {
    std::string missing;
    for (int rank : asked) {
      if (!workers_[rank].acked) missing += Cat(missing.empty() ? "" : ", ", rank);
    }
    return absl::DeadlineExceededError(
        Cat("workers did not answer within ", timeout.count(), " ms (ranks ", missing, ")"));
  }
  std::vector<control::v1::Ack> acks(workers_.size());
  for (int rank : asked) acks[rank] = workers_[rank].ack;
  return acks;
}

void WorkerGroup::MarkLost(const std::vector<int>& ranks) {
  absl::MutexLock lock(&mu_);
  for (int rank : ranks) workers_[rank].lost = true;
}

std::vector<int> WorkerGroup::Missing() const {
  absl::MutexLock lock(&mu_);
  std::vector<int> ranks;
  for (int rank = 0; rank < options_.world_size; ++rank) {
    if (!workers_[rank].connected) ranks.push_back(rank);
  }
  return ranks;
}

std::vector<int> WorkerGroup::Unanswered() const {
  absl::MutexLock lock(&mu_);
  std::vector<int> ranks;
  for (int rank = 0; rank < options_.world_size; ++rank) {
    if (!workers_[rank].acked) ranks.push_back(rank);
  }
  return ranks;
}

absl::StatusOr<WorkerGroup::Recovery> WorkerGroup::BeginRecovery(std::chrono::milliseconds timeout,
                                                                  bool drop_all,
                                                                  const std::vector<int>& also_drop) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return absl::CancelledError("shutting down");
  Recovery recovery;
  recovery.old_epoch = epoch();
  for (int rank = 0; rank < options_.world_size; ++rank) {
    Worker& w = workers_[rank];
    if (!w.registered) continue;  // a slot already free (an earlier recovery's)
    const bool drop = drop_all || std::find(also_drop.begin(), also_drop.end(), rank) != also_drop.end();
    if (w.connected && !w.lost && !drop) continue;
    recovery.lost.push_back(rank);
    if (w.connected) {
      w.dropping = true;
      if (w.context != nullptr) w.context->TryCancel();  // its Session's Read returns, the session ends
    }
  }
  auto gone_or_over = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (shutting_down_) return true;
    for (int rank : recovery.lost) {
      if (workers_[rank].connected) return false;
    }
    return true;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&gone_or_over), absl::FromChrono(timeout))) {
    return absl::DeadlineExceededError(Cat("the sessions of lost ranks did not end within ", timeout.count(),
                                           " ms"));
  }
  if (shutting_down_) return absl::CancelledError("shutting down");
  for (int rank : recovery.lost) {
    Worker& w = workers_[rank];
    w.registered = false;  // free for a replacement
    w.lost = false;
    w.dropping = false;
    w.acked = false;
    w.busy_seconds = 0;
  }
  for (int rank = 0; rank < options_.world_size; ++rank) {
    const Worker& w = workers_[rank];
    if (!w.registered) {
      recovery.vacant.push_back(rank);
    } else if (w.connected) {
      recovery.survivors.push_back(rank);
    }
  }
  // Past the old epoch and any the group had (epochs only grow).
  recovery.new_epoch = std::max(NewEpoch(), recovery.old_epoch + 1);
  epoch_.store(recovery.new_epoch, std::memory_order_release);
  failure_ = absl::OkStatus();
  return recovery;
}

absl::Status WorkerGroup::SendStep(const std::string& step) {
  auto message = std::make_shared<CoordinatorMessage>();
  message->set_epoch(epoch());
  message->set_step(step);
  absl::MutexLock lock(&mu_);  // one critical section for all workers: every outbox gets the step at once
  if (!StepCanGoLocked()) {
    ++stats_.send_waits;
    ++stats_.senders_waiting;
    mu_.Await(absl::Condition(this, &WorkerGroup::StepCanGoLocked));  // the writers go on meanwhile
    --stats_.senders_waiting;
  }
  // The failure's own message: the scheduler's requests end with the same text whether this error or the
  // failure handler reaches the scheduler first.
  if (!failure_.ok()) return absl::UnavailableError(failure_.message());
  if (shutting_down_) return absl::UnavailableError("cannot send a step: the worker group is shutting down");
  for (int rank = 0; rank < options_.world_size; ++rank) {
    const Worker& w = workers_[rank];
    if (!w.connected || w.closing) {
      return absl::UnavailableError(Cat("cannot send a step to worker ", DescribeLocked(rank)));
    }
  }
  for (Worker& w : workers_) {
    w.outbox.push_back(message);
    w.outbox_cv->Signal();
  }
  return absl::OkStatus();
}

void WorkerGroup::Shutdown(std::chrono::milliseconds grace) {
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return;
    shutting_down_ = true;  // releases waiting senders
  }
  auto message = std::make_shared<CoordinatorMessage>();
  message->set_epoch(epoch());
  message->mutable_shutdown();
  // A worker whose outbox is full is not reading: it learns of the end when the server closes its stream.
  for (int rank = 0; rank < options_.world_size; ++rank) Enqueue(rank, message, WhenFull::kDrop);
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &WorkerGroup::NoneConnectedLocked), absl::FromChrono(grace));
}

void WorkerGroup::HeartbeatLoop() {
  mu_.Lock();
  while (!stop_heartbeats_) {
    const absl::Time next = absl::Now() + absl::FromChrono(options_.heartbeat_interval);
    while (!stop_heartbeats_ && absl::Now() < next) heartbeat_cv_.WaitWithDeadline(&mu_, next);
    if (stop_heartbeats_) break;
    auto beat = std::make_shared<CoordinatorMessage>();
    beat->set_epoch(epoch());
    beat->mutable_heartbeat()->set_sent_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                    std::chrono::system_clock::now().time_since_epoch())
                                                    .count());
    const auto now = Clock::now();
    absl::Status failure;
    bool first_failure = false;
    for (int rank = 0; rank < options_.world_size; ++rank) {
      Worker& w = workers_[rank];
      if (!w.connected) continue;
      if (now - w.last_seen > options_.heartbeat_timeout && !shutting_down_ && !w.lost) {
        w.lost = true;
        failure = absl::UnavailableError(Cat("worker ", DescribeLocked(rank), " sent nothing for ",
                                             Millis(now - w.last_seen), " ms (heartbeat timeout ",
                                             options_.heartbeat_timeout.count(), " ms)"));
        first_failure = FailLocked(failure) || first_failure;
      }
      if (w.outbox.empty() && !w.closing) {  // otherwise the queued message proves liveness
        w.outbox.push_back(beat);
        w.outbox_cv->Signal();
      }
    }
    if (first_failure) {
      mu_.Unlock();
      ReportFailure(failure);
      mu_.Lock();
    }
  }
  mu_.Unlock();
}

}  // namespace tessera
