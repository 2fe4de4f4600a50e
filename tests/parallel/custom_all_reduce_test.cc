// CustomAllReduce, the one-shot all-reduce of the NCCL plugin. CustomAllReduceTest runs everywhere: bad
// options are refused, and without a GPU every rank gets UNAVAILABLE (so all fall back to NCCL).
// CustomAllReduceGpuTest (label gpu) needs a GPU and skips without one, saying so. Its ranks are processes
// forked before this process touches CUDA (CUDA IPC cannot open memory of its own process), on devices 0 and
// 1 when there are two and both on device 0 otherwise; they meet through a store directory and report through
// their exit codes.
#include "parallel/custom_all_reduce.h"

#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "parallel/nccl_communicator.h"
#include "tests/util/status_matchers.h"
#include "tests/util/test_env.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr int kSkip = 77;

CustomAllReduceOptions Options(const std::string& store, int rank, int size, int device) {
  CustomAllReduceOptions o;
  o.group = "test";
  o.rank = rank;
  o.size = size;
  o.device = device;
  o.store_dir = store;
  o.timeout = 20s;
  return o;
}

// In a rank process: report a failed expectation on stderr and fail the rank.
#define RANK_CHECK(cond)                                                           \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::fprintf(stderr, "rank check failed at line %d: %s\n", __LINE__, #cond); \
      return 1;                                                                    \
    }                                                                              \
  } while (0)
#define RANK_OK(expr)                                                                  \
  do {                                                                                 \
    const absl::Status rank_status = (expr);                                           \
    if (!rank_status.ok()) {                                                           \
      std::fprintf(stderr, "line %d: %s\n", __LINE__, rank_status.ToString().c_str()); \
      return 1;                                                                        \
    }                                                                                  \
  } while (0)

// Forks `world` rank processes running `rank_main(rank, device)` and returns their exit codes. A rank returns
// kSkip when this machine has no GPU (or too few for `min_gpus`).
std::vector<int> RunRanks(int world, int min_gpus, const std::function<int(int, int)>& rank_main) {
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    const pid_t pid = fork();
    if (pid == 0) {
      int devices = 0;
      if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < min_gpus) _exit(kSkip);
      _exit(rank_main(rank, devices >= world ? rank : 0));
    }
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  return codes;
}

#define EXPECT_RANKS_PASS(codes)                                              \
  do {                                                                        \
    const std::vector<int> c = (codes);                                       \
    if (c[0] == kSkip) GTEST_SKIP() << "skipped: needs a GPU";                \
    for (size_t r = 0; r < c.size(); ++r) EXPECT_EQ(c[r], 0) << "rank " << r; \
  } while (0)

// Rank r's element i: (r + 1) * ((i % 7) - 3), exact in bf16 and f32, and so are its sums.
float Element(int rank, int64_t i) { return static_cast<float>((rank + 1) * (static_cast<int>(i % 7) - 3)); }

// A device buffer of n elements of `dtype` holding rank's elements times `scale`.
struct RankData {
  void* device = nullptr;
  int64_t n = 0;
  DType dtype = DType::kF32;
  Tensor tensor() { return Tensor(device, dtype, {n}); }
};
bool Fill(RankData& d, int rank) {
  std::vector<float> f(static_cast<size_t>(d.n));
  std::vector<uint16_t> h(static_cast<size_t>(d.n));
  for (int64_t i = 0; i < d.n; ++i) {
    f[static_cast<size_t>(i)] = Element(rank, i);
    h[static_cast<size_t>(i)] = F32ToBf16(Element(rank, i));
  }
  const void* src = d.dtype == DType::kF32 ? static_cast<const void*>(f.data()) : h.data();
  return cudaMemcpy(d.device, src, d.n * DTypeSize(d.dtype), cudaMemcpyHostToDevice) == cudaSuccess;
}
// Whether d holds scale * sum over ranks of Element.
bool Holds(const RankData& d, int world, float scale) {
  std::vector<char> bytes(static_cast<size_t>(d.n * DTypeSize(d.dtype)));
  if (cudaMemcpy(bytes.data(), d.device, bytes.size(), cudaMemcpyDeviceToHost) != cudaSuccess) return false;
  for (int64_t i = 0; i < d.n; ++i) {
    float want = 0;
    for (int r = 0; r < world; ++r) want += Element(r, i);
    want *= scale;
    const float got = d.dtype == DType::kF32 ? reinterpret_cast<const float*>(bytes.data())[i]
                                             : Bf16ToF32(reinterpret_cast<const uint16_t*>(bytes.data())[i]);
    if (got != want) {
      std::fprintf(stderr, "element %lld: got %g, want %g\n", static_cast<long long>(i), got, want);
      return false;
    }
  }
  return true;
}

