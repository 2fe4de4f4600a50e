// WorkerShard on malformed input: every bad message (stale epoch, setup out of order or naming a bad model,
// split or option, malformed or inconsistent steps) is answered by a WorkerError with the right code whose
// message names the rank and the culprit, and a failed step leaves the batch as it was.
#include "kernels/backend_factory.h"
#include "tests/worker/worker_shard_fixture.h"

namespace tessera::worker_shard_test {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST_F(WorkerShardTest, RejectsAMessageOfAnotherEpochAndIgnoresIt) {
  auto shard = MakeShard();
  cv1::CoordinatorMessage stale = Assign();
  stale.set_epoch(kEpoch - 1);
  cv1::WorkerError error = ErrorOf(shard->Handle(stale));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(error.message(), "rank 0: stale epoch 6 (worker is in epoch 7)");
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(Assign()), cv1::CoordinatorMessage::kAssignShard));
}

TEST_F(WorkerShardTest, SetupErrorsNameTheRankAndTheCulprit) {
  auto shard = MakeShard();
  cv1::CoordinatorMessage load = Message();
  load.mutable_load_weights();
  cv1::WorkerError error = ErrorOf(shard->Handle(load));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(error.message(), StartsWith("rank 0: load_weights out of order"));

  cv1::CoordinatorMessage missing = Assign();
  missing.mutable_assign_shard()->set_model_dir(*dir_ + "/nowhere");
  error = ErrorOf(shard->Handle(missing));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(error.message(), AllOf(StartsWith("rank 0: assign_shard: "), HasSubstr("nowhere/config.json")));

  error = ErrorOf(shard->Handle(Assign(0, 2, 1)));  // tp=2 in a group of one
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(error.message(), HasSubstr("tp_size=2 x pp_size=1 does not make the group's 1 ranks"));

  cv1::CoordinatorMessage precision = Assign();
  precision.mutable_assign_shard()->set_prefill_precision("fp8");
  error = ErrorOf(shard->Handle(precision));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(error.message(), HasSubstr("'fp8'"));

  cv1::CoordinatorMessage activations = Assign();
  activations.mutable_assign_shard()->set_quant_activations("int4");
  error = ErrorOf(shard->Handle(activations));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(error.message(), AllOf(StartsWith("rank 0: assign_shard: "), HasSubstr("'int4'")));

  cv1::CoordinatorMessage graphs = Assign();
  graphs.mutable_assign_shard()->set_graph_max_batch(-3);
  error = ErrorOf(shard->Handle(graphs));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(error.message(), HasSubstr("graph_max_batch=-3 is negative"));

  // A stage split the model cannot take is named by the numbers.
  auto second = MakeShard(0, 2);
  cv1::CoordinatorMessage layers = Assign(0, 1, 2);
  layers.mutable_assign_shard()->add_pp_layers(1);
  layers.mutable_assign_shard()->add_pp_layers(1);
  error = ErrorOf(second->Handle(layers));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(error.message(), StartsWith("rank 0: assign_shard: "));

  cv1::CoordinatorMessage empty = Message();
  error = ErrorOf(shard->Handle(empty));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kUnimplemented));
}

TEST_F(WorkerShardTest, ACudaShardWhereThereIsNoGpuFailsWithUnavailable) {
  if (CountDevices(DeviceKind::kCuda).ok()) GTEST_SKIP() << "a GPU is present";
  auto shard = MakeShard(0, 2);
  cv1::CoordinatorMessage assign = Assign(0, 2, 1);
  assign.mutable_assign_shard()->set_device("cuda");
  cv1::WorkerError error = ErrorOf(shard->Handle(assign));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_THAT(error.message(), StartsWith("rank 0: assign_shard: "));
}

TEST_F(WorkerShardTest, AStepBeforeTheKvCacheIsFailedPrecondition) {
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(Assign()), cv1::CoordinatorMessage::kAssignShard));
  FakeCoordinator coordinator;
  cv1::Step step;
  coordinator.Add(step, 1, 5);
  coordinator.Schedule(step, 1, kPromptB, true);
  cv1::WorkerError error = ErrorOf(shard->Handle(coordinator.Send(step)));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(error.message(), StartsWith("rank 0: step 1 (before allocate_kv_cache) out of order"));
  EXPECT_EQ(error.step_id(), 1u);
}

