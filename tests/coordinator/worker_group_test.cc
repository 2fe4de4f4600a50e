// WorkerGroup on a real gRPC server (a loopback port the OS picks) with real Control clients in the test:
// the bounded outbox's backpressure (SendStep waits while a worker does not read and goes on when it reads;
// a failure or Shutdown releases it with UNAVAILABLE) and the failure handler (called once, for the first
// failure, on the thread that noticed it, never under the group's lock). Recovery: BeginRecovery drops the lost
// ranks (closed, silent, or named) and frees their slots in a new epoch; messages of another epoch are ignored
// but prove liveness; RunPhase for some ranks; no step result is routed while the group is failed.
#include "coordinator/worker_group.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <numeric>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/str_cat.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

namespace cv1 = control::v1;
using namespace std::chrono_literals;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr int kStepBytes = 1 << 20;  // large, so that a worker that does not read fills the transport soon
constexpr int kSteps = 48;           // far more bytes than the loopback socket and HTTP/2 windows hold

// A step payload that starts with its index.
std::string StepPayload(int index) {
  std::string step = Cat(index, ";");
  step.resize(kStepBytes, 'x');
  return step;
}

// Polls `done` until it holds or 30 s pass.
bool WaitUntil(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// A worker's side of Control: registers, opens its session, and reads only when told to.
class TestWorker {
 public:
  explicit TestWorker(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);  // keep the receive window at its initial size
    stub_ =
        cv1::Control::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }
  ~TestWorker() { Leave(); }

  absl::Status Join(int requested_rank = -1) {
    grpc::ClientContext context;
    cv1::RegisterRequest request;
    request.set_requested_rank(requested_rank);
    request.set_hostname("test-host");
    request.set_pid(getpid());
    cv1::RegisterResponse response;
    const grpc::Status status = stub_->Register(&context, request, &response);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          Cat("Register failed: ", status.error_message()));
    }
    rank_ = response.rank();
    epoch_ = response.epoch();
    stream_ = stub_->Session(&session_);
    cv1::WorkerMessage open = Message();
    open.mutable_open()->set_hostname("test-host");
    if (!Write(open)) return absl::UnavailableError("cannot open the session");
    return absl::OkStatus();
  }
  // Reads until `count` steps came (heartbeats are skipped); returns the steps' indices.
  std::vector<int> ReadSteps(int count) {
    std::vector<int> indices;
    cv1::CoordinatorMessage message;
    while (static_cast<int>(indices.size()) < count && stream_->Read(&message)) {
      if (message.body_case() == cv1::CoordinatorMessage::kStep) {
        EXPECT_EQ(message.step().size(), static_cast<size_t>(kStepBytes));
        indices.push_back(std::stoi(message.step().substr(0, message.step().find(';'))));
      }
    }
    return indices;
  }
  // Reports an error, as a worker does when a step fails.
  bool SendError(absl::StatusCode code, const std::string& text) {
    cv1::WorkerMessage error = Message();
    error.mutable_error()->set_code(static_cast<int>(code));
    error.mutable_error()->set_message(text);
    return Write(error);
  }
  // Messages as the worker's shard sends them, stamped with epoch() (the test may move it, as a Reset does).
  bool SendAck(int field) {
    cv1::WorkerMessage ack = Message();
    ack.mutable_ack()->set_message(field);
    return Write(ack);
  }
  bool SendStepResult(uint64_t step_id) {
    cv1::WorkerMessage result = Message();
    result.mutable_step_result()->set_step_id(step_id);
    return Write(result);
  }
  bool SendHeartbeat() {
    cv1::WorkerMessage beat = Message();
    beat.mutable_heartbeat()->set_busy_seconds(0.5);
    return Write(beat);
  }
  // Sends a heartbeat every 20 ms on its own thread until StopHeartbeats.
  void StartHeartbeats() {
    heartbeats_ = std::thread([this] {
      while (!stop_heartbeats_.load() && SendHeartbeat()) std::this_thread::sleep_for(20ms);
    });
  }
  void StopHeartbeats() {
    stop_heartbeats_.store(true);
    if (heartbeats_.joinable()) heartbeats_.join();
  }
  // Reads until a message of `kind` comes; false when the stream ended first. The kinds skipped on the way
  // (but heartbeats) are appended to `skipped` when not null.
  bool ReadUntil(cv1::CoordinatorMessage::BodyCase kind, cv1::CoordinatorMessage* message,
                 std::vector<cv1::CoordinatorMessage::BodyCase>* skipped = nullptr) {
    while (stream_->Read(message)) {
      if (message->body_case() == kind) return true;
      if (skipped != nullptr && !message->has_heartbeat()) skipped->push_back(message->body_case());
    }
    return false;
  }
  // True when the coordinator ends the session within 10 s (reading everything until then); otherwise the
  // worker cancels it itself and returns false.
  bool SessionEndedByTheCoordinator() {
    auto ended = std::make_shared<absl::Notification>();
    std::thread reader([this, ended] {
      cv1::CoordinatorMessage message;
      while (stream_->Read(&message)) {
      }
      ended->Notify();
    });
    const bool in_time = ended->WaitForNotificationWithTimeout(absl::Seconds(10));
    if (!in_time) session_.TryCancel();
    reader.join();
    return in_time;
  }
  int rank() const { return rank_; }
  uint64_t epoch() const { return epoch_.load(); }
  void set_epoch(uint64_t epoch) { epoch_.store(epoch); }

  // Cancels the session (the worker exits).
  void Leave() {
    StopHeartbeats();
    if (stream_ == nullptr) return;
    session_.TryCancel();
    cv1::CoordinatorMessage message;
    while (stream_->Read(&message)) {
    }
    (void)stream_->Finish();
    stream_.reset();
  }

 private:
  cv1::WorkerMessage Message() const {
    cv1::WorkerMessage message;
    message.set_epoch(epoch_.load());
    message.set_rank(rank_);
    return message;
  }
  bool Write(const cv1::WorkerMessage& message) {
    absl::MutexLock lock(&write_mu_);  // the heartbeat thread writes too
    return stream_->Write(message);
  }

  std::unique_ptr<cv1::Control::Stub> stub_;
  grpc::ClientContext session_;
  std::unique_ptr<grpc::ClientReaderWriter<cv1::WorkerMessage, cv1::CoordinatorMessage>> stream_;
  int rank_ = -1;
  std::atomic<uint64_t> epoch_{0};
  absl::Mutex write_mu_;
  std::thread heartbeats_;
  std::atomic<bool> stop_heartbeats_{false};
};

