// ThreadPool: every index is visited exactly once, static splits respect alignment, nested regions run, and
// many back-to-back regions complete.
#include "kernels/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace tessera {
namespace {

TEST(ThreadPoolTest, ParallelForCoversEachIndexOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 7, 1000, 100003}) {
      for (int64_t grain : {1, 13, 4096}) {
        std::vector<std::atomic<int>> hits(n);
        pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " grain " << grain;
      }
    }
  }
}

TEST(ThreadPoolTest, StaticSplitIsAlignedAndComplete) {
  ThreadPool pool(3);
  for (int64_t n : {1, 5, 4 * 1001 + 3}) {
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelForStatic(n, 4, [&](int64_t b, int64_t e) {
      EXPECT_EQ(b % 4, 0);
      EXPECT_TRUE(e % 4 == 0 || e == n);
      for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1);
  }
}

TEST(ThreadPoolTest, RunOnAllGivesEveryIndexAndNestsSerially) {
  ThreadPool pool(2);
  std::atomic<int> mask{0};
  std::atomic<int> inner{0};
  pool.RunOnAll([&](int i) {
    mask.fetch_or(1 << i);
    pool.RunOnAll([&](int) { inner.fetch_add(1); });
  });
  EXPECT_EQ(mask.load(), 3);
  EXPECT_EQ(inner.load(), 4);
}

TEST(ThreadPoolTest, ManyShortRegionsComplete) {
  ThreadPool pool(2);
  std::atomic<int64_t> sum{0};
  for (int r = 0; r < 20000; ++r) pool.RunOnAll([&](int i) { sum.fetch_add(i + 1); });
  EXPECT_EQ(sum.load(), 20000 * 3);
}

}  // namespace
}  // namespace tessera
