#include "worker/worker_process.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
class LogSink {
 public:
  explicit LogSink(std::ostream* out) : out_(out) {}
  void Line(const std::string& line) {
    if (out_ == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    // One write per line: workers share the server's stderr, which is unbuffered.
    *out_ << (line + "\n") << std::flush;
  }

 private:
  std::ostream* out_;
  std::mutex mu_;
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

// Register, retrying while the coordinator is unreachable (see RunWorker).
absl::StatusOr<cv1::RegisterResponse> Register(cv1::Control::Stub& stub, const WorkerOptions& options,
                                               LogSink& log) {
  cv1::RegisterRequest request;
  request.set_requested_rank(options.requested_rank);
  request.set_hostname(Hostname());
  request.set_pid(static_cast<int32_t>(getpid()));
  request.set_device(options.device == DeviceKind::kCpu ? "cpu" : "cuda");
  const Clock::time_point start = Clock::now(), deadline = start + options.connect_timeout;
  milliseconds backoff = kFirstBackoff;
  std::string last_error;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    const Clock::duration left = std::max(Clock::duration::zero(), deadline - Clock::now());
    context.set_deadline(std::chrono::system_clock::now() +
                         std::min<Clock::duration>(left, kRegisterAttemptTimeout));
    cv1::RegisterResponse response;
    const grpc::Status status = stub.Register(&context, request, &response);
    if (status.ok()) return response;
    const grpc::StatusCode code = status.error_code();
    if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::Status(static_cast<absl::StatusCode>(code),
                          absl::StrCat("the coordinator at ", options.coordinator,
                                       " refused to register this worker: ", status.error_message()));
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
  }
}

// State shared by the session's threads (the reader, the heartbeat sender, the watchdog and the caller's).
struct SessionState {
  std::mutex mu;
  std::condition_variable cv;        // the helper threads wait on it (stopping, closing, ended)
  std::condition_variable queue_cv;  // the handling thread waits on it (a message, lost, ended): a step wakes
                                     // that one thread, not the heartbeat and watchdog threads too
  std::deque<std::pair<cv1::CoordinatorMessage, Clock::time_point>> queue;  // with the time received
  Clock::time_point last_heard;
  bool ended = false;       // the reader saw the stream end
  bool lost = false;        // heard nothing for too long, or a write failed
  std::string lost_reason;  // why, when lost
  Clock::time_point lost_at;
  bool closing = false;   // the caller is closing the stream after shutdown (a bounded wait, not stuck)
  bool stopping = false;  // the caller is leaving: threads stop

  // Requires mu.
  void MarkLost(const std::string& reason) {
    if (!lost) {
      lost = true;
      lost_reason = reason;
      lost_at = Clock::now();
    }
    cv.notify_all();
    queue_cv.notify_all();
  }
};

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
  LogSink log(options.log);
  grpc::ChannelArguments args;
  // gRPC's own reconnect backoff (1 s growing to 120 s by default) would hide a coordinator that has come up.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(kFirstBackoff.count()));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(kFirstBackoff.count()));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(kMaxBackoff.count()));
  args.SetMaxReceiveMessageSize(-1);  // steps of large batches
  std::unique_ptr<cv1::Control::Stub> stub = cv1::Control::NewStub(
      grpc::CreateCustomChannel(options.coordinator, grpc::InsecureChannelCredentials(), args));
  absl::StatusOr<cv1::RegisterResponse> registered = Register(*stub, options, log);
  if (!registered.ok()) return registered.status();
  const cv1::RegisterResponse& reg = *registered;
  const milliseconds interval(reg.heartbeat_interval_ms() > 0 ? reg.heartbeat_interval_ms() : 1000);
  const milliseconds timeout(reg.heartbeat_timeout_ms() > 0 ? reg.heartbeat_timeout_ms()
                                                            : 10 * interval.count());
  const std::string prefix = absl::StrCat("worker rank ", reg.rank(), ": ");
  log.Line(absl::StrCat(prefix, "registered with the coordinator at ", options.coordinator, " (world ",
                        reg.world_size(), ", epoch ", reg.epoch(), ")"));

  WorkerShardOptions shard_options;
  shard_options.rank = reg.rank();
  shard_options.world_size = reg.world_size();
  shard_options.epoch = reg.epoch();
  shard_options.device = options.device;
  shard_options.listen_host = options.listen_host;
  shard_options.device_index = options.device_index;
  shard_options.log = [&log](const std::string& line) { log.Line(line); };
  WorkerShard shard(shard_options);

  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<cv1::WorkerMessage, cv1::CoordinatorMessage>> stream =
      stub->Session(&context);
  std::mutex write_mu;  // one writer at a time: this thread and the heartbeat thread
  bool writes_done = false;
  auto write = [&](const cv1::WorkerMessage& message) {
    std::lock_guard<std::mutex> lock(write_mu);
    return !writes_done && stream->Write(message);
  };
  auto message = [&]() {
    cv1::WorkerMessage m;
    m.set_epoch(reg.epoch());
    m.set_rank(reg.rank());
    return m;
  };
  SessionState state;
  state.last_heard = Clock::now();
  {
    cv1::WorkerMessage open = message();
    open.mutable_open()->set_hostname(Hostname());
    open.mutable_open()->set_pid(static_cast<int32_t>(getpid()));
    if (!write(open)) {
      std::lock_guard<std::mutex> lock(state.mu);
      state.MarkLost("cannot open the session");
    }
  }

