#include "parallel/parallel_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

const ShardedShape kLlama8B{
    .num_layers = 32, .num_heads = 32, .num_kv_heads = 8, .intermediate_size = 14336, .vocab_size = 128256};
const ShardedShape kLlama70B{
    .num_layers = 80, .num_heads = 64, .num_kv_heads = 8, .intermediate_size = 28672, .vocab_size = 128256};
const ShardedShape kTiny{
    .num_layers = 4, .num_heads = 4, .num_kv_heads = 2, .intermediate_size = 384, .vocab_size = 128256};
const ShardedShape kAwkward{
    .num_layers = 3, .num_heads = 6, .num_kv_heads = 2, .intermediate_size = 336, .vocab_size = 1001};

// Checks that `ranges(i)` for i in [0, n) tile [0, total) in order.
template <typename F>
void ExpectTiles(int n, int64_t total, F ranges) {
  int64_t next = 0;
  for (int i = 0; i < n; ++i) {
    Range r = ranges(i);
    EXPECT_EQ(r.begin, next) << "piece " << i;
    EXPECT_GE(r.size(), 0) << "piece " << i;
    next = r.end;
  }
  EXPECT_EQ(next, total);
}

TEST(ParallelConfigTest, EveryValidSplitTilesLayersHeadsColumnsAndVocabulary) {
  struct Case {
    ShardedShape shape;
    int tp, pp;
  };
  std::vector<Case> cases;
  for (const ShardedShape& shape : {kLlama8B, kLlama70B, kTiny, kAwkward}) {
    for (int tp : {1, 2, 4, 8, 16}) {
      for (int pp : {1, 2, 3, 4, 5, 8}) cases.push_back({shape, tp, pp});
    }
  }
  int valid = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "heads=" << c.shape.num_heads << " layers=" << c.shape.num_layers
                                      << " tp=" << c.tp << " pp=" << c.pp);
    auto config = ParallelConfig::Create(c.shape, c.tp, c.pp);
    bool expect_ok = c.shape.num_heads % c.tp == 0 &&
                     (c.shape.num_kv_heads % c.tp == 0 || c.tp % c.shape.num_kv_heads == 0) &&
                     c.shape.intermediate_size % c.tp == 0 && c.pp <= c.shape.num_layers;
    ASSERT_EQ(config.ok(), expect_ok) << config.status();
    if (!config.ok()) continue;
    ++valid;
    const ParallelConfig& p = *config;
    EXPECT_EQ(p.world_size(), c.tp * c.pp);
    for (int rank = 0; rank < p.world_size(); ++rank) EXPECT_EQ(p.Rank(p.PpRank(rank), p.TpRank(rank)), rank);
    EXPECT_EQ(p.output_rank(), (c.pp - 1) * c.tp);
    ExpectTiles(c.pp, c.shape.num_layers, [&](int s) { return p.StageLayers(s); });
    for (int s = 0; s < c.pp; ++s) {
      EXPECT_GE(p.StageLayers(s).size(), c.shape.num_layers / c.pp);
      EXPECT_LE(p.StageLayers(s).size(), c.shape.num_layers / c.pp + 1);
    }
    ExpectTiles(c.tp, c.shape.num_heads, [&](int t) { return p.QueryHeads(t); });
    ExpectTiles(c.tp, c.shape.intermediate_size, [&](int t) { return p.IntermediateShard(t); });
    ExpectTiles(c.tp, c.shape.vocab_size, [&](int t) { return p.VocabShard(t); });
    if (c.tp <= c.shape.num_kv_heads) {
      ExpectTiles(c.tp, c.shape.num_kv_heads, [&](int t) { return p.KvHeads(t); });
    }
    // Every rank's query heads use only its own KV heads (GQA groups stay whole on a rank).
    const int group = c.shape.num_heads / c.shape.num_kv_heads;
    for (int t = 0; t < c.tp; ++t) {
      Range q = p.QueryHeads(t), kv = p.KvHeads(t);
      EXPECT_GE(q.begin / group, kv.begin);
      EXPECT_LE((q.end - 1) / group, kv.end - 1);
    }
  }
  EXPECT_GT(valid, 40);
}