TEST(CustomAllReduceTest, RejectsBadOptions) {
  EXPECT_THAT(CustomAllReduce::Create(Options("/tmp/x", 2, 2, 0)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank=2")));
  CustomAllReduceOptions odd = Options("/tmp/x", 0, 2, 0);
  odd.max_bytes = 24;
  EXPECT_THAT(CustomAllReduce::Create(odd).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_bytes=24")));
  CustomAllReduceOptions no_store = Options("", 0, 2, 0);
  EXPECT_THAT(CustomAllReduce::Create(no_store).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CustomAllReduce::Create(Options("/tmp/x", 0, 9, 0)).status(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("world size 9 is over 8")));
  EXPECT_THAT(CustomAllReduce::Create(Options("", 0, 1, 0)).status(),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST(CustomAllReduceTest, WithoutAGpuEveryRankIsToldUnavailableSoAllFallBackToNccl) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) GTEST_SKIP() << "this machine has a GPU";
  const std::string store = ::tessera::testing::FreshTempDir("custom_all_reduce_store");
  absl::Status status[2];
  std::thread other([&] { status[1] = CustomAllReduce::Create(Options(store, 1, 2, 0)).status(); });
  status[0] = CustomAllReduce::Create(Options(store, 0, 2, 0)).status();
  other.join();
  for (const absl::Status& s : status) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("failed on rank 0: no usable GPU")));
  }
}

