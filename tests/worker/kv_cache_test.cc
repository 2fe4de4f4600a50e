#include "worker/kv_cache.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

TEST(BlockAllocatorTest, HandsOutEveryBlockOnceAndTakesThemBack) {
  BlockAllocator allocator(5);
  std::vector<int32_t> a, b;
  ASSERT_OK(allocator.Allocate(3, a));
  ASSERT_OK(allocator.Allocate(2, b));
  EXPECT_EQ(allocator.num_free(), 0);
  std::vector<int32_t> all = a;
  all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  allocator.Free(a);
  EXPECT_EQ(allocator.num_free(), 3);
}

TEST(BlockAllocatorTest, RefusesMoreBlocksThanAreFreeAndTakesNone) {
  BlockAllocator allocator(2);
  std::vector<int32_t> blocks;
  EXPECT_THAT(allocator.Allocate(3, blocks), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("3 blocks")));
  EXPECT_TRUE(blocks.empty());
  EXPECT_EQ(allocator.num_free(), 2);
}

TEST(KvCacheTest, LaysOutOnePoolPerLayerForKeysAndValues) {
  ASSERT_OK_AND_ASSIGN(auto backend, CpuBackend::Create({.num_threads = 1, .linear = {}}));
  KvCacheShape shape{.num_layers = 3, .num_blocks = 7, .block_size = 16, .num_kv_heads = 2, .head_dim = 8};
  ASSERT_OK_AND_ASSIGN(KvCache cache, KvCache::Allocate(*backend, shape));
  EXPECT_EQ(cache.key(2).dim(0), 7);
  EXPECT_EQ(cache.value(0).dim(3), 8);
  EXPECT_NE(cache.key(1).data(), cache.value(1).data());
  EXPECT_EQ(shape.BytesPerBlock(DType::kF32), 2 * 3 * 16 * 2 * 8 * 4);
}

TEST(KvCacheTest, RejectsNonPositiveShape) {
  ASSERT_OK_AND_ASSIGN(auto backend, CpuBackend::Create({.num_threads = 1, .linear = {}}));
  KvCacheShape shape{.num_layers = 3, .num_blocks = 0, .block_size = 16, .num_kv_heads = 2, .head_dim = 8};
  EXPECT_THAT(KvCache::Allocate(*backend, shape), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("blocks=0")));
}

}  // namespace
}  // namespace tessera
