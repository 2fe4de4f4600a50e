// GlooCommunicator across real processes (fork) on loopback: every operation's result, and that a missing or
// dead peer gives an error within the timeout instead of a hang. Abort (on groups of threads): a wait on a silent
// peer ends at once with UNAVAILABLE, and so does every later call, also through a StagedCommunicator.
#include "parallel/gloo_communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "kernels/backend_factory.h"
#include "worker/staged_communicator.h"
#include "tests/util/status_matchers.h"
#include "tests/util/test_env.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string FreshStoreDir() { return ::tessera::testing::FreshTempDir("gloo_store"); }

GlooOptions Options(const std::string& store, int rank, int size, std::chrono::milliseconds timeout = 10s) {
  GlooOptions o;
  o.group = "test";
  o.rank = rank;
  o.size = size;
  o.store_dir = store;
  o.timeout = timeout;
  return o;
}

// Runs body(rank) in `size` child processes; each child exits with body's return value (0 = passed). Returns
// the exit codes; children still running after `limit` are killed (code -1).
std::vector<int> RunRanks(int size, const std::function<int(int)>& body, std::chrono::seconds limit = 60s) {
  std::vector<pid_t> pids;
  for (int rank = 0; rank < size; ++rank) {
    pid_t pid = fork();
    if (pid == 0) {
      int code = body(rank);
      std::fflush(nullptr);
      _exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<int> codes(size, -1);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int remaining = size;
  while (remaining > 0 && std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < size; ++i) {
      if (pids[i] == 0) continue;
      int status = 0;
      if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
        codes[i] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        pids[i] = 0;
        --remaining;
      }
    }
    std::this_thread::sleep_for(5ms);
  }
  for (pid_t pid : pids) {
    if (pid != 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  return codes;
}

// A child's check: prints what failed and returns a non-zero code.
#define CHILD_EXPECT(cond, code)                                                     \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "rank %d: %s failed (line %d)\n", rank, #cond, __LINE__); \
      return code;                                                                   \
    }                                                                                \
  } while (0)

TEST(GlooCommunicatorTest, CollectivesGiveTheSameResultOnEveryRank) {
  const std::string store = FreshStoreDir();
  const int size = 3, n = 1001;
  auto codes = RunRanks(size, [&](int rank) {
    auto comm = GlooCommunicator::Create(Options(store, rank, size));
    CHILD_EXPECT(comm.ok(), 10);
    // All-reduce: rank r contributes r + i / 1000 at element i.
    std::vector<float> data(n);
    for (int i = 0; i < n; ++i) data[i] = rank + i / 1000.0f;
    Tensor t(data.data(), DType::kF32, {n});
    CHILD_EXPECT((*comm)->AllReduceSum(t).ok(), 11);
    for (int i = 0; i < n; ++i) CHILD_EXPECT(std::abs(data[i] - (3.0f + 3 * i / 1000.0f)) < 1e-4f, 12);
    // All-gather: rank r contributes 7 values r * 100 + j.
    std::vector<float> in(7), out(7 * size, -1.0f);
    for (int j = 0; j < 7; ++j) in[j] = rank * 100.0f + j;
    Tensor tin(in.data(), DType::kF32, {7}), tout(out.data(), DType::kF32, {size * 7});
    CHILD_EXPECT((*comm)->AllGather(tin, tout).ok(), 13);
    for (int r = 0; r < size; ++r) {
      for (int j = 0; j < 7; ++j) CHILD_EXPECT(out[r * 7 + j] == r * 100.0f + j, 14);
    }
    // Gather to rank 1: only the root's out is written.
    std::vector<float> gathered(7 * size, -1.0f);
    Tensor tg(gathered.data(), DType::kF32, {size * 7});
    CHILD_EXPECT((*comm)->Gather(tin, tg, 1).ok(), 18);
    for (int r = 0; r < size; ++r) {
      for (int j = 0; j < 7; ++j) CHILD_EXPECT(gathered[r * 7 + j] == (rank == 1 ? r * 100.0f + j : -1.0f), 19);
    }
    // Broadcast from rank 2.
    std::vector<float> b(5, static_cast<float>(rank));
    Tensor tb(b.data(), DType::kF32, {5});
    CHILD_EXPECT((*comm)->Broadcast(tb, 2).ok(), 15);
    for (float v : b) CHILD_EXPECT(v == 2.0f, 16);
    CHILD_EXPECT((*comm)->Barrier().ok(), 17);
    return 0;
  });
  EXPECT_THAT(codes, ::testing::Each(0));
}

