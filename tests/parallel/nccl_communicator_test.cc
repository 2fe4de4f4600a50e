// NcclCommunicator. NcclCommunicatorTest runs everywhere: without a GPU, Create fails with a Status naming
// the cause instead of crashing. NcclCommunicatorGpuTest (label gpu) skips, saying why, without enough GPUs;
// with one it runs a single-rank group; with two, ranks 0 and 1 are threads on devices 0 and 1 (forking after
// CUDA is initialized is not allowed) meeting through a store directory: every operation's result, and that a
// rank that never joins an all-reduce makes its peer's call fail with DEADLINE_EXCEEDED instead of hanging.
#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <thread>
#include <vector>

#include "kernels/cuda/cuda_resources.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/util/status_matchers.h"
#include "tests/util/test_env.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string FreshStoreDir() { return ::tessera::testing::FreshTempDir("nccl_store"); }

NcclOptions Options(const std::string& store, int rank, int size, std::chrono::milliseconds timeout = 30s) {
  NcclOptions o;
  o.group = "test";
  o.rank = rank;
  o.size = size;
  o.device = rank;
  o.store_dir = store;
  o.timeout = timeout;
  return o;
}

// The number of usable CUDA devices; 0 with CUDA's reason in `why` when there are none.
int GpuCount(std::string& why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    why = cudaGetErrorString(e);
    return 0;
  }
  why = "found " + std::to_string(count);
  return count;
}

#define REQUIRE_GPUS(n)                                                                      \
  do {                                                                                       \
    std::string why;                                                                         \
    if (GpuCount(why) < (n)) GTEST_SKIP() << "skipped, needs " << (n) << " GPU(s), " << why; \
  } while (0)

