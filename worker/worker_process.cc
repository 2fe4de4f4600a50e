#include "worker/worker_process.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <memory>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/log.h"
#include "core/secret.h"
#include "core/status_macros.h"
#include "kernels/backend_factory.h"
#include "tessera/control/v1/control.grpc.pb.h"
#include "worker/worker_shard.h"

namespace tessera {
namespace {

namespace cv1 = control::v1;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kFirstBackoff{100};
constexpr milliseconds kMaxBackoff{2000};
constexpr milliseconds kRegisterAttemptTimeout{10000};
constexpr milliseconds kCloseTimeout{
    2000};  // how long a shutdown waits for the coordinator to end the stream

double SecondsOf(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Log lines from several threads, one at a time, each in one write.
// Structured (core/log.h): one JSON object per line, component "worker" and, once registered, the rank.
class LogSink {
 public:
  explicit LogSink(std::ostream* out) : out_(out) {}
  void set_rank(int rank) { rank_.store(rank); }
  void Line(const std::string& line, LogLevel level = LogLevel::kInfo) {
    if (out_ == nullptr) return;
    // One write per line (WriteLog's lock): workers share the server's stderr, which is unbuffered.
    WriteLog(*out_, level, {.component = "worker", .rank = rank_.load(), .request_id = ""}, line);
  }

 private:
  std::ostream* const out_;
  std::atomic<int> rank_{-1};
};

std::string Hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

std::string GrpcError(const grpc::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())), ": ",
                      status.error_message());
}

// Adds the join token to a call to the coordinator's Control service (when there is one); returns `context`.
grpc::ClientContext* WithJoinToken(grpc::ClientContext& context, const std::string& token) {
  if (!token.empty()) context.AddMetadata(kJoinTokenMetadata, token);
  return &context;
}

// A channel to the coordinator and its Control stub.
struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<cv1::Control::Stub> stub;
};

// Register, retrying while the coordinator is unreachable (see RunWorker), each attempt after a failed one on a
// new connection from `connect`: a TLS channel whose first attempts found no listener never completes a
// handshake once the coordinator listens (gRPC 1.51 with a certificate provider: "Handshake timed out"), so
// a worker that starts before its coordinator would wait out connect_timeout.
absl::StatusOr<cv1::RegisterResponse> Register(Connection& connection,
                                               const std::function<Connection()>& connect,
                                               const WorkerOptions& options, LogSink& log) {
  cv1::RegisterRequest request;
  request.set_requested_rank(options.requested_rank);
  request.set_hostname(Hostname());
  request.set_pid(static_cast<int32_t>(getpid()));
  request.set_device(DeviceKindName(options.device));
  const Clock::time_point start = Clock::now(), deadline = start + options.connect_timeout;
  milliseconds backoff = kFirstBackoff;
  std::string last_error;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    const Clock::duration left = std::max(Clock::duration::zero(), deadline - Clock::now());
    context.set_deadline(std::chrono::system_clock::now() +
                         std::min<Clock::duration>(left, kRegisterAttemptTimeout));
    cv1::RegisterResponse response;
    const grpc::Status status =
        connection.stub->Register(WithJoinToken(context, options.join_token), request, &response);
    if (status.ok()) return response;
    const grpc::StatusCode code = status.error_code();
    if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::Status(static_cast<absl::StatusCode>(code),
                          absl::StrCat("the coordinator at ", options.coordinator,
                                       " refused to register this worker: ", status.error_message(), " (",
                                       absl::StatusCodeToString(static_cast<absl::StatusCode>(code)), ")"));
    }
    if (code == grpc::StatusCode::UNAVAILABLE || last_error.empty()) last_error = GrpcError(status);
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      return absl::UnavailableError(
          absl::StrFormat("cannot reach the coordinator at %s within %.1f s (%d attempts; last: %s)",
                          options.coordinator, SecondsOf(options.connect_timeout), attempt, last_error));
    }
    if (attempt == 1) log.Line(absl::StrCat("worker: waiting for the coordinator at ", options.coordinator));
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, kMaxBackoff);
    connection = connect();
  }
}

using Stream = grpc::ClientReaderWriter<cv1::WorkerMessage, cv1::CoordinatorMessage>;

// The Session stream's writes, one at a time: the handling thread's replies and the heartbeat thread's beats.
// (The reader thread reads the same stream without this lock: gRPC allows one reader beside one writer.)
class SessionWriter {
 public:
  explicit SessionWriter(Stream* stream) : stream_(stream) {}

