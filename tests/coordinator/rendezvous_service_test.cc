// The coordinator's Rendezvous service through a real gRPC client, and Gloo groups of real processes that
// meet through it, in either start order.
#include "coordinator/rendezvous_service.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "core/secret.h"
#include "tests/util/test_env.h"

extern char** environ;

namespace tessera {
namespace {

using namespace std::chrono_literals;
using control::v1::GetRequest;
using control::v1::GetResponse;
using control::v1::Rendezvous;
using control::v1::SetRequest;
using control::v1::SetResponse;
using control::v1::WaitRequest;
using control::v1::WaitResponse;

int FreePort() { return ::tessera::testing::FreeLoopbackPort(); }

class Server {
 public:
  explicit Server(int port = 0) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~Server() {
    service_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + 2s);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  RendezvousService& service() { return service_; }

 private:
  RendezvousService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

std::unique_ptr<Rendezvous::Stub> Client(const std::string& address) {
  return Rendezvous::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

grpc::Status Call(Rendezvous::Stub& stub, const std::vector<std::string>& wait_keys,
                  std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  WaitRequest request;
  for (const auto& k : wait_keys) request.add_keys(k);
  WaitResponse response;
  return stub.Wait(&context, request, &response);
}

// With a token (the epoch's, which the coordinator hands its registered workers), calls without it or with
// another are UNAUTHENTICATED and change nothing; with it they work; a new token retires the old one.
TEST(RendezvousServiceTest, WithATokenOnlyCallsCarryingItAreAnswered) {
  Server server;
  server.service().SetToken("epoch-secret");
  auto stub = Client(server.address());
  auto set = [&](const std::string& token, const std::string& key) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    if (!token.empty()) context.AddMetadata("x-tessera-store-token", token);
    SetRequest request;
    request.set_key(key);
    request.set_value("v");
    SetResponse response;
    return stub->Set(&context, request, &response);
  };
  auto get = [&](const std::string& token, const std::string& key) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 1s);
    if (!token.empty()) context.AddMetadata("x-tessera-store-token", token);
    GetRequest request;
    request.set_key(key);
    GetResponse response;
    return stub->Get(&context, request, &response);
  };
  EXPECT_EQ(set("", "a").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(set("", "a").error_message(), ::testing::HasSubstr("x-tessera-store-token missing"));
  EXPECT_EQ(set("epoch-secreT", "a").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(set("epoch-secret-and-more", "a").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(get("epoch-secret", "a").error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);  // never set
  EXPECT_TRUE(set("epoch-secret", "a").ok());
  EXPECT_TRUE(get("epoch-secret", "a").ok());
  EXPECT_EQ(get("", "a").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  server.service().SetToken("next-epoch");
  EXPECT_EQ(get("epoch-secret", "a").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(get("next-epoch", "a").ok());
}

TEST(SecretTest, ConstantTimeEqualsComparesWholeStringsAndTokensAreRandomHex) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abd", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("ab", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abcd", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("", "abc"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  const std::string a = RandomToken(), b = RandomToken();
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

TEST(RendezvousServiceTest, GetWaitsForAKeySetLater) {
  Server server;
  auto stub = Client(server.address());
  std::thread setter([&] {
    std::this_thread::sleep_for(200ms);
    grpc::ClientContext context;
    SetRequest request;
    request.set_key("group/0");
    request.set_value(std::string("\0bytes", 6));
    SetResponse response;
    EXPECT_TRUE(Client(server.address())->Set(&context, request, &response).ok());
  });
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10s);
  GetRequest request;
  request.set_key("group/0");
  GetResponse response;
  grpc::Status status = stub->Get(&context, request, &response);
  setter.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.value(), std::string("\0bytes", 6));
}

TEST(RendezvousServiceTest, WaitFailsAtItsDeadlineNamingTheMissingKeys) {
  Server server;
  auto stub = Client(server.address());
  grpc::Status status = Call(*stub, {"never/1", "never/2"}, 300ms);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST(RendezvousServiceTest, ShutdownReleasesWaitersWithUnavailable) {
  auto server = std::make_unique<Server>();
  auto stub = Client(server->address());
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    server->service().Shutdown();
  });
  grpc::Status status = Call(*stub, {"never"}, 10s);
  stopper.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(RendezvousServiceTest, EraseGroupRemovesOnlyThatGroupsKeys) {
  Server server;
  auto stub = Client(server.address());
  for (const char* key : {"tp0/a", "tp0/b", "tp1/a"}) {
    grpc::ClientContext context;
    SetRequest request;
    request.set_key(key);
    SetResponse response;
    ASSERT_TRUE(stub->Set(&context, request, &response).ok());
  }
  server.service().EraseGroup("tp0/");
  EXPECT_EQ(Call(*stub, {"tp1/a"}, 1s).error_code(), grpc::StatusCode::OK);
  EXPECT_EQ(Call(*stub, {"tp0/a"}, 200ms).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

grpc::Status SetKey(Rendezvous::Stub& stub, const std::string& key, const std::string& value) {
  grpc::ClientContext context;
  SetRequest request;
  request.set_key(key);
  request.set_value(value);
  SetResponse response;
  return stub.Set(&context, request, &response);
}

grpc::Status GetKey(Rendezvous::Stub& stub, const std::string& key, std::chrono::milliseconds timeout,
                    std::string* value = nullptr) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  GetRequest request;
  request.set_key(key);
  GetResponse response;
  grpc::Status status = stub.Get(&context, request, &response);
  if (value != nullptr) *value = response.value();
  return status;
}

TEST(RendezvousServiceTest, RetireAllButKeepsTheLiveGroupsKeysAndAbortsWaitsOnTheOldOnesAtOnce) {
  Server server;
  auto stub = Client(server.address());
  for (const char* key : {"epoch1/tp0/0", "epoch1/tp0/1", "epoch2/tp0/0"}) {
    ASSERT_TRUE(SetKey(*stub, key, std::string("v:") + key).ok());
  }
  server.service().RetireAllBut("epoch2/");
  // The live key is kept with its value.
  std::string value;
  ASSERT_TRUE(GetKey(*stub, "epoch2/tp0/0", 1s, &value).ok());
  EXPECT_EQ(value, "v:epoch2/tp0/0");
  // The old keys are gone: waiting for one fails with ABORTED at once (not at its 30 s deadline), naming the
  // live prefix; so does a Wait that mixes live and old keys.
  const auto start = std::chrono::steady_clock::now();
  grpc::Status old = GetKey(*stub, "epoch1/tp0/0", 30s);
  EXPECT_EQ(old.error_code(), grpc::StatusCode::ABORTED) << old.error_message();
  EXPECT_THAT(old.error_message(), ::testing::HasSubstr("epoch2/"));
  EXPECT_EQ(Call(*stub, {"epoch2/tp0/0", "epoch1/tp0/1"}, 30s).error_code(), grpc::StatusCode::ABORTED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  // A key of the old group set again is no live key either.
  ASSERT_TRUE(SetKey(*stub, "epoch1/tp0/0", "late").ok());
  EXPECT_EQ(GetKey(*stub, "epoch1/tp0/0", 30s).error_code(), grpc::StatusCode::ABORTED);
  // Keys of the live group still wait as before.
  EXPECT_EQ(Call(*stub, {"epoch2/tp0/1"}, 200ms).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST(RendezvousServiceTest, RetireAllButReleasesAWaitOnAnOldKeyWithAborted) {
  Server server;
  auto stub = Client(server.address());
  std::thread retirer([&] {
    std::this_thread::sleep_for(
        200ms);  // the Wait below is (most likely) blocked by then; either way it fails
    server.service().RetireAllBut("epoch2/");
  });
  const auto start = std::chrono::steady_clock::now();
  grpc::Status status = Call(*stub, {"epoch1/pp0/1"}, 30s);
  retirer.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED) << status.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);  // released, not timed out
}

// Starts `size` rendezvous_rank_main processes against `address`; returns their pids.
std::vector<pid_t> StartRanks(const std::string& address, int size) {
  std::vector<pid_t> pids;
  for (int rank = 0; rank < size; ++rank) {
    std::string r = std::to_string(rank), s = std::to_string(size);
    std::vector<char*> argv = {const_cast<char*>(TESSERA_RANK_MAIN), const_cast<char*>(address.c_str()),
                               r.data(), s.data(), nullptr};
    pid_t pid;
    EXPECT_EQ(posix_spawn(&pid, TESSERA_RANK_MAIN, nullptr, nullptr, argv.data(), environ), 0);
    pids.push_back(pid);
  }
  return pids;
}

// Waits for every pid (killing those still running after 60 s); returns their exit codes.
std::vector<int> WaitRanks(const std::vector<pid_t>& pids) {
  std::vector<int> codes;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (pid_t pid : pids) {
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  return codes;
}

TEST(RendezvousServiceTest, AGlooGroupOfProcessesFormsThroughTheService) {
  Server server;
  EXPECT_THAT(WaitRanks(StartRanks(server.address(), 3)), ::testing::Each(0));
}

TEST(RendezvousServiceTest, WorkersStartedBeforeTheCoordinatorStillMeet) {
  const int port = FreePort();
  std::vector<pid_t> pids = StartRanks("127.0.0.1:" + std::to_string(port), 2);
  std::this_thread::sleep_for(700ms);  // the workers are already retrying
  Server server(port);
  EXPECT_THAT(WaitRanks(pids), ::testing::Each(0));
}

}  // namespace
}  // namespace tessera