TEST(ParallelConfigTest, ReplicatesKvHeadsWhenTpExceedsThem) {
  ASSERT_OK_AND_ASSIGN(ParallelConfig p, ParallelConfig::Create(kLlama70B, 16, 1));
  EXPECT_EQ(p.KvHeads(0), (Range{0, 1}));
  EXPECT_EQ(p.KvHeads(1), (Range{0, 1}));
  EXPECT_EQ(p.KvHeads(2), (Range{1, 2}));
  EXPECT_EQ(p.KvHeads(15), (Range{7, 8}));
  EXPECT_EQ(p.QueryHeads(15), (Range{60, 64}));
}

TEST(ParallelConfigTest, GivesLeftoverLayersToTheStagesBeforeTheLast) {
  ASSERT_OK_AND_ASSIGN(ParallelConfig p, ParallelConfig::Create(kLlama70B, 1, 3));  // 80 = 27 + 27 + 26
  EXPECT_EQ(p.StageLayers(0), (Range{0, 27}));
  EXPECT_EQ(p.StageLayers(1), (Range{27, 54}));
  EXPECT_EQ(p.StageLayers(2), (Range{54, 80}));
  EXPECT_EQ(p.ToString(), "tp=1 pp=3 layers=[0,27)[27,54)[54,80)");
}

TEST(ParallelConfigTest, TakesUnevenStageSizes) {
  ASSERT_OK_AND_ASSIGN(ParallelConfig p, ParallelConfig::Create(kTiny, 1, 2, {1, 3}));
  EXPECT_EQ(p.StageLayers(0), (Range{0, 1}));
  EXPECT_EQ(p.StageLayers(1), (Range{1, 4}));
}

TEST(ParallelConfigTest, SplitsAnAwkwardVocabularyWithTheRemainderLast) {
  ASSERT_OK_AND_ASSIGN(ParallelConfig p, ParallelConfig::Create(kAwkward, 2, 1));
  EXPECT_EQ(p.VocabShard(0), (Range{0, 501}));
  EXPECT_EQ(p.VocabShard(1), (Range{501, 1001}));
}

TEST(ParallelConfigTest, RejectsImpossibleSplitsNamingTheNumbers) {
  ShardedShape nine = kTiny;
  nine.num_heads = 9;
  nine.num_kv_heads = 3;
  EXPECT_THAT(ParallelConfig::Create(nine, 2, 1),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("num_attention_heads=9 is not divisible by tp=2")));
  EXPECT_THAT(
      ParallelConfig::Create(kTiny, 1, 5),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("pp=5 is larger than num_hidden_layers=4")));
  EXPECT_THAT(ParallelConfig::Create(kTiny, 1, 2, {1, 2}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sums to 3 but num_hidden_layers=4")));
  EXPECT_THAT(ParallelConfig::Create(kTiny, 1, 2, {4}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("has 1 entries (4) but pp=2")));
  EXPECT_THAT(ParallelConfig::Create(kTiny, 1, 2, {0, 4}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least one layer")));
  EXPECT_THAT(ParallelConfig::Create(kAwkward, 4, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tp=4")));
  EXPECT_THAT(ParallelConfig::Create(kTiny, 0, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tp=0")));
  ShardedShape odd_mlp = kTiny;
  odd_mlp.intermediate_size = 383;
  EXPECT_THAT(ParallelConfig::Create(odd_mlp, 2, 1),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("intermediate_size=383 is not divisible by tp=2")));
}

TEST(ParallelConfigTest, GroupNamesJoinTheRanksOfAStageAndOfAPipeline) {
  ASSERT_OK_AND_ASSIGN(ParallelConfig p, ParallelConfig::Create(kTiny, 2, 2));
  // rank = pp_rank * tp + tp_rank: ranks 0, 1 are stage 0; 2, 3 stage 1.
  EXPECT_EQ(p.TpGroupName(0), "tp0");
  EXPECT_EQ(p.TpGroupName(1), "tp0");
  EXPECT_EQ(p.TpGroupName(3), "tp1");
  EXPECT_EQ(p.PpGroupName(0), "pp0");
  EXPECT_EQ(p.PpGroupName(2), "pp0");
  EXPECT_EQ(p.PpGroupName(3), "pp1");
}

}  // namespace
}  // namespace tessera