  // False when the write failed or the stream is closed for writes.
  bool Write(const cv1::WorkerMessage& message) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return !writes_done_ && stream_->Write(message);
  }
  // Closes the stream for writes; later writes fail.
  void WritesDone() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (writes_done_) return;
    stream_->WritesDone();
    writes_done_ = true;
  }

 private:
  absl::Mutex mu_;  // lock order: never held with Session::mu_
  Stream* const stream_ ABSL_PT_GUARDED_BY(mu_);
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
};

// One Session stream and its threads: the reader queues coordinator messages (at most max_queued_messages),
// the heartbeat thread sends beats, the watchdog notices silence, and Run's thread handles the messages in
// order. No lock is held while calling out (the shard, its log callback, the log, gRPC's cancel).
class Session {
 public:
  Session(const WorkerOptions& options, const cv1::RegisterResponse& reg, grpc::Channel& channel,
          cv1::Control::Stub& stub, WorkerShard& shard, LogSink& log)
      : options_(options),
        reg_(reg),
        interval_(reg.heartbeat_interval_ms() > 0 ? reg.heartbeat_interval_ms() : 1000),
        timeout_(reg.heartbeat_timeout_ms() > 0 ? milliseconds(reg.heartbeat_timeout_ms()) : 10 * interval_),
        prefix_(absl::StrCat("worker rank ", reg.rank(), ": ")),
        channel_(channel),
        shard_(shard),
        log_(log),
        stream_(stub.Session(WithJoinToken(context_, options.join_token))),
        writer_(stream_.get()) {}

  // Runs the session to its end: OK after shutdown, else UNAVAILABLE "lost the coordinator at ADDR (why)".
  absl::Status Run() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Queued = std::pair<cv1::CoordinatorMessage, Clock::time_point>;  // with the time received

  cv1::WorkerMessage NewMessage() const {
    cv1::WorkerMessage m;
    m.set_epoch(shard_.epoch());  // a re-formed group moves the worker to a new epoch
    m.set_rank(reg_.rank());
    return m;
  }

  void ReadLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void HeartbeatLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Notices silence, and ends the process when Run's thread cannot return (see exit_when_stuck).
  void WatchdogLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Handles messages in order until shutdown (true) or a loss (false).
  bool HandleLoop() ABSL_LOCKS_EXCLUDED(mu_);

  void MarkLost(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (lost_) return;
    lost_ = true;
    lost_reason_ = reason;
    lost_at_ = Clock::now();
  }
  // Conditions (absl::Mutex evaluates them holding mu_).
  // The queue has room, or nothing is queued any more.
  bool ReaderMayRead() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(queue_.size()) < options_.max_queued_messages || stopping_;
  }
  bool HasWork() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !queue_.empty() || lost_ || ended_; }
  bool StoppingOrClosing() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_ || closing_; }

  const WorkerOptions& options_;
  const cv1::RegisterResponse& reg_;
  const milliseconds interval_;
  const milliseconds timeout_;
  const std::string prefix_;  // "worker rank R: "
  grpc::Channel& channel_;
  WorkerShard& shard_;  // Run's thread only, but for busy_seconds() (the heartbeat thread)
  LogSink& log_;
  grpc::ClientContext context_;     // TryCancel is thread-safe
  std::unique_ptr<Stream> stream_;  // the reader thread reads it; writes go through writer_
  SessionWriter writer_;

  absl::Mutex mu_;  // lock order: never held with SessionWriter::mu_ or the log's lock
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);  // at most options_.max_queued_messages
  Clock::time_point last_heard_ ABSL_GUARDED_BY(mu_) = Clock::now();
  bool reader_held_back_ ABSL_GUARDED_BY(mu_) = false;  // the reader waits for room in a full queue
  bool ended_ ABSL_GUARDED_BY(mu_) = false;             // the reader saw the stream end
  bool lost_ ABSL_GUARDED_BY(mu_) = false;              // heard nothing for too long, or a write failed
  std::string lost_reason_ ABSL_GUARDED_BY(mu_);        // why, when lost
  Clock::time_point lost_at_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;   // Run is closing the stream after shutdown (a bounded wait)
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;  // Run is leaving: threads stop
};