// Calls SendStep with kSteps steps on its own thread until one fails.
class Sender {
 public:
  explicit Sender(WorkerGroup& group)
      : thread_([this, &group] {
          for (int i = 0; i < kSteps; ++i) {
            absl::Status status = group.SendStep(StepPayload(i));
            if (!status.ok()) {
              absl::MutexLock lock(&mu_);
              status_ = std::move(status);
              return;
            }
            sent_.fetch_add(1);
          }
        }) {}
  ~Sender() { (void)Join(); }
  // Waits for the thread; returns the first error (OK when every step was taken).
  absl::Status Join() {
    if (thread_.joinable()) thread_.join();
    absl::MutexLock lock(&mu_);
    return status_;
  }
  int sent() const { return sent_.load(); }

 private:
  std::atomic<int> sent_{0};
  absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

class WorkerGroupTest : public ::testing::Test {
 protected:
  static WorkerGroupOptions Options() {
    WorkerGroupOptions options;
    options.world_size = 1;
    options.max_outbox_messages = 2;
    options.heartbeat_interval = 20ms;  // heartbeats are dropped while the outbox holds a step
    options.heartbeat_timeout = 60s;
    return options;
  }

  void Start(const WorkerGroupOptions& options) {
    auto on_result = [this](const cv1::StepResult& result) {
      absl::MutexLock lock(&mu_);
      results_.push_back(result.step_id());
    };
    group_ = std::make_unique<WorkerGroup>(options, on_result, [this](const absl::Status& status) {
      // Calls back into the group: with the group's lock held this would deadlock.
      const std::string rank = group_->Describe(0);
      const WorkerGroup::Stats stats = group_->stats();
      absl::MutexLock lock(&mu_);
      failures_.push_back(status);
      EXPECT_THAT(rank, HasSubstr("test-host"));
      EXPECT_GE(stats.send_waits, 0);
    });
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(group_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  // Stops the server; every Session handler has returned afterwards.
  void StopServer() {
    if (server_ == nullptr) return;
    server_->Shutdown(std::chrono::system_clock::now() + 2s);
    server_.reset();
  }
  void TearDown() override {
    StopServer();
    group_.reset();
  }

  std::string address() const { return Cat("127.0.0.1:", port_); }
  std::vector<absl::Status> failures() {
    absl::MutexLock lock(&mu_);
    return failures_;
  }
  // The step ids of the step results routed to the handler, in order.
  std::vector<uint64_t> results() {
    absl::MutexLock lock(&mu_);
    return results_;
  }
  // Waits until a SendStep is held back by a full outbox.
  bool SenderWaits() {
    return WaitUntil([&] { return group_->stats().senders_waiting == 1; });
  }

  std::unique_ptr<WorkerGroup> group_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  absl::Mutex mu_;
  std::vector<absl::Status> failures_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> results_ ABSL_GUARDED_BY(mu_);
};

TEST_F(WorkerGroupTest, SendStepWaitsWhileAWorkersOutboxIsFullAndGoesOnWhenItReads) {
  Start(Options());
  TestWorker worker(address());
  ASSERT_OK(worker.Join());
  ASSERT_OK(group_->WaitForWorkers(10s));
  Sender sender(*group_);
  // The worker reads nothing: the transport fills, the writer blocks, the outbox fills, SendStep waits.
  ASSERT_TRUE(SenderWaits()) << "SendStep never waited; " << sender.sent() << " steps were taken";
  EXPECT_LT(sender.sent(), kSteps);
  RecordProperty("steps_taken_before_waiting", sender.sent());

  std::vector<int> expected(kSteps);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_THAT(worker.ReadSteps(kSteps), ElementsAreArray(expected));  // every step, in order
  EXPECT_OK(sender.Join());
  EXPECT_EQ(sender.sent(), kSteps);
  const WorkerGroup::Stats stats = group_->stats();
  EXPECT_GE(stats.send_waits, 1);
  EXPECT_EQ(stats.senders_waiting, 0);
  EXPECT_THAT(failures(), SizeIs(0));
}

TEST_F(WorkerGroupTest, AFailureReleasesAWaitingSendStepAndIsReportedOnce) {
  Start(Options());
  TestWorker worker(address());
  ASSERT_OK(worker.Join());
  ASSERT_OK(group_->WaitForWorkers(10s));
  Sender sender(*group_);
  ASSERT_TRUE(SenderWaits());

  ASSERT_TRUE(worker.SendError(absl::StatusCode::kInternal, "rank 0: CUDA out of memory"));
  EXPECT_THAT(sender.Join(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 0: CUDA out of memory")));
  EXPECT_THAT(group_->SendStep(StepPayload(0)), StatusIs(absl::StatusCode::kUnavailable));
  worker.Leave();  // a second failure: the session closes
  StopServer();    // every handler has returned
  const std::vector<absl::Status> reported = failures();
  ASSERT_THAT(reported, SizeIs(1));
  EXPECT_THAT(reported[0], StatusIs(absl::StatusCode::kInternal, "rank 0: CUDA out of memory"));
}

TEST_F(WorkerGroupTest, ShutdownReleasesAWaitingSendStep) {
  Start(Options());
  TestWorker worker(address());
  ASSERT_OK(worker.Join());
  ASSERT_OK(group_->WaitForWorkers(10s));
  Sender sender(*group_);
  ASSERT_TRUE(SenderWaits());

  group_->Shutdown(50ms);  // the worker stays connected: Shutdown gives up on it after the grace
  EXPECT_THAT(sender.Join(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
  EXPECT_THAT(group_->SendStep(StepPayload(0)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
  worker.Leave();
  StopServer();
  EXPECT_THAT(failures(), SizeIs(0));  // shutting down is no failure
}

TEST_F(WorkerGroupTest, ASilentWorkerIsReportedOnceByTheHeartbeatThread) {
  WorkerGroupOptions options = Options();
  options.heartbeat_timeout = 200ms;
  Start(options);
  TestWorker worker(address());  // sends no heartbeats
  ASSERT_OK(worker.Join());
  ASSERT_TRUE(WaitUntil([&] { return !failures().empty(); }));
  worker.Leave();  // a second failure: the session closes
  StopServer();
  const std::vector<absl::Status> reported = failures();
  ASSERT_THAT(reported, SizeIs(1));
  EXPECT_THAT(reported[0], StatusIs(absl::StatusCode::kUnavailable, HasSubstr("sent nothing for")));
  EXPECT_THAT(reported[0], StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 0 (pid")));
}

WorkerGroupOptions TwoRanks() {
  WorkerGroupOptions options;
  options.world_size = 2;
  options.heartbeat_interval = 20ms;
  options.heartbeat_timeout = 60s;
  return options;
}

TEST_F(WorkerGroupTest, BeginRecoveryDropsAClosedRankFreesItsSlotForAReplacementAndMovesToANewEpoch) {
  Start(TwoRanks());
  TestWorker survivor(address()), lost(address());
  ASSERT_OK(survivor.Join(0));
  ASSERT_OK(lost.Join(1));
  ASSERT_OK(group_->WaitForWorkers(10s));
  const uint64_t old_epoch = group_->epoch();
  EXPECT_EQ(survivor.epoch(), old_epoch);

  lost.Leave();
  ASSERT_TRUE(WaitUntil([&] { return !failures().empty(); }));
  EXPECT_THAT(group_->SendStep(StepPayload(0)), StatusIs(absl::StatusCode::kUnavailable));
  TestWorker early(address());  // no worker is accepted while the group is failed
  EXPECT_THAT(early.Join(1), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not accepting")));

  ASSERT_OK_AND_ASSIGN(WorkerGroup::Recovery recovery, group_->BeginRecovery(5s));
  EXPECT_EQ(recovery.old_epoch, old_epoch);
  EXPECT_GT(recovery.new_epoch, old_epoch);
  EXPECT_EQ(group_->epoch(), recovery.new_epoch);
  EXPECT_THAT(recovery.lost, ElementsAre(1));
  EXPECT_THAT(recovery.survivors, ElementsAre(0));
  EXPECT_THAT(recovery.vacant, ElementsAre(1));

  // The failure is cleared: a replacement takes the free rank in the new epoch; the survivor keeps its own.
  TestWorker squatter(address());
  EXPECT_THAT(squatter.Join(0),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("rank 0 is already taken")));
  TestWorker replacement(address());
  ASSERT_OK(replacement.Join(1));
  EXPECT_EQ(replacement.rank(), 1);
  EXPECT_EQ(replacement.epoch(), recovery.new_epoch);
  ASSERT_OK(group_->WaitForWorkers(10s));

  // The survivor gets its Reset in the old epoch; an Ack still stamped with the old epoch is ignored, the one
  // from the new epoch completes the phase.
  auto reset = [&](int) {
    cv1::CoordinatorMessage m;
    m.set_epoch(recovery.old_epoch);
    m.mutable_reset()->set_new_epoch(recovery.new_epoch);
    return m;
  };
  std::thread worker([&] {
    cv1::CoordinatorMessage m;
    ASSERT_TRUE(survivor.ReadUntil(cv1::CoordinatorMessage::kReset, &m));
    EXPECT_EQ(m.epoch(), recovery.old_epoch);
    EXPECT_EQ(m.reset().new_epoch(), recovery.new_epoch);
    EXPECT_TRUE(survivor.SendAck(cv1::CoordinatorMessage::kReset));  // stale: ignored
  });
  EXPECT_THAT(group_->RunPhase(reset, 300ms, recovery.survivors),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("(ranks 0)")));
  worker.join();
  worker = std::thread([&] {
    cv1::CoordinatorMessage m;
    ASSERT_TRUE(survivor.ReadUntil(cv1::CoordinatorMessage::kReset, &m));
    survivor.set_epoch(recovery.new_epoch);
    EXPECT_TRUE(survivor.SendAck(cv1::CoordinatorMessage::kReset));
  });
  absl::StatusOr<std::vector<cv1::Ack>> acks = group_->RunPhase(reset, 10s, recovery.survivors);
  worker.join();
  ASSERT_OK(acks);
  ASSERT_EQ(acks->size(), 2u);
  EXPECT_EQ((*acks)[0].message(), cv1::CoordinatorMessage::kReset);
  EXPECT_EQ((*acks)[1].message(), 0);  // not asked

  // Whole again: steps reach both, in the new epoch.
  ASSERT_OK(group_->SendStep(StepPayload(7)));
  for (TestWorker* w : {&survivor, &replacement}) {
    cv1::CoordinatorMessage m;
    ASSERT_TRUE(w->ReadUntil(cv1::CoordinatorMessage::kStep, &m));
    EXPECT_EQ(m.epoch(), recovery.new_epoch);
  }
  EXPECT_THAT(failures(), SizeIs(1));  // the lost rank's; dropping it was none
}

TEST_F(WorkerGroupTest, BeginRecoveryCancelsTheSessionOfASilentWorker) {
  WorkerGroupOptions options = TwoRanks();
  options.heartbeat_timeout = 500ms;  // the live worker beats every 20 ms
  Start(options);
  TestWorker alive(address()), silent(address());
  ASSERT_OK(alive.Join(0));
  alive.StartHeartbeats();
  ASSERT_OK(silent.Join(1));  // connected, but sends nothing
  ASSERT_TRUE(WaitUntil([&] { return !failures().empty(); }));
  EXPECT_THAT(failures()[0], StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 1 (pid")));

  ASSERT_OK_AND_ASSIGN(WorkerGroup::Recovery recovery, group_->BeginRecovery(5s));
  EXPECT_THAT(recovery.lost, ElementsAre(1));
  EXPECT_THAT(recovery.survivors, ElementsAre(0));
  EXPECT_THAT(recovery.vacant, ElementsAre(1));
  EXPECT_TRUE(silent.SessionEndedByTheCoordinator());
  alive.StopHeartbeats();
  EXPECT_THAT(failures(), SizeIs(1));  // the cancelled session's end is no new failure
}

TEST_F(WorkerGroupTest, BeginRecoveryDropsTheRanksItIsToldToAndEveryRankWithDropAll) {
  Start(TwoRanks());
  TestWorker w0(address()), w1(address());
  ASSERT_OK(w0.Join(0));
  ASSERT_OK(w1.Join(1));
  ASSERT_OK(group_->WaitForWorkers(10s));
  ASSERT_OK_AND_ASSIGN(WorkerGroup::Recovery first, group_->BeginRecovery(5s, false, {1}));
  EXPECT_THAT(first.lost, ElementsAre(1));  // healthy, but its setup was left half done
  EXPECT_THAT(first.survivors, ElementsAre(0));
  EXPECT_TRUE(w1.SessionEndedByTheCoordinator());
  ASSERT_OK_AND_ASSIGN(WorkerGroup::Recovery second, group_->BeginRecovery(5s, /*drop_all=*/true));
  EXPECT_THAT(second.lost, ElementsAre(0));  // rank 1's slot was already free
  EXPECT_THAT(second.survivors, IsEmpty());
  EXPECT_THAT(second.vacant, ElementsAre(0, 1));
  EXPECT_GT(second.new_epoch, first.new_epoch);
  EXPECT_TRUE(w0.SessionEndedByTheCoordinator());
  EXPECT_THAT(failures(), IsEmpty());
}

TEST_F(WorkerGroupTest, MessagesOfAnotherEpochAreIgnoredButShowTheWorkerIsAlive) {
  WorkerGroupOptions options = Options();
  options.heartbeat_timeout = 500ms;
  Start(options);
  TestWorker worker(address());
  ASSERT_OK(worker.Join());
  const uint64_t epoch = worker.epoch();
  worker.set_epoch(epoch + 1);  // as a worker still in an earlier life would stamp its messages
  ASSERT_TRUE(worker.SendStepResult(1));
  ASSERT_TRUE(worker.SendError(absl::StatusCode::kInternal, "rank 0: from another epoch"));
  for (int i = 0; i < 75; ++i) {  // 1.5 s of heartbeats, well past the 500 ms timeout
    ASSERT_TRUE(worker.SendHeartbeat());
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_THAT(failures(), IsEmpty());  // neither the error nor silence
  worker.set_epoch(epoch);
  ASSERT_TRUE(worker.SendStepResult(2));  // messages are handled in order: once 2 is routed, 1 was dropped
  ASSERT_TRUE(WaitUntil([&] { return !results().empty(); }));
  EXPECT_THAT(results(), ElementsAre(2));
  // Silent from here on: reported.
  ASSERT_TRUE(WaitUntil([&] { return !failures().empty(); }));
  EXPECT_THAT(failures()[0], StatusIs(absl::StatusCode::kUnavailable, HasSubstr("sent nothing for")));
}

TEST_F(WorkerGroupTest, StepResultsAreNotRoutedWhileTheGroupIsFailedNorFromTheOldEpochAfterRecovery) {
  Start(Options());
  TestWorker worker(address());
  ASSERT_OK(worker.Join());
  ASSERT_OK(group_->WaitForWorkers(10s));
  ASSERT_TRUE(worker.SendStepResult(1));
  ASSERT_TRUE(WaitUntil([&] { return results().size() == 1; }));
  ASSERT_TRUE(worker.SendError(absl::StatusCode::kInternal, "rank 0: step 2 failed"));
  ASSERT_TRUE(worker.SendStepResult(2));  // after the failure: dropped
  ASSERT_TRUE(WaitUntil([&] { return !failures().empty(); }));
  ASSERT_OK_AND_ASSIGN(WorkerGroup::Recovery recovery, group_->BeginRecovery(5s));
  EXPECT_THAT(recovery.lost, IsEmpty());  // its session is open and it is not silent
  EXPECT_THAT(recovery.survivors, ElementsAre(0));
  ASSERT_TRUE(worker.SendStepResult(3));  // still in the old epoch: ignored
  worker.set_epoch(recovery.new_epoch);
  ASSERT_TRUE(worker.SendStepResult(4));
  ASSERT_TRUE(WaitUntil([&] { return results().size() >= 2; }));
  EXPECT_THAT(results(), ElementsAre(1, 4));
}

TEST_F(WorkerGroupTest, RunPhaseSendsOnlyToTheRanksAskedAndNamesThoseThatDoNotAnswer) {
  Start(TwoRanks());
  TestWorker w0(address()), w1(address());
  ASSERT_OK(w0.Join(0));
  ASSERT_OK(w1.Join(1));
  ASSERT_OK(group_->WaitForWorkers(10s));
  auto drain = [](int) {
    cv1::CoordinatorMessage m;  // epoch left at 0: the group's
    m.mutable_drain();
    return m;
  };
  std::thread answer([&] {
    cv1::CoordinatorMessage m;
    ASSERT_TRUE(w1.ReadUntil(cv1::CoordinatorMessage::kDrain, &m));
    EXPECT_EQ(m.epoch(), group_->epoch());
    EXPECT_TRUE(w1.SendAck(cv1::CoordinatorMessage::kDrain));
  });
  absl::StatusOr<std::vector<cv1::Ack>> acks = group_->RunPhase(drain, 10s, {1});
  answer.join();
  ASSERT_OK(acks);
  ASSERT_EQ(acks->size(), 2u);
  EXPECT_EQ((*acks)[0].message(), 0);
  EXPECT_EQ((*acks)[1].message(), cv1::CoordinatorMessage::kDrain);
  // Rank 0 was not asked: the next message it gets is the step.
  ASSERT_OK(group_->SendStep(StepPayload(3)));
  cv1::CoordinatorMessage m;
  std::vector<cv1::CoordinatorMessage::BodyCase> skipped;
  ASSERT_TRUE(w0.ReadUntil(cv1::CoordinatorMessage::kStep, &m, &skipped));
  EXPECT_THAT(skipped, IsEmpty()) << "rank 0 got a phase it was not asked for";
  // Everyone asked, rank 0 silent: the error names it alone.
  answer = std::thread([&] {
    cv1::CoordinatorMessage d;
    ASSERT_TRUE(w1.ReadUntil(cv1::CoordinatorMessage::kDrain, &d));
    EXPECT_TRUE(w1.SendAck(cv1::CoordinatorMessage::kDrain));
  });
  EXPECT_THAT(group_->RunPhase(drain, 300ms),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("(ranks 0)")));
  answer.join();
}

}  // namespace
}  // namespace tessera
