// SequenceTable (worker/step_delta.h): a step delta applied and undone, and the malformed steps that
// step_delta_fuzz covers, each refused with INVALID_ARGUMENT naming the culprit and the table left as it was.
#include "worker/step_delta.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

namespace cv1 = control::v1;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr StepLimits kLimits{.vocab_size = 512,
                             .max_context = 100,
                             .num_kv_blocks = 32,
                             .block_size = kKvBlockSize,
                             .max_num_tokens = 64,
                             .max_num_seqs = 4};

cv1::NewSequence* Add(cv1::Step& step, uint64_t id) {
  cv1::NewSequence* n = step.add_new_sequences();
  n->set_seq_id(id);
  return n;
}

cv1::ScheduledSequence* Schedule(cv1::Step& step, uint64_t id, const std::vector<int32_t>& tokens,
                                 const std::vector<int32_t>& blocks) {
  cv1::ScheduledSequence* s = step.add_scheduled();
  s->set_seq_id(id);
  s->mutable_tokens()->Add(tokens.begin(), tokens.end());
  s->mutable_new_block_ids()->Add(blocks.begin(), blocks.end());
  return s;
}

// The forward pass's effect on the batch.
void Compute(SequenceTable& table) {
  for (Sequence* s : table.batch()) s->num_computed_tokens = static_cast<int>(s->tokens.size());
}

class SequenceTableTest : public ::testing::Test {
 protected:
  // Sequence 1: 20 tokens in blocks 3 and 4, computed.
  void SetUp() override {
    cv1::Step step;
    Add(step, 1)->set_num_prompt_tokens(20);
    Schedule(step, 1, std::vector<int32_t>(20, 7), {3, 4});
    ASSERT_OK(table_.Apply(step, kLimits));
    Compute(table_);
  }

  // `bad` is refused with INVALID_ARGUMENT naming `culprit`, and sequence 1 is as SetUp left it.
  void ExpectRefused(const cv1::Step& bad, const std::string& culprit) {
    EXPECT_THAT(table_.Apply(bad, kLimits), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(culprit)));
    ExpectAsSetUp();
  }

  void ExpectAsSetUp() {
    ASSERT_EQ(table_.size(), 1);
    const Sequence& seq = table_.Find(1)->seq;
    EXPECT_EQ(seq.tokens, std::vector<int32_t>(20, 7));
    EXPECT_THAT(seq.block_table, ElementsAre(3, 4));
    EXPECT_EQ(seq.num_computed_tokens, 20);
  }

  SequenceTable table_;
};

TEST_F(SequenceTableTest, AppliesADeltaInTheProtosOrder) {
  cv1::Step step;
  step.add_finished(1);
  Add(step, 2)->mutable_cached_tokens()->Add(5);
  Schedule(step, 2, {6, 7}, {9});
  cv1::BlockCopy* copy = step.add_copies();
  copy->set_src(3);
  copy->set_dst(9);
  ASSERT_OK(table_.Apply(step, kLimits));
  EXPECT_EQ(table_.Find(1), nullptr);
  ASSERT_EQ(table_.batch().size(), 1u);
  EXPECT_THAT(table_.batch()[0]->tokens, ElementsAre(5, 6, 7));
  EXPECT_EQ(table_.batch()[0]->num_computed_tokens, 1);
  EXPECT_THAT(table_.copies(), ElementsAre(std::pair<int32_t, int32_t>(3, 9)));
}

// Found by reading for step_delta_fuzz: WorkerShard's undo after a failed sampling pass truncated the tokens
// but left num_computed_tokens where the forward pass had put it, past the end of the tokens.
TEST_F(SequenceTableTest, UndoAfterTheForwardPassRestoresNumComputedTokens) {
  cv1::Step step;
  Schedule(step, 1, {8}, {});
  ASSERT_OK(table_.Apply(step, kLimits));
  Compute(table_);
  EXPECT_EQ(table_.Find(1)->seq.num_computed_tokens, 21);
  table_.Undo();
  EXPECT_EQ(table_.Find(1)->seq.num_computed_tokens, 20);
  EXPECT_EQ(table_.Find(1)->seq.tokens.size(), 20u);
}

TEST_F(SequenceTableTest, UndoPutsBackFinishedAndForgetsNewSequences) {
  cv1::Step step;
  step.add_finished(1);
  Add(step, 1);  // the same id again: finished first, then new
  Schedule(step, 1, {1}, {0});
  ASSERT_OK(table_.Apply(step, kLimits));
  table_.Undo();
  ExpectAsSetUp();
}

