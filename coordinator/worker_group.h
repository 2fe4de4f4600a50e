// WorkerGroup: the coordinator's side of the control plane. It implements the Control service (Register and
// one Session stream per worker), keeps the registry of ranks, runs the setup phases (one message per rank,
// waiting for every Ack), writes steps to every worker, routes the output rank's step results, and watches
// heartbeats. The first failure (a worker that closes its session, misses heartbeats or reports an error)
// is reported once to the failure handler; the group stays failed until BeginRecovery, which drops the lost
// ranks, frees their slots for replacements and moves the group to a new epoch.
//
// Each worker has a bounded outbox drained by its own writer thread (so that a step reaches every worker at
// once instead of one blocking write after another). When an outbox is full, SendStep and the setup
// messages wait for its writer to make room (backpressure: the workers' readers hold up the step loop, other
// workers' writers go on); heartbeats are dropped while an outbox is not empty (any message proves liveness).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/scheduler.h"
#include "tessera/control/v1/control.grpc.pb.h"

namespace tessera {

struct WorkerGroupOptions {
  int world_size = 1;
  int output_rank = 0;  // the rank whose StepResults are routed to the step-result handler
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{5000};
  // Messages queued for one worker's writer; when full, SendStep and setup messages wait for room.
  int max_outbox_messages = 64;
  // When set, Register and Session answer only calls carrying it as metadata kJoinTokenMetadata (core/secret.h,
  // compared in constant time); others are UNAUTHENTICATED and logged with the caller's address.
  std::string join_token;
};

class WorkerGroup final : public control::v1::Control::Service, public StepSink {
 public:
  using StepResultHandler = std::function<void(const control::v1::StepResult&)>;
  using FailureHandler = std::function<void(const absl::Status&)>;

  // Handlers are called on gRPC or heartbeat threads, never under the group's lock (so they may call back
  // into the group); set them before any worker registers. The failure handler runs once, for the first
  // failure, on the thread that noticed it.
  WorkerGroup(const WorkerGroupOptions& options, StepResultHandler on_result, FailureHandler on_failure);
  ~WorkerGroup() override ABSL_LOCKS_EXCLUDED(mu_);

  uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }

  // After a failure: drops every rank whose session ended or that missed its heartbeats (cancelling the
  // session of one that is still open and waiting up to `timeout` for it to end), frees their slots for
  // replacements (which register with the requested rank, or any free one), clears the failure and moves the
  // group to a new epoch; later messages of the old epoch are ignored. The survivors are still in the old
  // epoch: send them a Reset with the new one (RunPhase with that message's epoch set to old_epoch). Errors:
  // CANCELLED when shutting down; DEADLINE_EXCEEDED naming a session that did not end.
  struct Recovery {
    uint64_t old_epoch = 0;
    uint64_t new_epoch = 0;
    std::vector<int> lost;       // ranks dropped now, ascending
    std::vector<int> survivors;  // ranks with an open session (still in old_epoch), ascending
    std::vector<int> vacant;     // ranks with no worker (dropped now or before), ascending
  };
  // Marks ranks as lost (they did not answer in time, e.g. stuck inside a step): the next BeginRecovery drops
  // and replaces them.
  void MarkLost(const std::vector<int>& ranks) ABSL_LOCKS_EXCLUDED(mu_);
  // Ranks without an open session.
  std::vector<int> Missing() const ABSL_LOCKS_EXCLUDED(mu_);
  // Ranks asked in the last RunPhase that have not answered.
  std::vector<int> Unanswered() const ABSL_LOCKS_EXCLUDED(mu_);
  // With `drop_all`, every rank is dropped (a start-up that failed half-way starts over); ranks in `also_drop`
  // are dropped too (replacements whose setup an earlier attempt left half done).
  [[nodiscard]] absl::StatusOr<Recovery> BeginRecovery(std::chrono::milliseconds timeout, bool drop_all = false,
                                                       const std::vector<int>& also_drop = {})
      ABSL_LOCKS_EXCLUDED(mu_);

  // Waits until every rank has registered and opened its session. Errors: DEADLINE_EXCEEDED naming the
  // missing ranks; the group's failure; CANCELLED after Shutdown.
  [[nodiscard]] absl::Status WaitForWorkers(std::chrono::milliseconds timeout) ABSL_LOCKS_EXCLUDED(mu_);
  // Sends make(rank) to every rank of `ranks` (empty: all) and waits for their Acks. A message whose epoch
  // make left at 0 gets the group's. Returns the acks by rank (empty for ranks not asked). Errors: the first
  // worker's error (its code, its message naming the rank); DEADLINE_EXCEEDED; the group's failure.
  [[nodiscard]] absl::StatusOr<std::vector<control::v1::Ack>> RunPhase(
      const std::function<control::v1::CoordinatorMessage(int rank)>& make, std::chrono::milliseconds timeout,
      const std::vector<int>& ranks = {}) ABSL_LOCKS_EXCLUDED(mu_);
  // StepSink: queues the serialized Step for every worker, first waiting until every outbox has room.
  // Errors (UNAVAILABLE): a worker has no open session, the group has failed or is shutting down (also
  // while waiting).
  [[nodiscard]] absl::Status SendStep(const std::string& step) override ABSL_LOCKS_EXCLUDED(mu_);
  // Sends Shutdown to every connected worker whose outbox has room and waits (up to `grace`) for their
  // sessions to end. Releases every waiting SendStep with an error.
  void Shutdown(std::chrono::milliseconds grace) ABSL_LOCKS_EXCLUDED(mu_);
  // "rank 3 (pid 1234 on host)".
  std::string Describe(int rank) const ABSL_LOCKS_EXCLUDED(mu_);

