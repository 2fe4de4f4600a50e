// The custom all-reduce's selection logic: which groups may use the one-shot kernel, and which messages take
// it.
#include "parallel/all_reduce_choice.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tessera {
namespace {

using ::testing::HasSubstr;

AllReduceTopology NvlinkNode(int world) {
  return {world, /*same_host=*/true, /*all_peer_access=*/true, true};
}

TEST(AllReduceChoiceTest, AGroupOnOneHostWithPeerAccessIsEligible) {
  for (int world = 2; world <= kOneShotMaxWorld; ++world) {
    const OneShotEligibility e = OneShotEligible(NvlinkNode(world));
    EXPECT_TRUE(e.ok) << world;
    EXPECT_EQ(e.reason, "");
  }
}

TEST(AllReduceChoiceTest, EachDisqualificationIsNamed) {
  AllReduceTopology t = NvlinkNode(8);
  t.enabled = false;
  EXPECT_THAT(OneShotEligible(t).reason, HasSubstr("turned off"));
  t = NvlinkNode(1);
  EXPECT_THAT(OneShotEligible(t).reason, HasSubstr("world size 1"));
  t = NvlinkNode(16);
  EXPECT_THAT(OneShotEligible(t).reason, HasSubstr("world size 16 is over 8"));
  t = NvlinkNode(8);
  t.same_host = false;
  EXPECT_THAT(OneShotEligible(t).reason, HasSubstr("more than one host"));
  t = NvlinkNode(8);
  t.all_peer_access = false;
  EXPECT_THAT(OneShotEligible(t).reason, HasSubstr("peer access"));
  for (const AllReduceTopology& bad :
       {AllReduceTopology{8, true, true, false}, AllReduceTopology{8, false, true, true},
        AllReduceTopology{8, true, false, true}, AllReduceTopology{1, true, true, true}}) {
    EXPECT_FALSE(OneShotEligible(bad).ok);
    EXPECT_EQ(ChooseAllReduce(bad, 1024, DType::kBF16, DefaultOneShotMaxBytes(8)), AllReduceAlgorithm::kNccl);
  }
}

TEST(AllReduceChoiceTest, TheDefaultLimitShrinksAsTheGroupGrows) {
  EXPECT_EQ(DefaultOneShotMaxBytes(2), 4 << 20);
  EXPECT_GE(DefaultOneShotMaxBytes(2), DefaultOneShotMaxBytes(4));
  EXPECT_GE(DefaultOneShotMaxBytes(4), DefaultOneShotMaxBytes(8));
  // A 70B decode step at tp 8: batch 1 (16 KiB of bf16 hidden state) and batch 32 (512 KiB) take one-shot,
  // batch 64 (1 MiB) takes NCCL.
  const AllReduceTopology t = NvlinkNode(8);
  const int64_t row = 8192 * 2;
  EXPECT_EQ(ChooseAllReduce(t, row, DType::kBF16, DefaultOneShotMaxBytes(8)), AllReduceAlgorithm::kOneShot);
  EXPECT_EQ(ChooseAllReduce(t, 32 * row, DType::kBF16, DefaultOneShotMaxBytes(8)),
            AllReduceAlgorithm::kOneShot);
  EXPECT_EQ(ChooseAllReduce(t, 64 * row, DType::kBF16, DefaultOneShotMaxBytes(8)), AllReduceAlgorithm::kNccl);
}

TEST(AllReduceChoiceTest, MessagesTakeOneShotOnlyWithinTheLimitInWholeVectorsOfAFloatType) {
  const AllReduceTopology t = NvlinkNode(4);
  const int64_t max = 4096;
  EXPECT_EQ(ChooseAllReduce(t, 16, DType::kF32, max), AllReduceAlgorithm::kOneShot);
  EXPECT_EQ(ChooseAllReduce(t, max, DType::kBF16, max), AllReduceAlgorithm::kOneShot);
  EXPECT_EQ(ChooseAllReduce(t, max + 16, DType::kBF16, max), AllReduceAlgorithm::kNccl);
  EXPECT_EQ(ChooseAllReduce(t, 0, DType::kF32, max), AllReduceAlgorithm::kNccl);
  EXPECT_EQ(ChooseAllReduce(t, 24, DType::kF32, max),
            AllReduceAlgorithm::kNccl);  // not whole 16-byte vectors
  EXPECT_EQ(ChooseAllReduce(t, 64, DType::kF16, max), AllReduceAlgorithm::kNccl);
  EXPECT_EQ(ChooseAllReduce(t, 64, DType::kI32, max), AllReduceAlgorithm::kNccl);
}

}  // namespace
}  // namespace tessera
