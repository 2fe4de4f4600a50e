// NullBackend: allocations are accounted against the capacity and cost no resident memory, kernels do nothing,
// and the sampler's token is NullToken (checked against values computed independently in Python).
#include "kernels/null/null_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "kernels/backend_factory.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kGiB = int64_t{1} << 30;

// This process's resident memory (VmRSS), bytes.
int64_t ResidentBytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      int64_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
  }
  return -1;
}

TEST(NullBackendTest, ItIsMadeByNameThroughTheFactory) {
  ASSERT_OK_AND_ASSIGN(DeviceKind kind, ParseDeviceKind("null"));
  EXPECT_EQ(kind, DeviceKind::kNull);
  EXPECT_STREQ(DeviceKindName(kind), "null");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Backend> backend, CreateBackend({.device = DeviceKind::kNull}));
  EXPECT_EQ(backend->device(), DeviceKind::kNull);
  EXPECT_EQ(backend->activation_dtype(), DType::kBF16);
  ASSERT_OK_AND_ASSIGN(MemoryInfo memory, backend->Memory());
  EXPECT_EQ(memory.total_bytes, kNullDefaultMemoryBytes);
  EXPECT_EQ(memory.used_bytes, 0);
  EXPECT_THAT(ParseDeviceKind("nul"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cpu, cuda, null")));
  EXPECT_THAT(NullBackend::Create({.memory_bytes = 0}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(NullBackendTest, AllocationsAreAccountedButNotResident) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NullBackend> backend, NullBackend::Create({}));
  const int64_t before = ResidentBytes();
  std::vector<DeviceBuffer> buffers;
  for (int i = 0; i < 4; ++i) {  // 100 GiB: an H200's weights and KV cache
    ASSERT_OK_AND_ASSIGN(DeviceBuffer b, backend->Allocate(25 * kGiB));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
    buffers.push_back(std::move(b));
  }
  EXPECT_EQ(backend->allocated_bytes(), 100 * kGiB);
  EXPECT_LT(ResidentBytes() - before, 16 << 20);
  // Touched pages are real memory (collectives write activations).
  static_cast<char*>(buffers[0].data())[0] = 1;
  static_cast<char*>(buffers[0].data())[25 * kGiB - 1] = 1;
  buffers.pop_back();
  EXPECT_EQ(backend->allocated_bytes(), 75 * kGiB);
}

TEST(NullBackendTest, OverTheCapacityIsResourceExhaustedNamingTheBytes) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NullBackend> backend, NullBackend::Create({.memory_bytes = 10 * kGiB}));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer a, backend->Allocate(6 * kGiB));
  EXPECT_THAT(backend->Allocate(5 * kGiB),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("cannot allocate 5368709120 bytes: 6442450944 of 10737418240 bytes are in use")));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer b, backend->Allocate(4 * kGiB));
  EXPECT_EQ(backend->allocated_bytes(), 10 * kGiB);
}

TEST(NullBackendTest, BuffersMayOutliveTheBackend) {
  DeviceBuffer kept;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<NullBackend> backend, NullBackend::Create({}));
    ASSERT_OK_AND_ASSIGN(kept, backend->Allocate(1 << 20));
  }
  kept = DeviceBuffer();  // frees into the counter the buffer still holds
}

// Values from a Python rendering of NullToken's definition (FNV-1a 64 over the prompt ids' little-endian
// bytes, xor position, times the FNV prime, modulo vocab - vocab / 16).
TEST(NullBackendTest, NullTokenHashesThePromptAndThePosition) {
  const std::vector<int32_t> prompt = {128000, 9906, 1917};
  const std::vector<int32_t> want = {65145, 99436, 13487, 47778};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(NullToken(prompt.data(), 3, 3 + i, 128256), want[i]) << i;
  for (int64_t pos = 0; pos < 1000; ++pos) {
    const int32_t t = NullToken(prompt.data(), 3, pos, 128256);
    EXPECT_GE(t, 0);
    EXPECT_LT(t, 128256 - 128256 / 16);  // never one of Llama 3's special tokens
  }
  EXPECT_NE(NullToken(prompt.data(), 2, 3, 128256), NullToken(prompt.data(), 3, 3, 128256));
}

TEST(NullBackendTest, SampleGivesEachRowItsSequencesNullTokenAndCopiesToTheHostGiveZeros) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<NullBackend> backend, NullBackend::Create({}));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer logits, backend->Allocate(2 * 1000 * 4));
  const std::vector<int32_t> a = {1, 2, 3, 4, 5}, b = {9, 8};
  SamplingRow rows[2];
  rows[0].tokens = a.data();
  rows[0].num_tokens = 5;
  rows[0].num_prompt_tokens = 3;
  rows[0].top_logprobs = 2;
  rows[1].tokens = b.data();
  rows[1].num_tokens = 2;
  rows[1].num_prompt_tokens = 2;
  rows[1].temperature = 1.0f;
  int32_t ids[2] = {-1, -1};
  SampleLogprobs lp[2];
  EXPECT_OK(backend->Sample(logits.View(DType::kF32, {2, 1000}), rows, ids, lp));
  EXPECT_EQ(ids[0], NullToken(a.data(), 3, 5, 1000));
  EXPECT_EQ(ids[1], NullToken(b.data(), 2, 2, 1000));
  EXPECT_EQ(lp[0].token, ids[0]);
  EXPECT_EQ(lp[0].rank, 1);
  std::vector<float> host(4, 3.0f);
  EXPECT_OK(backend->CopyToHost(host.data(), logits.data(), 16));
  EXPECT_EQ(host, std::vector<float>(4, 0.0f));
  EXPECT_OK(backend->Synchronize());
}

}  // namespace
}  // namespace tessera