  std::thread reader([&] {
    cv1::CoordinatorMessage m;
    while (stream->Read(&m)) {
      std::lock_guard<std::mutex> lock(state.mu);
      state.last_heard = Clock::now();
      if (m.body_case() != cv1::CoordinatorMessage::kHeartbeat) {
        state.queue.emplace_back(std::move(m), state.last_heard);
        state.queue_cv.notify_one();
      }
      m.Clear();
    }
    std::lock_guard<std::mutex> lock(state.mu);
    state.ended = true;
    state.cv.notify_all();
    state.queue_cv.notify_all();
  });
  std::thread heartbeat([&] {
    std::unique_lock<std::mutex> lock(state.mu);
    while (!state.cv.wait_for(lock, interval, [&] { return state.stopping || state.closing; })) {
      lock.unlock();
      cv1::WorkerMessage beat = message();
      beat.mutable_heartbeat()->set_sent_unix_ms(
          std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
              .count());
      const bool ok = write(beat);
      lock.lock();
      if (!ok && !state.stopping && !state.closing) state.MarkLost("a heartbeat could not be written");
    }
  });
  // Notices silence, and ends the process when the caller cannot return (see exit_when_stuck).
  std::thread watchdog([&] {
    const milliseconds poll = std::clamp(timeout / 10, milliseconds(10), milliseconds(200));
    std::unique_lock<std::mutex> lock(state.mu);
    while (!state.cv.wait_for(lock, poll, [&] { return state.stopping; })) {
      const Clock::time_point now = Clock::now();
      if (!state.lost && !state.ended && now - state.last_heard > timeout) {
        state.MarkLost(absl::StrCat("heard nothing for ", timeout.count(), " ms"));
        context.TryCancel();  // unblocks the reader
      }
      if (state.ended && !state.lost) state.MarkLost("the session ended");
      if (state.lost && !state.closing && options.exit_when_stuck && now - state.lost_at > timeout) {
        log.Line(absl::StrCat(prefix, "lost the coordinator at ", options.coordinator, " (",
                              state.lost_reason, ") and the current message is still running after ",
                              timeout.count(), " ms more; exiting"));
        _exit(1);
      }
    }
  });

  // Handles messages in order until shutdown or a loss.
  bool shutdown = false;
  for (;;) {
    std::unique_lock<std::mutex> lock(state.mu);
    state.queue_cv.wait(lock, [&] { return !state.queue.empty() || state.lost || state.ended; });
    if (state.lost || state.ended) {
      // A coordinator that said shutdown and closed the stream at once still gets a clean exit.
      for (const auto& queued : state.queue) {
        if (queued.first.body_case() == cv1::CoordinatorMessage::kShutdown &&
            queued.first.epoch() == reg.epoch()) {
          shutdown = true;
        }
      }
      break;
    }
    auto [m, received] = std::move(state.queue.front());
    state.queue.pop_front();
    lock.unlock();
    bool write_failed = false;
    for (const cv1::WorkerMessage& reply : shard.Handle(m, received)) {
      write_failed = write_failed || !write(reply);
    }
    if (write_failed) {
      lock.lock();
      state.MarkLost("a reply could not be written");
      continue;
    }
    if (shard.done()) {
      shutdown = true;
      lock.lock();
      state.closing = true;
      state.cv.notify_all();
      lock.unlock();
      {
        std::lock_guard<std::mutex> write_lock(write_mu);
        stream->WritesDone();
        writes_done = true;
      }
      lock.lock();
      state.cv.wait_for(lock, kCloseTimeout, [&] { return state.ended; });
      break;
    }
  }

  std::string reason;
  bool ended = false;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    state.stopping = true;
    ended = state.ended;
    reason = state.lost ? state.lost_reason : "the session ended";
    state.cv.notify_all();
  }
  if (!ended) context.TryCancel();  // else Finish has the coordinator's status, which a cancel would hide
  reader.join();
  heartbeat.join();
  watchdog.join();
  const grpc::Status finished = stream->Finish();
  if (shutdown) {
    log.Line(absl::StrCat(prefix, "shut down"));
    return absl::OkStatus();
  }
  if (!finished.ok() && finished.error_code() != grpc::StatusCode::CANCELLED) {
    absl::StrAppend(&reason, ": ", GrpcError(finished));
  }
  const std::string error = absl::StrCat("lost the coordinator at ", options.coordinator, " (", reason, ")");
  log.Line(prefix + error);
  return absl::UnavailableError(error);
}

}  // namespace tessera
