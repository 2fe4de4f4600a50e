// RunWorker against a fake coordinator (a real gRPC Control service in the test): registration retried until
// the coordinator comes up or the connect timeout passes, refusals returned at once, a whole session (setup,
// a step, shutdown) ending OK, a silent or vanished coordinator ending the worker with UNAVAILABLE, and the
// bound of the worker's queue of coordinator messages.
#include "worker/worker_process.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "tessera/control/v1/control.grpc.pb.h"
#include "tests/util/status_matchers.h"
#include "tests/util/test_env.h"
#include "tests/util/tiny_model.h"
#include "worker/checkpoint/make_model.h"

namespace tessera {
namespace {

namespace cv1 = control::v1;
using namespace std::chrono_literals;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr uint64_t kEpoch = 3;

int FreePort() { return ::tessera::testing::FreeLoopbackPort(); }

// Waits until `done` holds, for at most 10 s; false if it never did.
template <typename Predicate>
bool WaitUntil(Predicate done) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The coordinator's side of Control, scripted by the test.
class FakeControl final : public cv1::Control::Service {
 public:
  enum class Mode {
    kScript,        // send `script` one message at a time, each after the reply to the one before
    kSilent,        // say nothing (no heartbeats either) and read until the worker leaves
    kEndWithError,  // end the session with FAILED_PRECONDITION right after `open`
    kFlood,         // send all of `script` at once, then say nothing and read until the worker leaves
  };
  Mode mode = Mode::kScript;
  grpc::Status register_status;  // what Register answers (OK: `response`)
  cv1::RegisterResponse response;
  std::vector<cv1::CoordinatorMessage> script;

  // What the worker sent (read them after the server has shut down).
  std::mutex mu;
  int registers = 0;
  cv1::RegisterRequest request;
  cv1::SessionOpen open;
  std::vector<cv1::WorkerMessage> replies;  // every message but heartbeats
  int heartbeats = 0;

  FakeControl() {
    response.set_rank(0);
    response.set_world_size(1);
    response.set_epoch(kEpoch);
    response.set_heartbeat_interval_ms(100);
    response.set_heartbeat_timeout_ms(5000);
  }

  grpc::Status Register(grpc::ServerContext*, const cv1::RegisterRequest* req,
                        cv1::RegisterResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu);
    ++registers;
    request = *req;
    if (!register_status.ok()) return register_status;
    *resp = response;
    return grpc::Status::OK;
  }

  grpc::Status Session(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<cv1::CoordinatorMessage, cv1::WorkerMessage>* stream) override {
    cv1::WorkerMessage m;
    if (!stream->Read(&m) || !m.has_open()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first message must be open");
    }
    Record(m);
    if (mode == Mode::kEndWithError) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "the group has failed");
    }
    if (mode == Mode::kFlood) {
      for (const cv1::CoordinatorMessage& next : script) {
        if (!stream->Write(next)) return grpc::Status::OK;
      }
    }
    if (mode == Mode::kScript) {
      for (const cv1::CoordinatorMessage& next : script) {
        if (!stream->Write(next)) return grpc::Status::OK;
        if (next.has_shutdown()) break;
        do {  // until the reply
          if (!stream->Read(&m)) return grpc::Status::OK;
          Record(m);
        } while (m.has_heartbeat());
      }
    }
    while (stream->Read(&m)) Record(m);  // until the worker closes or cancels
    return grpc::Status::OK;
  }

 private:
  void Record(const cv1::WorkerMessage& m) {
    std::lock_guard<std::mutex> lock(mu);
    if (m.has_open()) {
      open = m.open();
    } else if (m.has_heartbeat()) {
      ++heartbeats;
    } else {
      replies.push_back(m);
    }
  }
};

class Server {
 public:
  Server(FakeControl& service, int port) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service);
    server_ = builder.BuildAndStart();
  }
  ~Server() { server_->Shutdown(std::chrono::system_clock::now() + 2s); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

class WorkerProcessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(::tessera::testing::MakeTinyModel("worker_process_test", 0)); }
  static void TearDownTestSuite() {
    ::tessera::testing::RemoveTinyModel(*dir_);
    delete dir_;
  }

  static WorkerOptions Options(const std::string& address) {
    WorkerOptions options;
    options.coordinator = address;
    options.connect_timeout = 10s;
    options.exit_when_stuck = false;
    return options;
  }

  static cv1::CoordinatorMessage Message() {
    cv1::CoordinatorMessage m;
    m.set_epoch(kEpoch);
    return m;
  }

  // The setup messages, one step of a 5-token prompt, and shutdown.
  static std::vector<cv1::CoordinatorMessage> Script() {
    std::vector<cv1::CoordinatorMessage> script(7, Message());
    cv1::AssignShard* a = script[0].mutable_assign_shard();
    a->set_model_dir(*dir_);
    a->set_tp_size(1);
    a->set_pp_size(1);
    a->set_num_threads(1);
    a->set_max_num_tokens(32);
    a->set_max_num_seqs(4);
    script[1].mutable_init_comm()->set_group_prefix("epoch3");
    script[2].mutable_load_weights();
    script[3].mutable_profile_memory()->set_kv_cache_memory_bytes(1 << 20);
    script[4].mutable_allocate_kv_cache()->set_num_blocks(4);
    cv1::Step step;
    step.set_step_id(1);
    step.add_new_sequences()->set_seq_id(10);
    cv1::ScheduledSequence* s = step.add_scheduled();
    s->set_seq_id(10);
    for (int id : {1, 2, 3, 4, 5}) s->add_tokens(id);
    s->add_new_block_ids(3);
    s->set_sample(true);
    script[5].set_step(step.SerializeAsString());
    script[6].mutable_shutdown();
    return script;
  }

  static std::string* dir_;
};
std::string* WorkerProcessTest::dir_ = nullptr;