// A device tensor of `device` holding `host` as `dtype` (T: float for F32, uint16_t bits for BF16).
struct DeviceTensor {
  DeviceBuffer buffer;
  Tensor tensor;
};
template <typename T>
DeviceTensor Upload(int device, const std::vector<T>& host, DType dtype) {
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  auto buffer = CudaAllocate(static_cast<int64_t>(host.size() * sizeof(T)));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  DeviceTensor t{std::move(buffer).value(), Tensor()};
  t.tensor = t.buffer.View(dtype, {static_cast<int64_t>(host.size())});
  EXPECT_EQ(cudaMemcpy(t.tensor.data(), host.data(), t.tensor.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
  return t;
}
template <typename T>
std::vector<T> Download(int device, const Tensor& t) {
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  std::vector<T> host(t.nbytes() / sizeof(T));
  EXPECT_EQ(cudaMemcpy(host.data(), t.data(), t.nbytes(), cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

// Runs body(rank) on `size` threads and joins them.
void RunRanks(int size, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) threads.emplace_back(body, rank);
  for (std::thread& t : threads) t.join();
}

TEST(NcclCommunicatorTest, CreateFailsWithAStatusNamingTheCauseWhenTheDeviceIsUnusable) {
  NcclOptions options = Options("", 0, 1);
  options.device = 4096;  // no machine has it; without a GPU even counting devices fails
  auto comm = NcclCommunicator::Create(options);
  std::printf("Create on device 4096 says: %s\n", comm.status().ToString().c_str());
  EXPECT_THAT(comm.status(),
              StatusIs(AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kFailedPrecondition),
                       HasSubstr("rank 0 of group 'test' (device 4096)")));
  std::string why;
  if (GpuCount(why) == 0) {
    EXPECT_THAT(comm.status(), StatusIs(absl::StatusCode::kUnavailable,
                                        HasSubstr("no usable GPU: cudaGetDeviceCount failed: ")));
  }
}

TEST(NcclCommunicatorTest, RejectsARankOutsideTheGroup) {
  EXPECT_THAT(NcclCommunicator::Create(Options(FreshStoreDir(), 2, 2)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank=2 is not in [0, size=2)")));
}

TEST(NcclCommunicatorTest, RejectsAGroupOfSeveralRanksWithoutAStore) {
  EXPECT_THAT(NcclCommunicator::Create(Options("", 0, 2)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exactly one rendezvous store")));
}

TEST(NcclCommunicatorGpuTest, ASingleRankGroupLeavesDataAsItIs) {
  REQUIRE_GPUS(1);
  ASSERT_OK_AND_ASSIGN(auto comm, NcclCommunicator::Create(Options("", 0, 1)));
  std::mt19937 rng(testing::FreshSeed());
  const int n = 1001;
  std::vector<float> data = testing::RandomFloats(rng, n);
  DeviceTensor t = Upload(0, data, DType::kF32);
  EXPECT_OK(comm->AllReduceSum(t.tensor));
  EXPECT_EQ(Download<float>(0, t.tensor), data);
  std::vector<uint16_t> bf16 = testing::RandomBf16(rng, n);
  DeviceTensor b = Upload(0, bf16, DType::kBF16);
  EXPECT_OK(comm->AllReduceSum(b.tensor));
  EXPECT_EQ(Download<uint16_t>(0, b.tensor), bf16);
  DeviceTensor out = Upload(0, testing::Poisoned(n), DType::kF32);
  EXPECT_OK(comm->AllGather(t.tensor, out.tensor));
  EXPECT_EQ(Download<float>(0, out.tensor), data);
  EXPECT_OK(comm->Broadcast(t.tensor, 0));
  EXPECT_EQ(Download<float>(0, t.tensor), data);
  EXPECT_OK(comm->Barrier());
}

TEST(NcclCommunicatorGpuTest, TwoRanksAllReduceAllGatherAndBroadcast) {
  REQUIRE_GPUS(2);
  const std::string store = FreshStoreDir();
  const uint32_t seed = testing::FreshSeed();
  const int n = 1001;
  // Both ranks draw the inputs of both from the same seed, so each knows the expected result.
  std::mt19937 rng(seed);
  const std::vector<std::vector<float>> f32 = {testing::RandomFloats(rng, n), testing::RandomFloats(rng, n)};
  const std::vector<std::vector<uint16_t>> bf16 = {testing::RandomBf16(rng, n), testing::RandomBf16(rng, n)};
  RunRanks(2, [&](int rank) {
    SCOPED_TRACE("rank " + std::to_string(rank) + ", seed " + std::to_string(seed));
    auto comm = NcclCommunicator::Create(Options(store, rank, 2));
    ASSERT_TRUE(comm.ok()) << comm.status();
    // All-reduce, F32 (a two-term sum is exact up to rounding) and BF16 (within one bf16 rounding).
    DeviceTensor a = Upload(rank, f32[rank], DType::kF32);
    ASSERT_OK((*comm)->AllReduceSum(a.tensor));
    std::vector<float> sum = Download<float>(rank, a.tensor);
    for (int i = 0; i < n; ++i)
      ASSERT_NEAR(sum[i], f32[0][i] + f32[1][i], 1e-6f * (1 + std::fabs(sum[i]))) << i;
    DeviceTensor b = Upload(rank, bf16[rank], DType::kBF16);
    ASSERT_OK((*comm)->AllReduceSum(b.tensor));
    std::vector<uint16_t> bsum = Download<uint16_t>(rank, b.tensor);
    for (int i = 0; i < n; ++i) {
      const float want = Bf16ToF32(bf16[0][i]) + Bf16ToF32(bf16[1][i]);
      ASSERT_NEAR(Bf16ToF32(bsum[i]), want, 1e-2f * (1 + std::fabs(want))) << i;
    }
    // All-gather: rank order, every element written.
    DeviceTensor in = Upload(rank, f32[rank], DType::kF32);
    DeviceTensor out = Upload(rank, testing::Poisoned(2 * n), DType::kF32);
    ASSERT_OK((*comm)->AllGather(in.tensor, out.tensor));
    std::vector<float> gathered = Download<float>(rank, out.tensor);
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(std::vector<float>(gathered.begin() + r * n, gathered.begin() + (r + 1) * n), f32[r]);
    }
    // Broadcast from rank 1.
    DeviceTensor c = Upload(rank, f32[rank], DType::kF32);
    ASSERT_OK((*comm)->Broadcast(c.tensor, 1));
    EXPECT_EQ(Download<float>(rank, c.tensor), f32[1]);
    EXPECT_OK((*comm)->Barrier());
  });
}

TEST(NcclCommunicatorGpuTest, SendAndRecvPassHiddenStatesInOrder) {
  REQUIRE_GPUS(2);
  const std::string store = FreshStoreDir();
  const int n = 513;
  RunRanks(2, [&](int rank) {
    auto comm = NcclCommunicator::Create(Options(store, rank, 2));
    ASSERT_TRUE(comm.ok()) << comm.status();
    for (int step = 0; step < 5; ++step) {  // several micro-batches along 0 -> 1
      std::vector<float> hidden(n, std::numeric_limits<float>::quiet_NaN());
      if (rank == 0) {
        for (int i = 0; i < n; ++i) hidden[i] = step * 1000.0f + i;
      }
      DeviceTensor t = Upload(rank, hidden, DType::kF32);
      if (rank == 0) {
        ASSERT_OK((*comm)->Send(t.tensor, 1));
      } else {
        ASSERT_OK((*comm)->Recv(t.tensor, 0));
        std::vector<float> got = Download<float>(rank, t.tensor);
        for (int i = 0; i < n; ++i) ASSERT_EQ(got[i], step * 1000.0f + i) << "step " << step;
      }
    }
  });
}

TEST(NcclCommunicatorGpuTest, ARankThatNeverJoinsFailsThePeersAllReduceWithinTheTimeout) {
  REQUIRE_GPUS(2);
  const std::string store = FreshStoreDir();
  const auto timeout = 1500ms;
  std::atomic<bool> rank0_done{false};
  RunRanks(2, [&](int rank) {
    auto comm = NcclCommunicator::Create(Options(store, rank, 2, timeout));
    ASSERT_TRUE(comm.ok()) << comm.status();
    ASSERT_OK((*comm)->Barrier());
    if (rank == 1) {  // stays alive but never calls the all-reduce
      const auto give_up = std::chrono::steady_clock::now() + timeout + 60s;  // if rank 0 failed early
      while (!rank0_done && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(10ms);
      return;
    }
    DeviceTensor t = Upload(0, std::vector<float>(64, 1.0f), DType::kF32);
    const auto start = std::chrono::steady_clock::now();
    const absl::Status first = (*comm)->AllReduceSum(t.tensor);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    rank0_done = true;
    EXPECT_THAT(first, StatusIs(absl::StatusCode::kDeadlineExceeded,
                                AllOf(HasSubstr("all-reduce"), HasSubstr("rank 0 of group 'test'"))));
    EXPECT_GE(elapsed, timeout);
    EXPECT_LT(elapsed, timeout + 20s);
    EXPECT_THAT((*comm)->Barrier(), StatusIs(absl::StatusCode::kDeadlineExceeded));  // broken from now on
  });
}

// Stream-ordered (the CUDA backend's stream): collectives return at once, run in stream order, and can be
// captured into a CUDA graph that replays them; WatchStep / StepStatus report a finished step as OK.
TEST(NcclCommunicatorGpuTest, AStreamOrderedGroupEnqueuesOnTheGivenStreamAndIsCapturedInAGraph) {
  REQUIRE_GPUS(1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_OK_AND_ASSIGN(CudaStream stream, CudaStream::Create());
  NcclOptions options = Options("", 0, 1);
  options.stream = stream.get();
  ASSERT_OK_AND_ASSIGN(auto comm, NcclCommunicator::Create(options));
  EXPECT_TRUE(comm->stream_ordered());
  std::mt19937 rng(testing::FreshSeed());
  const int n = 4096;
  std::vector<float> data = testing::RandomFloats(rng, n);
  DeviceTensor t = Upload(0, data, DType::kF32);
  DeviceTensor gathered = Upload(0, testing::Poisoned(n), DType::kF32);
  EXPECT_OK(comm->AllReduceSum(t.tensor));
  EXPECT_OK(comm->Gather(t.tensor, gathered.tensor, 0));
  comm->WatchStep();
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  EXPECT_OK(comm->StepStatus());
  EXPECT_EQ(Download<float>(0, gathered.tensor), data);

  // Captured: the graph holds the collectives; each replay runs them on the inputs of the moment.
  ASSERT_EQ(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_OK(comm->AllReduceSum(t.tensor));
  EXPECT_OK(comm->Gather(t.tensor, gathered.tensor, 0));
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream.get(), &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    std::vector<float> next = testing::RandomFloats(rng, n);
    ASSERT_EQ(cudaMemcpy(t.tensor.data(), next.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, stream.get()), cudaSuccess);
    comm->WatchStep();
    ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
    EXPECT_OK(comm->StepStatus());
    EXPECT_EQ(Download<float>(0, gathered.tensor), next) << "replay " << replay;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// Stream-ordered, two GPUs: a rank that never joins an all-reduce leaves its peer's kernel waiting; the
// watchdog aborts the communicator after the timeout, the stream drains, and StepStatus says why.
TEST(NcclCommunicatorGpuTest, TheWatchdogEndsAStreamOrderedStepAPeerNeverJoins) {
  REQUIRE_GPUS(2);
  const std::string store = FreshStoreDir();
  const auto timeout = 1500ms;
  std::atomic<bool> rank0_done{false};
  RunRanks(2, [&](int rank) {
    ASSERT_EQ(cudaSetDevice(rank), cudaSuccess);
    auto stream = CudaStream::Create();
    ASSERT_TRUE(stream.ok()) << stream.status();
    NcclOptions options = Options(store, rank, 2, timeout);
    options.stream = stream->get();
    auto comm = NcclCommunicator::Create(options);
    ASSERT_TRUE(comm.ok()) << comm.status();
    ASSERT_OK((*comm)->Barrier());
    if (rank == 1) {
      const auto give_up = std::chrono::steady_clock::now() + timeout + 60s;
      while (!rank0_done && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(10ms);
      return;
    }
    DeviceTensor t = Upload(0, std::vector<float>(1 << 20, 1.0f), DType::kF32);  // NCCL, not the custom kernel
    const auto start = std::chrono::steady_clock::now();
    EXPECT_OK((*comm)->AllReduceSum(t.tensor));  // enqueued
    (*comm)->WatchStep();
    EXPECT_EQ(cudaStreamSynchronize(stream->get()), cudaSuccess);  // returns once the watchdog aborted
    const auto elapsed = std::chrono::steady_clock::now() - start;
    rank0_done = true;
    EXPECT_THAT((*comm)->StepStatus(), StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("rank 0 of group 'test'")));
    EXPECT_GE(elapsed, timeout);
    EXPECT_LT(elapsed, timeout + 20s);
  });
}

}  // namespace
}  // namespace tessera
