// WorkerGroup on a real gRPC server (a loopback port the OS picks) with real Control clients in the test:
// the bounded outbox's backpressure (SendStep waits while a worker does not read and goes on when it reads;
// a failure or Shutdown releases it with UNAVAILABLE) and the failure handler (called once, for the first
// failure, on the thread that noticed it, never under the group's lock).
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
#include "core/str_cat.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

namespace cv1 = control::v1;
using namespace std::chrono_literals;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
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

  absl::Status Join() {
    grpc::ClientContext context;
    cv1::RegisterRequest request;
    request.set_requested_rank(-1);
    request.set_hostname("test-host");
    request.set_pid(getpid());
    cv1::RegisterResponse response;
    const grpc::Status status = stub_->Register(&context, request, &response);
    if (!status.ok()) return absl::UnavailableError(Cat("Register failed: ", status.error_message()));
    rank_ = response.rank();
    epoch_ = response.epoch();
    stream_ = stub_->Session(&session_);
    cv1::WorkerMessage open = Message();
    open.mutable_open()->set_hostname("test-host");
    if (!stream_->Write(open)) return absl::UnavailableError("cannot open the session");
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
    return stream_->Write(error);
  }
  // Cancels the session (the worker exits).
  void Leave() {
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
    message.set_epoch(epoch_);
    message.set_rank(rank_);
    return message;
  }

  std::unique_ptr<cv1::Control::Stub> stub_;
  grpc::ClientContext session_;
  std::unique_ptr<grpc::ClientReaderWriter<cv1::WorkerMessage, cv1::CoordinatorMessage>> stream_;
  int rank_ = -1;
  uint64_t epoch_ = 0;
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
    group_ = std::make_unique<WorkerGroup>(options, nullptr, [this](const absl::Status& status) {
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
  // Waits until a SendStep is held back by a full outbox.
  bool SenderWaits() {
    return WaitUntil([&] { return group_->stats().senders_waiting == 1; });
  }

  std::unique_ptr<WorkerGroup> group_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  absl::Mutex mu_;
  std::vector<absl::Status> failures_ ABSL_GUARDED_BY(mu_);
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

}  // namespace
}  // namespace tessera
