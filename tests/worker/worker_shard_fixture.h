// The fixture of the WorkerShard tests: a tiny checkpoint in a temporary directory, shards set up the way the
// coordinator sets them up, a fake coordinator that writes steps as deltas (handing out KV blocks), and the
// greedy tokens of the ModelRunner run directly, to compare with.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "tests/util/status_matchers.h"
#include "tests/util/tiny_model.h"
#include "worker/checkpoint/make_model.h"
#include "worker/worker_shard.h"

namespace tessera::worker_shard_test {

namespace cv1 = control::v1;

inline constexpr uint64_t kEpoch = 7;
inline constexpr int kNumBlocks = 32;
inline const std::vector<int32_t> kPromptA = {128000, 9906, 11,  1917, 0,   77,  3000, 12,  5,
                                              9,      100,  101, 102,  103, 104, 105,  106, 2};
inline const std::vector<int32_t> kPromptB = {128000, 40, 1093, 264, 8};

inline cv1::CoordinatorMessage Message(uint64_t epoch = kEpoch) {
  cv1::CoordinatorMessage m;
  m.set_epoch(epoch);
  return m;
}

// The single reply of `replies`, which must be an Ack of `field`.
inline void ExpectAck(const std::vector<cv1::WorkerMessage>& replies, int field) {
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].epoch(), kEpoch);
  ASSERT_TRUE(replies[0].has_ack()) << replies[0].DebugString();
  EXPECT_EQ(replies[0].ack().message(), field);
}

// The single reply of `replies`, which must be a WorkerError.
inline cv1::WorkerError ErrorOf(const std::vector<cv1::WorkerMessage>& replies) {
  EXPECT_EQ(replies.size(), 1u);
  if (replies.size() != 1 || !replies[0].has_error()) {
    ADD_FAILURE() << "expected one WorkerError, got " << replies.size() << " replies"
                  << (replies.empty() ? "" : ": " + replies[0].DebugString());
    return {};
  }
  return replies[0].error();
}

// The coordinator's part: tracks what each worker sequence holds, hands out KV blocks and writes steps.
class FakeCoordinator {
 public:
  FakeCoordinator() : blocks_(kNumBlocks) {}

  void Add(cv1::Step& step, uint64_t id, int num_prompt_tokens) {
    cv1::NewSequence* n = step.add_new_sequences();
    n->set_seq_id(id);
    n->set_num_prompt_tokens(num_prompt_tokens);
    n->mutable_sampling()->set_top_p(1.0f);  // greedy (temperature 0)
  }
  // Schedules `tokens` of sequence `id`, with the blocks they need.
  void Schedule(cv1::Step& step, uint64_t id, const std::vector<int32_t>& tokens, bool sample) {
    cv1::ScheduledSequence* s = step.add_scheduled();
    s->set_seq_id(id);
    s->mutable_tokens()->Add(tokens.begin(), tokens.end());
    s->set_sample(sample);
    std::vector<int32_t>& table = tables_[id];
    const size_t before = table.size();
    lengths_[id] += static_cast<int64_t>(tokens.size());
    EXPECT_OK(blocks_.Cover(lengths_[id], table));
    s->mutable_new_block_ids()->Add(table.begin() + static_cast<int64_t>(before), table.end());
  }
  void Finish(cv1::Step& step, uint64_t id) {
    step.add_finished(id);
    blocks_.Free(tables_[id]);
    tables_.erase(id);
    lengths_.erase(id);
  }
  cv1::CoordinatorMessage Send(cv1::Step& step, uint64_t epoch = kEpoch) {
    step.set_step_id(++step_id_);
    cv1::CoordinatorMessage m = Message(epoch);
    m.set_step(step.SerializeAsString());
    return m;
  }

 private:
  BlockAllocator blocks_;
  std::map<uint64_t, std::vector<int32_t>> tables_;
  std::map<uint64_t, int64_t> lengths_;
  uint64_t step_id_ = 0;
};

class WorkerShardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new std::string(::tessera::testing::MakeTinyModel("worker_shard_test", 5)); }
  static void TearDownTestSuite() {
    ::tessera::testing::RemoveTinyModel(*dir_);
    delete dir_;
  }

  static std::unique_ptr<WorkerShard> MakeShard(int rank = 0, int world_size = 1) {
    WorkerShardOptions options;
    options.rank = rank;
    options.world_size = world_size;
    options.epoch = kEpoch;
    return std::make_unique<WorkerShard>(options);
  }

  static cv1::CoordinatorMessage Assign(int rank = 0, int tp = 1, int pp = 1) {
    cv1::CoordinatorMessage m = Message();
    cv1::AssignShard* a = m.mutable_assign_shard();
    a->set_model_dir(*dir_);
    a->set_rank(rank);
    a->set_tp_size(tp);
    a->set_pp_size(pp);
    a->set_device("cpu");
    a->set_num_threads(1);
    a->set_max_num_tokens(64);
    a->set_max_num_seqs(8);
    a->set_prefill_precision("exact");
    return m;
  }

  // assign_shard .. allocate_kv_cache, each acked.
  static void SetUpShard(WorkerShard& shard) {
    ASSERT_NO_FATAL_FAILURE(ExpectAck(shard.Handle(Assign()), cv1::CoordinatorMessage::kAssignShard));
    cv1::CoordinatorMessage init = Message();
    init.mutable_init_comm()->set_group_prefix("epoch7");  // world 1: no store needed
    ASSERT_NO_FATAL_FAILURE(ExpectAck(shard.Handle(init), cv1::CoordinatorMessage::kInitComm));
    cv1::CoordinatorMessage load = Message();
    load.mutable_load_weights();
    ASSERT_NO_FATAL_FAILURE(ExpectAck(shard.Handle(load), cv1::CoordinatorMessage::kLoadWeights));
    cv1::CoordinatorMessage allocate = Message();
    allocate.mutable_allocate_kv_cache()->set_num_blocks(kNumBlocks);
    ASSERT_NO_FATAL_FAILURE(ExpectAck(shard.Handle(allocate), cv1::CoordinatorMessage::kAllocateKvCache));
  }

  // Greedy tokens of `prompts` run together through the ModelRunner directly, all starting in the first step;
  // prompt i takes part in the first steps[i] steps.
  static std::vector<std::vector<int32_t>> Direct(const std::vector<std::vector<int32_t>>& prompts,
                                                  const std::vector<int>& steps) {
    auto checkpoint = Checkpoint::Open(*dir_);
    EXPECT_OK(checkpoint);
    auto backend = CpuBackend::Create({.num_threads = 1, .linear = {}});
    EXPECT_OK(backend);
    ModelRunnerOptions options;
    options.model.max_num_tokens = 64;
    options.model.max_num_seqs = 8;
    auto runner = ModelRunner::Create(*checkpoint, **backend, options);
    EXPECT_OK(runner);
    EXPECT_OK((*runner)->AllocateKvCache(kNumBlocks));
    BlockAllocator blocks(kNumBlocks);
    std::vector<Sequence> seqs(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      seqs[i].tokens = prompts[i];
      seqs[i].num_prompt_tokens = static_cast<int>(prompts[i].size());
    }
    for (int step = 0; step < *std::max_element(steps.begin(), steps.end()); ++step) {
      std::vector<Sequence*> batch;
      for (size_t i = 0; i < seqs.size(); ++i) {
        if (step < steps[i]) batch.push_back(&seqs[i]);
      }
      for (Sequence* s : batch) {
        EXPECT_OK(blocks.Cover(static_cast<int64_t>(s->tokens.size()), s->block_table));
      }
      auto logits = (*runner)->Forward(batch);
      EXPECT_OK(logits);
      EXPECT_OK((*runner)->SampleAndAppend(*logits, batch));
    }
    std::vector<std::vector<int32_t>> generated;
    for (const Sequence& s : seqs)
      generated.emplace_back(s.tokens.begin() + s.num_prompt_tokens, s.tokens.end());
    return generated;
  }

  // The tokens of the step result in `replies`.
  static std::vector<int32_t> Tokens(const std::vector<cv1::WorkerMessage>& replies, uint64_t step_id) {
    EXPECT_EQ(replies.size(), 1u);
    if (replies.size() != 1 || !replies[0].has_step_result()) {
      ADD_FAILURE() << "expected a StepResult" << (replies.empty() ? "" : ": " + replies[0].DebugString());
      return {};
    }
    EXPECT_EQ(replies[0].step_result().step_id(), step_id);
    EXPECT_GT(replies[0].step_result().worker_seconds(), 0.0);
    return {replies[0].step_result().tokens().begin(), replies[0].step_result().tokens().end()};
  }

  static inline std::string* dir_ = nullptr;
};

}  // namespace tessera::worker_shard_test