TEST_F(WorkerProcessTest, GivesUpWithUnavailableNamingTheAddressAfterTheConnectTimeout) {
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());  // nothing listens there
  WorkerOptions options = Options(address);
  options.connect_timeout = 1s;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(RunWorker(options),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("cannot reach the coordinator at " + address + " within 1.0 s")));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(seconds, 0.9);   // it kept trying for the whole timeout ...
  EXPECT_LT(seconds, 10.0);  // ... and then gave up (a hang would take the test's timeout)
}

TEST_F(WorkerProcessTest, RunsASessionWithACoordinatorThatComesUpLate) {
  const int port = FreePort();
  FakeControl control;
  control.script = Script();
  std::ostringstream log;
  WorkerOptions options = Options("127.0.0.1:" + std::to_string(port));
  options.requested_rank = 0;
  options.log = &log;
  absl::Status status;
  std::thread worker([&] { status = RunWorker(options); });
  std::this_thread::sleep_for(500ms);  // the worker retries meanwhile
  {
    Server server(control, port);
    worker.join();
  }
  EXPECT_OK(status);
  EXPECT_EQ(control.registers, 1);
  EXPECT_EQ(control.request.requested_rank(), 0);
  EXPECT_EQ(control.request.device(), "cpu");
  EXPECT_EQ(control.open.pid(), getpid());
  EXPECT_FALSE(control.open.hostname().empty());
  ASSERT_EQ(control.replies.size(), 6u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(control.replies[i].epoch(), kEpoch);
    ASSERT_TRUE(control.replies[i].has_ack()) << control.replies[i].DebugString();
    EXPECT_EQ(control.replies[i].ack().message(), static_cast<int>(control.script[i].body_case()));
  }
  ASSERT_TRUE(control.replies[5].has_step_result()) << control.replies[5].DebugString();
  EXPECT_EQ(control.replies[5].step_result().step_id(), 1u);
  EXPECT_EQ(control.replies[5].step_result().tokens_size(), 1);
  EXPECT_THAT(log.str(), HasSubstr("worker: waiting for the coordinator at 127.0.0.1:"));
  EXPECT_THAT(log.str(), HasSubstr("worker rank 0: loaded weights in "));
  EXPECT_THAT(log.str(), HasSubstr("worker rank 0: shut down"));
}

TEST_F(WorkerProcessTest, ReturnsARefusedRegistrationAtOnce) {
  FakeControl control;
  control.register_status = grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "rank 1 is taken");
  Server server(control, 0);
  EXPECT_THAT(RunWorker(Options(server.address())),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("the coordinator at " + server.address() +
                                 " refused to register this worker: rank 1 is taken")));
  std::lock_guard<std::mutex> lock(control.mu);  // the server is still up: its handler wrote under mu
  EXPECT_EQ(control.registers, 1);
}

TEST_F(WorkerProcessTest, LeavesASilentCoordinatorAfterTheHeartbeatTimeout) {
  FakeControl control;
  control.mode = FakeControl::Mode::kSilent;
  control.response.set_heartbeat_timeout_ms(500);
  Server server(control, 0);
  EXPECT_THAT(
      RunWorker(Options(server.address())),
      StatusIs(absl::StatusCode::kUnavailable,
               HasSubstr("lost the coordinator at " + server.address() + " (heard nothing for 500 ms")));
  std::lock_guard<std::mutex> lock(control.mu);
  EXPECT_GT(control.heartbeats, 0);  // the worker's own heartbeats went out meanwhile
}

TEST_F(WorkerProcessTest, LeavesWhenTheCoordinatorEndsTheSession) {
  FakeControl control;
  control.mode = FakeControl::Mode::kEndWithError;
  Server server(control, 0);
  EXPECT_THAT(RunWorker(Options(server.address())),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("the group has failed")));
}