TEST(CustomAllReduceGpuTest, TwoRanksSumF32AndBf16AtEverySizeAndInsideAGraph) {
  const std::string store = ::tessera::testing::FreshTempDir("custom_all_reduce_store");
  EXPECT_RANKS_PASS(RunRanks(2, 1, [&](int rank, int device) {
    auto made = CustomAllReduce::Create(Options(store, rank, 2, device));
    RANK_OK(made.status());
    CustomAllReduce& ar = **made;
    RANK_CHECK(ar.topology().same_host && ar.topology().all_peer_access);
    cudaStream_t stream = nullptr;
    RANK_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
    // Sizes around the grid's split (32 blocks x 512 threads x 16 bytes) and up to the limit.
    for (const DType dtype : {DType::kF32, DType::kBF16}) {
      const int64_t vector = 16 / DTypeSize(dtype);
      for (const int64_t n :
           {vector, 13 * vector, 8192L, 32 * 512 * vector + vector, ar.max_bytes() / DTypeSize(dtype)}) {
        RankData d{nullptr, n, dtype};
        RANK_CHECK(cudaMalloc(&d.device, n * DTypeSize(dtype)) == cudaSuccess);
        RANK_CHECK(Fill(d, rank));
        Tensor t = d.tensor();
        RANK_CHECK(ar.Takes(t));
        RANK_OK(ar.AllReduceSum(t, stream));
        RANK_CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
        RANK_CHECK(Holds(d, 2, 1.0f));
        cudaFree(d.device);
      }
    }
    // Captured once, replayed four times in place: each replay doubles the sum of the two ranks' equal data.
    RankData d{nullptr, 4096, DType::kBF16};
    RANK_CHECK(cudaMalloc(&d.device, d.n * 2) == cudaSuccess);
    RANK_CHECK(Fill(d, rank));
    Tensor t = d.tensor();
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    RANK_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    RANK_OK(ar.AllReduceSum(t, stream));
    RANK_CHECK(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
    RANK_CHECK(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    for (int i = 0; i < 4; ++i) RANK_CHECK(cudaGraphLaunch(exec, stream) == cudaSuccess);
    RANK_CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    RANK_CHECK(Holds(d, 2, 8.0f));  // 3c, then 6c, 12c, 24c = 8 x (c + 2c)
    // Too large, or not whole vectors: not taken (NCCL's).
    RANK_CHECK(!ar.Takes(Tensor(d.device, DType::kBF16, {ar.max_bytes() / 2 + 8})));
    RANK_CHECK(!ar.Takes(Tensor(d.device, DType::kBF16, {7})));
    return 0;
  }));
}

TEST(CustomAllReduceGpuTest, AbortEndsAKernelWaitingForAPeerThatNeverCalls) {
  const std::string store = ::tessera::testing::FreshTempDir("custom_all_reduce_store");
  EXPECT_RANKS_PASS(RunRanks(2, 1, [&](int rank, int device) {
    auto made = CustomAllReduce::Create(Options(store, rank, 2, device));
    RANK_OK(made.status());
    if (rank == 1) {  // joins the group, then never calls
      std::this_thread::sleep_for(2s);
      return 0;
    }
    cudaStream_t stream = nullptr;
    RANK_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
    RankData d{nullptr, 1024, DType::kF32};
    RANK_CHECK(cudaMalloc(&d.device, d.n * 4) == cudaSuccess);
    Tensor t = d.tensor();
    RANK_OK((*made)->AllReduceSum(t, stream));
    std::this_thread::sleep_for(300ms);
    RANK_CHECK(cudaStreamQuery(stream) == cudaErrorNotReady);  // still waiting for rank 1
    const auto start = std::chrono::steady_clock::now();
    (*made)->Abort();
    RANK_CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    RANK_CHECK(std::chrono::steady_clock::now() - start < 5s);
    return 0;
  }));
}

// Through NcclCommunicator: a stream-ordered group of two GPUs takes the custom kernel for small messages and
// NCCL for large ones, with the same sums. NCCL needs one GPU per rank: skips with fewer than two.
TEST(CustomAllReduceGpuTest, AStreamOrderedNcclGroupTakesTheCustomKernelForSmallMessages) {
  const std::string store = ::tessera::testing::FreshTempDir("nccl_store");
  const std::vector<int> codes = RunRanks(2, 2, [&](int rank, int device) {
    RANK_CHECK(cudaSetDevice(device) == cudaSuccess);
    cudaStream_t stream = nullptr;
    RANK_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
    NcclOptions o;
    o.group = "test";
    o.rank = rank;
    o.size = 2;
    o.device = device;
    o.store_dir = store;
    o.timeout = 20s;
    o.stream = stream;
    auto comm = NcclCommunicator::Create(o);
    RANK_OK(comm.status());
    RANK_CHECK((*comm)->custom_all_reduce_off_reason().empty());
    for (const int64_t n : {8192L, 8L << 20}) {  // 16 KiB: custom; 16 MiB: NCCL
      RankData d{nullptr, n, DType::kBF16};
      RANK_CHECK(cudaMalloc(&d.device, n * 2) == cudaSuccess);
      RANK_CHECK(Fill(d, rank));
      Tensor t = d.tensor();
      RANK_OK((*comm)->AllReduceSum(t));
      (*comm)->WatchStep();
      RANK_CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
      RANK_OK((*comm)->StepStatus());
      RANK_CHECK(Holds(d, 2, 1.0f));
    }
    return 0;
  });
  if (codes[0] == kSkip) GTEST_SKIP() << "skipped: needs 2 GPUs";
  for (size_t r = 0; r < codes.size(); ++r) EXPECT_EQ(codes[r], 0) << "rank " << r;
}

}  // namespace
}  // namespace tessera