  // Backpressure figures (metrics, tests): SendStep calls that found an outbox full and waited, and those
  // waiting now.
  struct Stats {
    int64_t send_waits = 0;
    int senders_waiting = 0;
  };
  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_);
  // Each rank's compute time so far, from its latest heartbeat (0 before the first), by rank.
  std::vector<double> busy_seconds() const ABSL_LOCKS_EXCLUDED(mu_);

  grpc::Status Register(grpc::ServerContext* context, const control::v1::RegisterRequest* request,
                        control::v1::RegisterResponse* response) override ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status Session(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<control::v1::CoordinatorMessage, control::v1::WorkerMessage>* stream) override
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // OK, or UNAUTHENTICATED (logged with the peer's address, never the token) when the join token is missing or
  // wrong.
  grpc::Status CheckJoinToken(const grpc::ServerContext& context, const char* call) const;
  using Message = std::shared_ptr<const control::v1::CoordinatorMessage>;
  // Guarded by mu_ (workers_ is).
  struct Worker {
    bool registered = false;
    bool connected = false;  // its Session is open
    std::string hostname;
    int pid = 0;
    bool closing = false;  // its session is ending: the writer stops
    // Messages for the worker's writer thread, which writes them in order while the session lasts. At most
    // max_outbox_messages.
    std::deque<Message> outbox;
    std::unique_ptr<absl::CondVar> outbox_cv = std::make_unique<absl::CondVar>();  // a message, or closing
    std::chrono::steady_clock::time_point last_seen;
    bool acked = false;
    control::v1::Ack ack;
    double busy_seconds = 0;  // from its heartbeats
    grpc::ServerContext* context = nullptr;  // its open Session's (cancelled to drop a stuck rank)
    bool lost = false;      // it missed its heartbeats: BeginRecovery drops it
    bool dropping = false;  // BeginRecovery cancelled its session: its end is no new failure
  };
  // What to do with a message for a worker whose outbox is full.
  enum class WhenFull {
    kWait,  // wait for room; give up when the group fails or shuts down
    kDrop,  // drop it (the shutdown message)
  };

  // Queues a message for the worker's writer; false when the worker has no open session or the message was
  // not queued (see WhenFull).
  bool Enqueue(int rank, Message message, WhenFull when_full) ABSL_LOCKS_EXCLUDED(mu_);
  bool Write(int rank, const control::v1::CoordinatorMessage& message) ABSL_LOCKS_EXCLUDED(mu_) {
    return Enqueue(rank, std::make_shared<const control::v1::CoordinatorMessage>(message), WhenFull::kWait);
  }
  void WriterLoop(
      int rank, grpc::ServerReaderWriter<control::v1::CoordinatorMessage, control::v1::WorkerMessage>* stream)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Records `status` as the group's failure. True for the first failure (not while shutting down): the
  // caller must then call ReportFailure(status) once it has released mu_.
  [[nodiscard]] bool FailLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReportFailure(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  void HeartbeatLoop() ABSL_LOCKS_EXCLUDED(mu_);
  std::string DescribeLocked(int rank) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasRoomLocked(const Worker& w) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(w.outbox.size()) < options_.max_outbox_messages;
  }
  // Conditions for mu_.Await.
  bool StepCanGoLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);  // room everywhere, or an error
  bool AllConnectedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AllAckedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool NoneConnectedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool OverLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !failure_.ok() || shutting_down_; }
  bool WorkersOrOverLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return AllConnectedLocked() || OverLocked();
  }
  bool AcksOrOverLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return AllAckedLocked() || OverLocked();
  }

  const WorkerGroupOptions options_;
  std::atomic<uint64_t> epoch_;  // written under mu_ (BeginRecovery); read anywhere
  const StepResultHandler on_result_;
  const FailureHandler on_failure_;
  // The group's only lock. It is never held while calling a handler or writing to a stream, so it meets no
  // other lock (the handlers take the coordinator's and the scheduler's with it released).
  mutable absl::Mutex mu_;
  absl::CondVar heartbeat_cv_;                        // stop_heartbeats_
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);  // by rank; never resized
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_heartbeats_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread heartbeat_thread_;
};

}  // namespace tessera