TEST(GlooCommunicatorTest, SendAndRecvPassHiddenStatesAlongAPipelineInOrder) {
  const std::string store = FreshStoreDir();
  const int size = 3, n = 513;
  auto codes = RunRanks(size, [&](int rank) {
    auto comm = GlooCommunicator::Create(Options(store, rank, size));
    CHILD_EXPECT(comm.ok(), 10);
    std::vector<float> hidden(n);
    for (int step = 0; step < 5; ++step) {  // several micro-batches in flight along 0 -> 1 -> 2
      Tensor t(hidden.data(), DType::kF32, {n});
      if (rank == 0) {
        for (int i = 0; i < n; ++i) hidden[i] = step * 1000.0f + i;
      } else {
        CHILD_EXPECT((*comm)->Recv(t, rank - 1).ok(), 11);
        for (int i = 0; i < n; ++i) CHILD_EXPECT(hidden[i] == step * 1000.0f + i + (rank - 1), 12);
        for (float& v : hidden) v += 1.0f;  // this stage's "layers"
      }
      if (rank + 1 < size) {
        CHILD_EXPECT((*comm)->Send(t, rank + 1).ok(), 13);
      }
    }
    return 0;
  });
  EXPECT_THAT(codes, ::testing::Each(0));
}

TEST(GlooCommunicatorTest, AMissingPeerFailsTheRendezvousWithinTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  auto comm = GlooCommunicator::Create(Options(FreshStoreDir(), 0, 2, 700ms));
  EXPECT_THAT(comm.status(),
              StatusIs(AnyOf(absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kUnavailable),
                       HasSubstr("rank 0 of group 'test'")));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

TEST(GlooCommunicatorTest, ADeadPeerFailsTheNextCollectiveInsteadOfHanging) {
  const std::string store = FreshStoreDir();
  auto codes = RunRanks(2, [&](int rank) {
    auto comm = GlooCommunicator::Create(Options(store, rank, 2, 1500ms));
    CHILD_EXPECT(comm.ok(), 10);
    CHILD_EXPECT((*comm)->Barrier().ok(), 11);
    if (rank == 1) _exit(0);  // dies without a word
    std::vector<float> data(64, 1.0f);
    Tensor t(data.data(), DType::kF32, {64});
    absl::Status first = (*comm)->AllReduceSum(t);
    CHILD_EXPECT(!first.ok(), 12);
    CHILD_EXPECT(
        first.code() == absl::StatusCode::kDeadlineExceeded || first.code() == absl::StatusCode::kUnavailable,
        13);
    CHILD_EXPECT(!(*comm)->Barrier().ok(), 14);  // broken from now on
    return 0;
  });
  EXPECT_THAT(codes, ::testing::Each(0));
}

TEST(GlooCommunicatorTest, RejectsARankOutsideTheGroup) {
  EXPECT_THAT(GlooCommunicator::Create(Options(FreshStoreDir(), 2, 2)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank=2 is not in [0, size=2)")));
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

TEST(GlooCommunicatorTest, LargeAllReducesTakeTheRingAndAgree) {
  const std::string store = FreshStoreDir();
  const int size = 3, n = 100003;  // 400 KB: past the one-hop limit
  auto codes = RunRanks(size, [&](int rank) {
    auto comm = GlooCommunicator::Create(Options(store, rank, size));
    CHILD_EXPECT(comm.ok(), 10);
    std::vector<float> data(n);
    for (int i = 0; i < n; ++i) data[i] = static_cast<float>(rank * 3 + i % 7);
    Tensor t(data.data(), DType::kF32, {n});
    CHILD_EXPECT((*comm)->AllReduceSum(t).ok(), 11);
    for (int i = 0; i < n; ++i) CHILD_EXPECT(data[i] == static_cast<float>(9 + 3 * (i % 7)), 12);
    return 0;
  });
  EXPECT_THAT(codes, ::testing::Each(0));
}

// BF16 (the null device's activations, at their real size on the wire): both the one-hop and the ring path,
// summed in fp32; the small integers here are exact in BF16.
TEST(GlooCommunicatorTest, Bf16AllReducesOneHopAndRingAgree) {
  const std::string store = FreshStoreDir();
  const int size = 3;
  auto codes = RunRanks(size, [&](int rank) {
    auto comm = GlooCommunicator::Create(Options(store, rank, size));
    CHILD_EXPECT(comm.ok(), 10);
    for (const int n : {1000, 300001}) {  // 2 KB one hop; 600 KB the ring
      std::vector<uint16_t> data(n);
      for (int i = 0; i < n; ++i) data[i] = F32ToBf16(static_cast<float>(rank * 3 + i % 7));
      Tensor t(data.data(), DType::kBF16, {n});
      CHILD_EXPECT((*comm)->AllReduceSum(t).ok(), 11);
      for (int i = 0; i < n; ++i) CHILD_EXPECT(Bf16ToF32(data[i]) == static_cast<float>(9 + 3 * (i % 7)), 12);
    }
    return 0;
  });
  EXPECT_THAT(codes, ::testing::Each(0));
}

TEST(StagedCommunicatorTest, MovesBf16AndF32DeviceTensorsThroughTheHost) {
  const std::string store = FreshStoreDir();
  const int size = 2, n = 37;
  auto codes = RunRanks(size, [&](int rank) {
    auto host = GlooCommunicator::Create(Options(store, rank, size));
    CHILD_EXPECT(host.ok(), 10);
    BackendOptions options;
    options.num_threads = 1;
    auto backend = CreateBackend(options);  // the CPU: "device" memory is host memory, the logic is the same
    CHILD_EXPECT(backend.ok(), 11);
    StagedCommunicator comm(std::move(host).value(), **backend);
    // BF16 all-reduce of small integers (exact in bf16): rank r holds r + (i % 5).
    std::vector<uint16_t> bf16(n);
    for (int i = 0; i < n; ++i) bf16[i] = F32ToBf16(static_cast<float>(rank + i % 5));
    Tensor tb(bf16.data(), DType::kBF16, {n});
    CHILD_EXPECT(comm.AllReduceSum(tb).ok(), 12);
    for (int i = 0; i < n; ++i) CHILD_EXPECT(Bf16ToF32(bf16[i]) == static_cast<float>(1 + 2 * (i % 5)), 13);
    // F32 all-reduce.
    std::vector<float> f32(n, 0.5f + rank);
    Tensor tf(f32.data(), DType::kF32, {n});
    CHILD_EXPECT(comm.AllReduceSum(tf).ok(), 14);
    for (float v : f32) CHILD_EXPECT(v == 2.0f, 15);
    // All-gather, broadcast, send / recv.
    std::vector<uint16_t> in(3, static_cast<uint16_t>(rank + 1)), out(6, 0);
    Tensor tin(in.data(), DType::kBF16, {3}), tout(out.data(), DType::kBF16, {6});
    CHILD_EXPECT(comm.AllGather(tin, tout).ok(), 16);
    CHILD_EXPECT(out[0] == 1 && out[2] == 1 && out[3] == 2 && out[5] == 2, 17);
    std::vector<uint16_t> at_root(6, 0);
    Tensor troot(at_root.data(), DType::kBF16, {6});
    CHILD_EXPECT(comm.Gather(tin, troot, 0).ok(), 23);
    CHILD_EXPECT(rank == 1 ? at_root[0] == 0 : (at_root[0] == 1 && at_root[5] == 2), 24);
    std::vector<float> b(4, static_cast<float>(rank));
    Tensor tbc(b.data(), DType::kF32, {4});
    CHILD_EXPECT(comm.Broadcast(tbc, 1).ok(), 18);
    for (float v : b) CHILD_EXPECT(v == 1.0f, 19);
    std::vector<float> hidden(9, rank == 0 ? 42.0f : 0.0f);
    Tensor th(hidden.data(), DType::kF32, {3, 3});
    CHILD_EXPECT((rank == 0 ? comm.Send(th, 1) : comm.Recv(th, 0)).ok(), 20);
    for (float v : hidden) CHILD_EXPECT(v == 42.0f, 21);
    CHILD_EXPECT(comm.Barrier().ok(), 22);
    return 0;
  });
  EXPECT_THAT(codes, ::testing::Each(0));
}

// Makes a group of `size` ranks on threads of this process (each Create waits for the others).
std::vector<std::unique_ptr<GlooCommunicator>> ThreadGroup(int size, std::chrono::milliseconds timeout) {
  const std::string store = FreshStoreDir();
  std::vector<std::unique_ptr<GlooCommunicator>> comms(size);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = GlooCommunicator::Create(Options(store, rank, size, timeout));
      EXPECT_OK(comm.status());
      if (comm.ok()) comms[rank] = std::move(comm).value();
    });
  }
  for (std::thread& t : threads) t.join();
  return comms;
}

// Runs `op` on another thread, calls Abort on `comm` 200 ms later, and returns op's status.
absl::Status AbortedWhileWaiting(Communicator& comm, const std::function<absl::Status()>& op) {
  absl::Status status;
  std::thread waiter([&] { status = op(); });
  std::this_thread::sleep_for(200ms);  // op is (most likely) waiting by then; if not, it fails at its start
  comm.Abort();
  waiter.join();
  return status;
}

// The peer never sends: without Abort these waits would last the group's 5 s timeout and end with
// DEADLINE_EXCEEDED; aborted, they end at once with UNAVAILABLE.
TEST(GlooCommunicatorTest, AbortEndsARecvWaitingOnAnotherThreadAndEveryLaterCall) {
  auto comms = ThreadGroup(2, 5s);
  ASSERT_TRUE(comms[0] && comms[1]);
  std::vector<float> data(33, -1.0f), all(66);
  Tensor t(data.data(), DType::kF32, {33}), tall(all.data(), DType::kF32, {66});
  EXPECT_THAT(AbortedWhileWaiting(*comms[0], [&] { return comms[0]->Recv(t, 1); }),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("recv on rank 0")));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(comms[0]->Recv(t, 1), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(comms[0]->Send(t, 1), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(comms[0]->AllReduceSum(t), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(comms[0]->AllGather(t, tall), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(comms[0]->Broadcast(t, 1), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(comms[0]->Barrier(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);  // none waited for the peer
}

TEST(GlooCommunicatorTest, AbortEndsTheDirectAllReduceAndAllGatherWaitingOnASilentPeer) {
  auto comms = ThreadGroup(2, 5s);
  ASSERT_TRUE(comms[0] && comms[1]);
  std::vector<float> data(100, 1.0f), all(200);
  Tensor t(data.data(), DType::kF32, {100}), tall(all.data(), DType::kF32, {200});
  EXPECT_THAT(AbortedWhileWaiting(*comms[0], [&] { return comms[0]->AllReduceSum(t); }),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("all-reduce on rank 0")));
  EXPECT_THAT(AbortedWhileWaiting(*comms[1], [&] { return comms[1]->AllGather(t, tall); }),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("all-gather on rank 1")));
}

TEST(GlooCommunicatorTest, AnAbortedIdleCommunicatorFailsItsNextCallsAtOnce) {
  auto comms = ThreadGroup(2, 5s);
  ASSERT_TRUE(comms[0] && comms[1]);
  comms[0]->Abort();
  std::vector<float> data(8, 1.0f);
  Tensor t(data.data(), DType::kF32, {8});
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(comms[0]->Barrier(), StatusIs(absl::StatusCode::kUnavailable));  // Gloo's own algorithm
  EXPECT_THAT(comms[0]->Recv(t, 1), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);
}

TEST(StagedCommunicatorTest, AbortReachesTheHostCommunicator) {
  auto comms = ThreadGroup(2, 5s);
  ASSERT_TRUE(comms[0] && comms[1]);
  BackendOptions options;
  options.num_threads = 1;
  auto backend = CreateBackend(options);
  ASSERT_OK(backend.status());
  StagedCommunicator staged(std::move(comms[0]), **backend);
  std::vector<float> data(9, 0.0f);
  Tensor t(data.data(), DType::kF32, {9});
  EXPECT_THAT(AbortedWhileWaiting(staged, [&] { return staged.Recv(t, 1); }),
              StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace tessera