TEST_F(SequenceTableTest, RefusesTokensOutsideTheVocabulary) {
  cv1::Step bad;
  Schedule(bad, 1, {8, 512}, {});
  ExpectRefused(bad, "sequence 1 (row 0 of the step): token id 512 at position 21 is outside the vocabulary");
  bad.Clear();
  Add(bad, 2)->mutable_cached_tokens()->Add(-1);
  ExpectRefused(bad, "new sequence 2: cached token -1 is outside the vocabulary [0, 512)");
  bad.Clear();
  Add(bad, 2)->mutable_prompt_tokens()->Add(600);
  ExpectRefused(bad, "new sequence 2: prompt token 600 is outside the vocabulary [0, 512)");
}

// A block id is checked when it joins the table, needed yet or not: the table never holds one outside the
// cache.
TEST_F(SequenceTableTest, RefusesBlockIdsOutsideTheCache) {
  cv1::Step bad;
  Schedule(bad, 1, {8}, {32});
  ExpectRefused(
      bad, "sequence 1 (row 0 of the step): block id 32 at index 2 of its block table is outside [0, 32)");
  bad.Clear();
  Schedule(bad, 1, {8}, {-1});
  ExpectRefused(bad, "block id -1 at index 2");
  bad.Clear();
  cv1::BlockCopy* copy = bad.add_copies();
  copy->set_src(1);
  copy->set_dst(32);
  ExpectRefused(bad, "block copy 1 -> 32: ids must differ and lie in [0, 32)");
  copy->set_dst(1);
  ExpectRefused(bad, "block copy 1 -> 1");
}

// Found by reading for step_delta_fuzz: a block table could grow without bound (blocks ahead of the tokens
// were only range-checked), one step after another.
TEST_F(SequenceTableTest, RefusesABlockTableLongerThanASequenceCanUse) {
  cv1::Step bad;
  Schedule(bad, 1, {8}, {5, 6, 7, 8, 9, 10, 11});  // 9 blocks; 100 tokens fit in 7
  ExpectRefused(bad, "sequence 1 (row 0 of the step) has a block table of 9 blocks, more than the 7");
}

TEST_F(SequenceTableTest, RefusesMoreTokensThanTheContext) {
  cv1::Step bad;
  Schedule(bad, 1, std::vector<int32_t>(81, 1), {5, 6, 7, 8, 9});
  ExpectRefused(bad, "sequence 1 (row 0 of the step) has 101 tokens, more than max_position_embeddings=100");
  bad.Clear();
  cv1::NewSequence* n = Add(bad, 2);
  for (int i = 0; i < 101; ++i) n->add_cached_tokens(1);
  ExpectRefused(bad, "new sequence 2: 101 cached_tokens, more than max_position_embeddings=100");
}

TEST_F(SequenceTableTest, RefusesAShortBlockTableAndASequenceWithNothingToCompute) {
  cv1::Step bad;
  Schedule(bad, 1, std::vector<int32_t>(13, 1), {});  // 33 tokens in 2 blocks
  ExpectRefused(bad, "sequence 1 (row 0 of the step) has 33 tokens but a block table of 2 blocks (3 needed)");
  bad.Clear();
  Schedule(bad, 1, {}, {});
  ExpectRefused(bad, "sequence 1 (row 0 of the step) has no new token to compute");
}

TEST_F(SequenceTableTest, RefusesDuplicatesAndUnknownSequences) {
  cv1::Step bad;
  bad.add_finished(1);
  bad.add_finished(1);
  ExpectRefused(bad, "finished sequence 1 is unknown");
  bad.Clear();
  Add(bad, 1);
  ExpectRefused(bad, "new sequence 1 already exists");
  bad.Clear();
  Schedule(bad, 1, {1}, {});
  Schedule(bad, 1, {1}, {});
  ExpectRefused(bad, "sequence 1 is scheduled twice");
  bad.Clear();
  Schedule(bad, 7, {1}, {});
  ExpectRefused(bad, "scheduled sequence 7 is unknown");
}

TEST_F(SequenceTableTest, RefusesAStepOverTheStepLimits) {
  cv1::Step bad;
  for (uint64_t id = 2; id < 7; ++id) {
    Add(bad, id);
    Schedule(bad, id, {1}, {static_cast<int32_t>(id)});
  }
  ExpectRefused(bad, "step of 5 tokens in 5 sequences exceeds max_num_tokens=64 / max_num_seqs=4");
}

TEST_F(SequenceTableTest, RefusesBadSamplingFields) {
  cv1::Step bad;
  Add(bad, 2)->mutable_sampling()->set_top_p(1.5f);
  ExpectRefused(bad, "new sequence 2: num_prompt_tokens=0, temperature=0, top_k=0, top_p=1.5");
}

}  // namespace
}  // namespace tessera