// A worker stuck in a message (here init_comm, waiting for a rendezvous store nobody serves) when its
// coordinator goes silent ends its own process one heartbeat timeout after noticing.
TEST_F(WorkerProcessTest, EndsTheProcessWhenStuckAfterLosingTheCoordinator) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // re-executes the test binary: no fork after gRPC started
  auto run = [] {
    FakeControl control;
    control.response.set_world_size(2);
    control.response.set_heartbeat_timeout_ms(500);
    std::vector<cv1::CoordinatorMessage> setup = Script();
    setup.resize(2);
    setup[0].mutable_assign_shard()->set_tp_size(2);
    setup[1].mutable_init_comm()->set_store_address("127.0.0.1:" + std::to_string(FreePort()));
    setup[1].mutable_init_comm()->set_timeout_ms(60000);
    control.script = setup;
    Server server(control, 0);
    WorkerOptions options = Options(server.address());
    options.exit_when_stuck = true;
    options.log = &std::cerr;
    absl::Status status = RunWorker(options);
    std::fprintf(stderr, "RunWorker returned: %s\n", status.ToString().c_str());
    std::exit(0);
  };
  EXPECT_EXIT(
      run(), ::testing::ExitedWithCode(1),
      "lost the coordinator at 127.0.0.1:[0-9]+ \\(heard nothing for 500 ms\\) and the current message is "
      "still running");
}

// A coordinator that sends faster than the worker handles: the worker holds at most max_queued_messages (its
// reader stops reading, and gRPC's flow control holds the coordinator back), hands every message to the shard
// in order, and does not take the coordinator for lost while its reader is held back and the coordinator,
// having sent everything, is silent for longer than the heartbeat timeout.
TEST_F(WorkerProcessTest, HoldsAtMostMaxQueuedMessagesAndHandlesEveryMessageInOrder) {
  constexpr int kSteps = 200;
  constexpr int kBound = 2;
  FakeControl control;
  control.mode = FakeControl::Mode::kFlood;
  control.response.set_heartbeat_timeout_ms(300);
  for (int id = 1; id <= kSteps; ++id) {  // steps before setup: each answered by an error naming its step_id
    cv1::Step step;
    step.set_step_id(id);
    control.script.push_back(Message());
    control.script.back().set_step(step.SerializeAsString());
  }
  control.script.push_back(Message());
  control.script.back().mutable_shutdown();
  Server server(control, 0);
  std::atomic<int> max_depth{0};
  WorkerOptions options = Options(server.address());
  options.max_queued_messages = kBound;
  options.max_queue_depth_seen = &max_depth;
  int handled = 0;
  options.before_handle = [&] {
    if (handled++ > 0) return;
    // The first message takes long: until the queue behind it is full, then three heartbeat timeouts more.
    EXPECT_TRUE(WaitUntil([&] { return max_depth.load() >= kBound; }));
    std::this_thread::sleep_for(900ms);
  };
  EXPECT_OK(RunWorker(options));
  EXPECT_EQ(max_depth.load(), kBound);
  EXPECT_EQ(handled, kSteps + 1);
  ASSERT_EQ(control.replies.size(), static_cast<size_t>(kSteps));
  for (int i = 0; i < kSteps; ++i) {
    ASSERT_TRUE(control.replies[i].has_error()) << control.replies[i].DebugString();
    EXPECT_EQ(control.replies[i].error().code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
    EXPECT_EQ(control.replies[i].error().step_id(), static_cast<uint64_t>(i + 1));
  }
}

TEST_F(WorkerProcessTest, RefusesAQueueBoundBelowOne) {
  WorkerOptions options = Options("127.0.0.1:1");
  options.max_queued_messages = 0;
  EXPECT_THAT(RunWorker(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_queued_messages is 0")));
}

TEST(RequestedRankTest, TheFlagWinsOverTheLeaderWorkerSetIndex) {
  ASSERT_OK_AND_ASSIGN(int from_flag, RequestedRankFromFlagOrEnv(2, "5"));
  EXPECT_EQ(from_flag, 2);
  ASSERT_OK_AND_ASSIGN(int from_env, RequestedRankFromFlagOrEnv(-1, "5"));
  EXPECT_EQ(from_env, 5);
  ASSERT_OK_AND_ASSIGN(int unset, RequestedRankFromFlagOrEnv(-1, nullptr));
  EXPECT_EQ(unset, -1);
  ASSERT_OK_AND_ASSIGN(int empty, RequestedRankFromFlagOrEnv(-1, ""));
  EXPECT_EQ(empty, -1);
  EXPECT_THAT(RequestedRankFromFlagOrEnv(-1, "two"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("LWS_WORKER_INDEX='two'")));
}

}  // namespace
}  // namespace tessera