void Session::ReadLoop() {
  cv1::CoordinatorMessage m;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (!ReaderMayRead()) {  // read nothing more until the handling thread takes a message
        reader_held_back_ = true;
        mu_.Await(absl::Condition(this, &Session::ReaderMayRead));
        reader_held_back_ = false;
        last_heard_ = Clock::now();  // the wait was this worker's, not the coordinator's silence
      }
    }
    if (!stream_->Read(&m)) break;
    // The group is being re-formed: abandon the old one now (a step stuck on a lost peer fails at once) and
    // drop the old epoch's queued steps (they would fail too; the coordinator ignores their results).
    const bool regroup = m.body_case() == cv1::CoordinatorMessage::kReset && m.reset().new_epoch() > shard_.epoch();
    if (regroup) shard_.AbortCommunicators();
    absl::MutexLock lock(&mu_);
    if (regroup) {
      std::erase_if(queue_, [](const Queued& q) { return q.first.body_case() == cv1::CoordinatorMessage::kStep; });
    }
    last_heard_ = Clock::now();
    // Room is left: only this thread adds. Once stopping, what is still read is dropped.
    if (m.body_case() != cv1::CoordinatorMessage::kHeartbeat && !stopping_) {
      queue_.emplace_back(std::move(m), last_heard_);
      const int depth = static_cast<int>(queue_.size());
      if (options_.max_queue_depth_seen != nullptr && depth > options_.max_queue_depth_seen->load()) {
        options_.max_queue_depth_seen->store(depth);
      }
    }
    m.Clear();
  }
  absl::MutexLock lock(&mu_);
  ended_ = true;
}

void Session::HeartbeatLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(this, &Session::StoppingOrClosing),
                               absl::FromChrono(interval_))) {
        return;
      }
    }
    cv1::WorkerMessage beat = NewMessage();
    beat.mutable_heartbeat()->set_sent_unix_ms(
        std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    beat.mutable_heartbeat()->set_busy_seconds(shard_.busy_seconds());
    if (!writer_.Write(beat)) {
      absl::MutexLock lock(&mu_);
      if (!stopping_ && !closing_) MarkLost("a heartbeat could not be written");
    }
  }
}

void Session::WatchdogLoop() {
  const milliseconds poll = std::clamp(timeout_ / 10, milliseconds(10), milliseconds(200));
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(poll))) return;
    }
    // A reader held back by a full queue hears nothing because this worker is busy: that counts as hearing
    // the coordinator while the connection is up (a coordinator that died drops it).
    const bool connected = channel_.GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY;
    bool cancel = false;
    std::string stuck;  // the line to log before exiting
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const Clock::time_point now = Clock::now();
      if (reader_held_back_ && connected) last_heard_ = now;
      if (!lost_ && !ended_ && now - last_heard_ > timeout_) {
        MarkLost(absl::StrCat("heard nothing for ", timeout_.count(), " ms"));
        cancel = true;
      }
      if (ended_ && !lost_) MarkLost("the session ended");
      if (lost_ && !closing_ && options_.exit_when_stuck && now - lost_at_ > timeout_) {
        stuck = absl::StrCat(prefix_, "lost the coordinator at ", options_.coordinator, " (", lost_reason_,
                             ") and the current message is still running after ", timeout_.count(),
                             " ms more; exiting");
      }
    }
    if (cancel) context_.TryCancel();  // unblocks the reader
    if (!stuck.empty()) {
      log_.Line(stuck, LogLevel::kError);
      _exit(1);
    }
  }
}

bool Session::HandleLoop() {
  for (;;) {
    Queued next;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Session::HasWork));
      if (lost_ || ended_) {
        // A coordinator that said shutdown and closed the stream at once still gets a clean exit.
        for (const Queued& queued : queue_) {
          const cv1::CoordinatorMessage& m = queued.first;
          if (m.body_case() == cv1::CoordinatorMessage::kShutdown && m.epoch() == shard_.epoch()) return true;
        }
        return false;
      }
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    if (options_.before_handle) options_.before_handle();
    bool write_failed = false;
    for (const cv1::WorkerMessage& reply : shard_.Handle(next.first, next.second)) {
      write_failed = write_failed || !writer_.Write(reply);
    }
    if (write_failed) {
      absl::MutexLock lock(&mu_);
      MarkLost("a reply could not be written");
      continue;
    }
    if (shard_.done()) {
      {
        absl::MutexLock lock(&mu_);
        closing_ = true;
      }
      writer_.WritesDone();
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&ended_), absl::FromChrono(kCloseTimeout));
      return true;
    }
  }
}