TEST_F(WorkerShardTest, BadStepsNameTheCulpritAndLeaveTheBatchAsItWas) {
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(SetUpShard(*shard));
  FakeCoordinator coordinator;
  cv1::Step step;
  coordinator.Add(step, 1, static_cast<int>(kPromptB.size()));
  coordinator.Schedule(step, 1, kPromptB, true);
  const std::vector<int32_t> first = Tokens(shard->Handle(coordinator.Send(step)), 1);
  ASSERT_EQ(first.size(), 1u);

  auto expect_error = [&](cv1::Step bad, absl::StatusCode code, const std::string& culprit) {
    bad.set_step_id(100);
    cv1::CoordinatorMessage m = Message();
    m.set_step(bad.SerializeAsString());
    cv1::WorkerError error = ErrorOf(shard->Handle(m));
    EXPECT_EQ(error.code(), static_cast<int>(code)) << error.message();
    EXPECT_THAT(error.message(), AllOf(StartsWith("rank 0: step 100: "), HasSubstr(culprit)));
    EXPECT_EQ(error.step_id(), 100u);
    EXPECT_EQ(shard->num_sequences(), 1);
  };
  cv1::Step bad;
  bad.add_finished(99);
  expect_error(bad, absl::StatusCode::kInvalidArgument, "finished sequence 99 is unknown");
  bad.Clear();
  bad.add_scheduled()->set_seq_id(42);
  expect_error(bad, absl::StatusCode::kInvalidArgument, "scheduled sequence 42 is unknown");
  bad.Clear();
  bad.add_new_sequences()->set_seq_id(1);
  expect_error(bad, absl::StatusCode::kInvalidArgument, "new sequence 1 already exists");
  bad.Clear();
  bad.add_new_sequences()->set_seq_id(3);
  bad.add_new_sequences()->set_seq_id(3);
  expect_error(bad, absl::StatusCode::kInvalidArgument, "new sequence 3 already exists");
  bad.Clear();
  bad.add_new_sequences()->set_seq_id(5);
  cv1::ScheduledSequence* no_blocks = bad.add_scheduled();  // 20 tokens, 1 block
  no_blocks->set_seq_id(5);
  for (int i = 0; i < 20; ++i) no_blocks->add_tokens(7);
  no_blocks->add_new_block_ids(30);
  expect_error(bad, absl::StatusCode::kInvalidArgument,
               "sequence 5 (row 0 of the step) has 20 tokens but a block table of 1 blocks");
  bad.Clear();
  bad.add_finished(1);  // finishing 1 and failing later in the step keeps 1
  cv1::ScheduledSequence* twice = bad.add_scheduled();
  bad.add_new_sequences()->set_seq_id(6);
  twice->set_seq_id(6);
  twice->add_tokens(1);
  twice->add_new_block_ids(31);
  *bad.add_scheduled() = *twice;
  expect_error(bad, absl::StatusCode::kInvalidArgument, "sequence 6 is scheduled twice");
  bad.Clear();
  cv1::ScheduledSequence* out_of_range = bad.add_scheduled();
  out_of_range->set_seq_id(1);
  out_of_range->add_tokens(first[0]);
  out_of_range->add_new_block_ids(kNumBlocks);  // not needed yet (6 tokens), but out of range all the same
  expect_error(bad, absl::StatusCode::kInvalidArgument, "block id 32 at index 1");

  cv1::CoordinatorMessage garbage = Message();
  garbage.set_step(std::string("\xff\xff\xff\xff", 4));
  cv1::WorkerError error = ErrorOf(shard->Handle(garbage));
  EXPECT_EQ(error.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(error.message(), "rank 0: step: 4 bytes are not a serialized Step");

  // The batch is intact: sequence 1 decodes on as if nothing had happened.
  step.Clear();
  coordinator.Schedule(step, 1, first, true);
  const std::vector<int32_t> second = Tokens(shard->Handle(coordinator.Send(step)), 2);
  EXPECT_EQ(std::vector<int32_t>({first[0], second.empty() ? -1 : second[0]}), Direct({kPromptB}, {2})[0]);
}

}  // namespace
}  // namespace tessera::worker_shard_test