absl::Status Session::Run() {
  cv1::WorkerMessage open = NewMessage();
  open.mutable_open()->set_hostname(Hostname());
  open.mutable_open()->set_pid(static_cast<int32_t>(getpid()));
  if (!writer_.Write(open)) {
    absl::MutexLock lock(&mu_);
    MarkLost("cannot open the session");
  }
  std::thread reader(&Session::ReadLoop, this);
  std::thread heartbeat(&Session::HeartbeatLoop, this);
  std::thread watchdog(&Session::WatchdogLoop, this);
  const bool shutdown = HandleLoop();

  std::string reason;
  bool ended = false;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    ended = ended_;
    reason = lost_ ? lost_reason_ : "the session ended";
  }
  if (!ended) context_.TryCancel();  // else Finish has the coordinator's status, which a cancel would hide
  reader.join();
  heartbeat.join();
  watchdog.join();
  const grpc::Status finished = stream_->Finish();
  if (shutdown) {
    log_.Line(absl::StrCat(prefix_, "shut down"));
    return absl::OkStatus();
  }
  if (!finished.ok() && finished.error_code() != grpc::StatusCode::CANCELLED) {
    absl::StrAppend(&reason, ": ", GrpcError(finished));
  }
  const std::string error = absl::StrCat("lost the coordinator at ", options_.coordinator, " (", reason, ")");
  log_.Line(prefix_ + error, LogLevel::kWarning);
  return absl::UnavailableError(error);
}

}  // namespace

absl::StatusOr<int> RequestedRankFromFlagOrEnv(int flag_rank, const char* lws_worker_index) {
  if (flag_rank >= 0) return flag_rank;
  if (lws_worker_index == nullptr || *lws_worker_index == '\0') return -1;
  int rank = -1;
  if (!absl::SimpleAtoi(lws_worker_index, &rank) || rank < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LWS_WORKER_INDEX='", lws_worker_index, "' is not a non-negative integer"));
  }
  return rank;
}

absl::StatusOr<int> RequestedRankFromFlagOrEnv(int flag_rank) {
  return RequestedRankFromFlagOrEnv(flag_rank, std::getenv("LWS_WORKER_INDEX"));
}

absl::Status RunWorker(const WorkerOptions& options) {
  if (options.coordinator.empty()) return absl::InvalidArgumentError("the coordinator address is empty");
  if (options.max_queued_messages < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queued_messages is ", options.max_queued_messages, "; it must be at least 1"));
  }
  LogSink log(options.log);
  ASSIGN_OR_RETURN(
      const std::shared_ptr<grpc::ChannelCredentials> credentials,
      GrpcChannelCredentials(options.control_tls, "--control-ca / --control-cert / --control-key"));
  grpc::ChannelArguments args;
  // gRPC's own reconnect backoff (1 s growing to 120 s by default) would hide a coordinator that has come up.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(kFirstBackoff.count()));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(kFirstBackoff.count()));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(kMaxBackoff.count()));
  args.SetMaxReceiveMessageSize(-1);  // steps of large batches
  const auto connect = [&] {
    Connection c;
    c.channel = grpc::CreateCustomChannel(options.coordinator, credentials, args);
    c.stub = cv1::Control::NewStub(c.channel);
    return c;
  };
  Connection connection = connect();
  absl::StatusOr<cv1::RegisterResponse> registered = Register(connection, connect, options, log);
  if (!registered.ok()) return registered.status();
  const cv1::RegisterResponse& reg = *registered;
  log.set_rank(reg.rank());
  log.Line(absl::StrCat("worker rank ", reg.rank(), ": registered with the coordinator at ",
                        options.coordinator, " (world ", reg.world_size(), ", epoch ", reg.epoch(), ")"));

  WorkerShardOptions shard_options;
  shard_options.rank = reg.rank();
  shard_options.world_size = reg.world_size();
  shard_options.epoch = reg.epoch();
  shard_options.device = options.device;
  shard_options.listen_host = options.listen_host;
  shard_options.control_tls = options.control_tls;
  shard_options.device_index = options.device_index;
  shard_options.log = [&log](const std::string& line) { log.Line(line); };
  WorkerShard shard(shard_options);
  Session session(options, reg, *connection.channel, *connection.stub, shard, log);
  return session.Run();
}

}  // namespace tessera
