// WorkerShard on the tiny preset, driven the way the coordinator drives it: the setup sequence, then steps as
// deltas (prefill, decodes fed back the sampled tokens, new KV blocks, finished sequences, chunked prompts)
// giving exactly the greedy tokens of the ModelRunner run directly. A tp=2 x pp=2 group of shards on threads,
// meeting through a real Rendezvous service, gives the same tokens. (Malformed messages:
// worker_shard_errors_test.cc.) A group re-formed after a lost rank: Reset with a new epoch, init_comm again,
// the same tokens without reloading; a step stuck on a silent peer ended by AbortCommunicators.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <thread>

#include "coordinator/rendezvous_service.h"
#include "tests/worker/worker_shard_fixture.h"

namespace tessera::worker_shard_test {
namespace {

// The null device's KV budget: 0.9 of the capacity less what is allocated, as on a real GPU.
TEST(WorkerShardBudgetTest, AnAccountedDevicesBudgetIsItsUsableMemoryLessWhatIsInUse) {
  ASSERT_OK_AND_ASSIGN(int64_t budget, WorkerShard::AccountedKvCacheBudget({.total_bytes = 1000, .used_bytes = 300}));
  EXPECT_EQ(budget, 600);
  EXPECT_THAT(WorkerShard::AccountedKvCacheBudget({.total_bytes = 1000, .used_bytes = 900}),
              ::tessera::testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                           ::testing::HasSubstr("900 bytes are in use of the 900 usable")));
}

TEST_F(WorkerShardTest, SetupAcksEachPhaseWithItsFigures) {
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(Assign()), cv1::CoordinatorMessage::kAssignShard));
  cv1::CoordinatorMessage init = Message();
  init.mutable_init_comm()->set_group_prefix("epoch7");
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(init), cv1::CoordinatorMessage::kInitComm));
  cv1::CoordinatorMessage load = Message();
  load.mutable_load_weights();
  std::vector<cv1::WorkerMessage> loaded = shard->Handle(load);
  ASSERT_NO_FATAL_FAILURE(ExpectAck(loaded, cv1::CoordinatorMessage::kLoadWeights));
  EXPECT_GT(loaded[0].ack().bytes_read(), 0);
  EXPECT_GT(loaded[0].ack().peak_rss_bytes(), 0);
  EXPECT_GT(loaded[0].ack().seconds(), 0.0);

  ASSERT_OK_AND_ASSIGN(Checkpoint checkpoint, Checkpoint::Open(*dir_));
  const ModelConfig& c = checkpoint.config();
  const int64_t block_bytes = int64_t{2} * c.num_hidden_layers * 16 * c.num_key_value_heads * c.head_dim * 4;
  cv1::CoordinatorMessage profile = Message();
  profile.mutable_profile_memory()->set_kv_cache_memory_bytes(10 * block_bytes + 1);
  std::vector<cv1::WorkerMessage> profiled = shard->Handle(profile);
  ASSERT_NO_FATAL_FAILURE(ExpectAck(profiled, cv1::CoordinatorMessage::kProfileMemory));
  EXPECT_EQ(profiled[0].ack().kv_block_bytes(), block_bytes);
  EXPECT_EQ(profiled[0].ack().max_kv_blocks(), 10);
  profile.mutable_profile_memory()->set_kv_cache_memory_bytes(0);  // the worker's own budget
  profiled = shard->Handle(profile);
  ASSERT_NO_FATAL_FAILURE(ExpectAck(profiled, cv1::CoordinatorMessage::kProfileMemory));
  ASSERT_OK_AND_ASSIGN(int64_t budget, WorkerShard::DefaultKvCacheBudget(1));
  EXPECT_GT(profiled[0].ack().max_kv_blocks(), 0);
  EXPECT_LE(profiled[0].ack().max_kv_blocks(), budget / block_bytes * 2);  // MemAvailable moves a little

  cv1::CoordinatorMessage allocate = Message();
  allocate.mutable_allocate_kv_cache()->set_num_blocks(kNumBlocks);
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(allocate), cv1::CoordinatorMessage::kAllocateKvCache));
  cv1::CoordinatorMessage reset = Message();
  reset.mutable_reset();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(reset), cv1::CoordinatorMessage::kReset));
  cv1::CoordinatorMessage drain = Message();
  drain.mutable_drain();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(drain), cv1::CoordinatorMessage::kDrain));
  cv1::CoordinatorMessage heartbeat = Message();
  heartbeat.mutable_heartbeat()->set_sent_unix_ms(1);
  EXPECT_TRUE(shard->Handle(heartbeat).empty());
  EXPECT_FALSE(shard->done());
  cv1::CoordinatorMessage shutdown = Message();
  shutdown.mutable_shutdown();
  EXPECT_TRUE(shard->Handle(shutdown).empty());
  EXPECT_TRUE(shard->done());
}

TEST_F(WorkerShardTest, StepsAsDeltasGiveTheTokensOfTheRunner) {
  const std::vector<std::vector<int32_t>> direct = Direct({kPromptA, kPromptB}, {8, 4});
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(SetUpShard(*shard));
  FakeCoordinator coordinator;
  std::vector<int32_t> got_a, got_b;
  cv1::Step step;
  coordinator.Add(step, 1, static_cast<int>(kPromptA.size()));
  coordinator.Add(step, 2, static_cast<int>(kPromptB.size()));
  coordinator.Schedule(step, 1, kPromptA, true);
  coordinator.Schedule(step, 2, kPromptB, true);
  std::vector<int32_t> tokens = Tokens(shard->Handle(coordinator.Send(step)), 1);
  ASSERT_EQ(tokens.size(), 2u);
  got_a.push_back(tokens[0]);
  got_b.push_back(tokens[1]);
  for (int i = 1; i < 8; ++i) {  // decodes: A grows past a block boundary; B leaves after 4 tokens
    step.Clear();
    if (i == 4) coordinator.Finish(step, 2);
    coordinator.Schedule(step, 1, {got_a.back()}, true);
    if (i < 4) coordinator.Schedule(step, 2, {got_b.back()}, true);
    tokens = Tokens(shard->Handle(coordinator.Send(step)), i + 1);
    ASSERT_EQ(tokens.size(), i < 4 ? 2u : 1u);
    got_a.push_back(tokens[0]);
    if (i < 4) got_b.push_back(tokens[1]);
  }
  EXPECT_EQ(got_a, direct[0]);
  EXPECT_EQ(got_b, direct[1]);
  EXPECT_EQ(shard->num_sequences(), 1);
  cv1::CoordinatorMessage reset = Message();
  reset.mutable_reset();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(reset), cv1::CoordinatorMessage::kReset));
  EXPECT_EQ(shard->num_sequences(), 0);
}

TEST_F(WorkerShardTest, AChunkedPromptGivesTheSameTokens) {
  const std::vector<int32_t> direct_a = Direct({kPromptA}, {4})[0];
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(SetUpShard(*shard));
  FakeCoordinator coordinator;
  cv1::Step step;
  coordinator.Add(step, 9, static_cast<int>(kPromptA.size()));
  coordinator.Schedule(step, 9, {kPromptA.begin(), kPromptA.begin() + 7}, false);
  EXPECT_TRUE(Tokens(shard->Handle(coordinator.Send(step)), 1).empty());  // a result with no tokens
  std::vector<int32_t> got;
  step.Clear();
  coordinator.Schedule(step, 9, {kPromptA.begin() + 7, kPromptA.end()}, true);
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> tokens = Tokens(shard->Handle(coordinator.Send(step)), i + 2);
    ASSERT_EQ(tokens.size(), 1u);
    got.push_back(tokens[0]);
    step.Clear();
    coordinator.Schedule(step, 9, {got.back()}, true);
  }
  EXPECT_EQ(got, direct_a);
}

// Runs `message(rank)` on every shard at once (collectives need all ranks) and returns each rank's replies.
template <typename MessageOf>
std::vector<std::vector<cv1::WorkerMessage>> OnAllRanks(std::vector<std::unique_ptr<WorkerShard>>& shards,
                                                        MessageOf message) {
  std::vector<std::vector<cv1::WorkerMessage>> replies(shards.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < shards.size(); ++r) {
    threads.emplace_back([&, r] { replies[r] = shards[r]->Handle(message(static_cast<int>(r))); });
  }
  for (std::thread& t : threads) t.join();
  return replies;
}

// A Reset that re-forms the group: sent in the worker's current epoch, moving it to `new_epoch`.
cv1::CoordinatorMessage Regroup(uint64_t new_epoch, uint64_t epoch = kEpoch) {
  cv1::CoordinatorMessage m = Message(epoch);
  m.mutable_reset()->set_new_epoch(new_epoch);
  return m;
}

// The single reply of `replies`, an Ack of `field` stamped with `epoch`.
void ExpectAckIn(const std::vector<cv1::WorkerMessage>& replies, int field, uint64_t epoch) {
  ASSERT_EQ(replies.size(), 1u);
  ASSERT_TRUE(replies[0].has_ack()) << replies[0].DebugString();
  EXPECT_EQ(replies[0].ack().message(), field);
  EXPECT_EQ(replies[0].epoch(), epoch);
}

TEST_F(WorkerShardTest, ResetWithANewEpochForgetsEverythingAndInitCommMakesItReadyWithoutReloading) {
  const std::vector<int32_t> direct_a = Direct({kPromptA}, {3})[0];
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(SetUpShard(*shard));
  FakeCoordinator before;
  cv1::Step step;
  before.Add(step, 1, static_cast<int>(kPromptA.size()));
  before.Schedule(step, 1, kPromptA, true);
  ASSERT_EQ(Tokens(shard->Handle(before.Send(step)), 1).size(), 1u);
  EXPECT_EQ(shard->num_sequences(), 1);

  constexpr uint64_t kNewEpoch = kEpoch + 5;
  ASSERT_NO_FATAL_FAILURE(
      ExpectAckIn(shard->Handle(Regroup(kNewEpoch)), cv1::CoordinatorMessage::kReset, kNewEpoch));
  EXPECT_EQ(shard->epoch(), kNewEpoch);
  EXPECT_EQ(shard->num_sequences(), 0);
  // The old epoch's messages are stale now.
  cv1::WorkerError stale = ErrorOf(shard->Handle(before.Send(step)));
  EXPECT_EQ(stale.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(stale.message(), ::testing::HasSubstr("stale epoch 7 (worker is in epoch 12)"));
  // Back at "shard assigned": no step before init_comm.
  FakeCoordinator after;
  step.Clear();
  after.Add(step, 1, static_cast<int>(kPromptA.size()));
  after.Schedule(step, 1, kPromptA, true);
  cv1::WorkerError early = ErrorOf(shard->Handle(after.Send(step, kNewEpoch)));
  EXPECT_EQ(early.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(early.message(), ::testing::HasSubstr("\"shard assigned\""));

  cv1::CoordinatorMessage init = Message(kNewEpoch);
  init.mutable_init_comm()->set_group_prefix("epoch12");
  ASSERT_NO_FATAL_FAILURE(ExpectAckIn(shard->Handle(init), cv1::CoordinatorMessage::kInitComm, kNewEpoch));
  // Ready again, as it was: the weights and the KV cache are kept (loading them again is out of order).
  cv1::CoordinatorMessage load = Message(kNewEpoch);
  load.mutable_load_weights();
  cv1::WorkerError reload = ErrorOf(shard->Handle(load));
  EXPECT_EQ(reload.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(reload.message(), ::testing::HasSubstr("\"KV cache allocated\""));
  // The sequence starts over in the new epoch and gives the runner's tokens.
  std::vector<cv1::WorkerMessage> replies = shard->Handle(after.Send(step, kNewEpoch));
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].epoch(), kNewEpoch);
  std::vector<int32_t> got = Tokens(replies, 2);
  for (int i = 1; i < 3 && got.size() == static_cast<size_t>(i); ++i) {
    step.Clear();
    after.Schedule(step, 1, {got.back()}, true);
    std::vector<int32_t> tokens = Tokens(shard->Handle(after.Send(step, kNewEpoch)), i + 2);
    got.insert(got.end(), tokens.begin(), tokens.end());
  }
  EXPECT_EQ(got, direct_a);
}

TEST_F(WorkerShardTest, AResetWithoutANewEpochOnlyForgetsTheSequences) {
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(SetUpShard(*shard));
  FakeCoordinator coordinator;
  cv1::Step step;
  coordinator.Add(step, 1, static_cast<int>(kPromptB.size()));
  coordinator.Schedule(step, 1, kPromptB, true);
  ASSERT_EQ(Tokens(shard->Handle(coordinator.Send(step)), 1).size(), 1u);
  cv1::CoordinatorMessage reset = Message();
  reset.mutable_reset();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(reset), cv1::CoordinatorMessage::kReset));
  EXPECT_EQ(shard->epoch(), kEpoch);
  EXPECT_EQ(shard->num_sequences(), 0);
  step.Clear();
  coordinator.Add(step, 2, static_cast<int>(kPromptB.size()));
  coordinator.Schedule(step, 2, kPromptB, true);
  EXPECT_EQ(Tokens(shard->Handle(coordinator.Send(step)), 2).size(), 1u);  // still ready
}

TEST_F(WorkerShardTest, AllocateKvCacheWithSkipGraphsGivesTheSameTokens) {
  const std::vector<int32_t> direct_b = Direct({kPromptB}, {3})[0];
  auto shard = MakeShard();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(Assign()), cv1::CoordinatorMessage::kAssignShard));
  cv1::CoordinatorMessage init = Message();
  init.mutable_init_comm()->set_group_prefix("epoch7");
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(init), cv1::CoordinatorMessage::kInitComm));
  cv1::CoordinatorMessage load = Message();
  load.mutable_load_weights();
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(load), cv1::CoordinatorMessage::kLoadWeights));
  cv1::CoordinatorMessage allocate = Message();
  allocate.mutable_allocate_kv_cache()->set_num_blocks(kNumBlocks);
  allocate.mutable_allocate_kv_cache()->set_skip_graphs(true);  // as a replacement rank joins (on the CPU, no
                                                                // graphs either way)
  ASSERT_NO_FATAL_FAILURE(ExpectAck(shard->Handle(allocate), cv1::CoordinatorMessage::kAllocateKvCache));
  FakeCoordinator coordinator;
  cv1::Step step;
  coordinator.Add(step, 1, static_cast<int>(kPromptB.size()));
  coordinator.Schedule(step, 1, kPromptB, true);
  std::vector<int32_t> got;
  for (int i = 0; i < 3; ++i) {
    std::vector<cv1::WorkerMessage> replies = shard->Handle(coordinator.Send(step));
    std::vector<int32_t> tokens = Tokens(replies, i + 1);
    ASSERT_EQ(tokens.size(), 1u);
    EXPECT_FALSE(replies[0].step_result().graph());
    got.push_back(tokens[0]);
    step.Clear();
    coordinator.Schedule(step, 1, {got.back()}, true);
  }
  EXPECT_EQ(got, direct_b);
}

TEST_F(WorkerShardTest, ATensorAndPipelineParallelGroupGivesTheTokensOfOneRank) {
  const std::vector<std::vector<int32_t>> direct = Direct({kPromptA, kPromptB}, {5, 5});
  RendezvousService rendezvous;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&rendezvous);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);

  constexpr int kTp = 2, kPp = 2, kOutputRank = 2;  // the last stage's TP rank 0
  std::vector<std::unique_ptr<WorkerShard>> shards;
  for (int r = 0; r < kTp * kPp; ++r) shards.push_back(MakeShard(r, kTp * kPp));
  auto expect_acks = [](const std::vector<std::vector<cv1::WorkerMessage>>& replies, int field) {
    for (const auto& r : replies) ASSERT_NO_FATAL_FAILURE(ExpectAck(r, field));
  };
  expect_acks(OnAllRanks(shards, [](int r) { return Assign(r, kTp, kPp); }),
              cv1::CoordinatorMessage::kAssignShard);
  expect_acks(OnAllRanks(shards,
                         [&](int) {
                           cv1::CoordinatorMessage m = Message();
                           m.mutable_init_comm()->set_store_address("127.0.0.1:" + std::to_string(port));
                           m.mutable_init_comm()->set_group_prefix("epoch7");
                           m.mutable_init_comm()->set_timeout_ms(20000);
                           return m;
                         }),
              cv1::CoordinatorMessage::kInitComm);
  cv1::CoordinatorMessage load = Message();
  load.mutable_load_weights();
  expect_acks(OnAllRanks(shards, [&](int) { return load; }), cv1::CoordinatorMessage::kLoadWeights);
  cv1::CoordinatorMessage allocate = Message();
  allocate.mutable_allocate_kv_cache()->set_num_blocks(kNumBlocks);
  expect_acks(OnAllRanks(shards, [&](int) { return allocate; }), cv1::CoordinatorMessage::kAllocateKvCache);

  FakeCoordinator coordinator;
  std::vector<std::vector<int32_t>> got(2);
  for (int i = 0; i < 5; ++i) {
    cv1::Step step;
    if (i == 0) {
      coordinator.Add(step, 1, static_cast<int>(kPromptA.size()));
      coordinator.Add(step, 2, static_cast<int>(kPromptB.size()));
    }
    coordinator.Schedule(step, 1, i == 0 ? kPromptA : std::vector<int32_t>{got[0].back()}, true);
    coordinator.Schedule(step, 2, i == 0 ? kPromptB : std::vector<int32_t>{got[1].back()}, true);
    const cv1::CoordinatorMessage m = coordinator.Send(step);
    auto replies = OnAllRanks(shards, [&](int) { return m; });
    for (int r = 0; r < kTp * kPp; ++r) {
      if (r != kOutputRank) {
        EXPECT_TRUE(replies[r].empty()) << "rank " << r << ": " << replies[r][0].DebugString();
      }
    }
    std::vector<int32_t> tokens = Tokens(replies[kOutputRank], i + 1);
    ASSERT_EQ(tokens.size(), 2u);
    got[0].push_back(tokens[0]);
    got[1].push_back(tokens[1]);
  }
  EXPECT_EQ(got, direct);
  rendezvous.Shutdown();
  server->Shutdown();
}

// A tp = 2 group of shards on threads meeting through a Rendezvous service on loopback.
class TensorParallelPair {
 public:
  TensorParallelPair() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&rendezvous_);
    server_ = builder.BuildAndStart();
    for (int r = 0; r < 2; ++r) {
      WorkerShardOptions options;
      options.rank = r;
      options.world_size = 2;
      options.epoch = kEpoch;
      shards.push_back(std::make_unique<WorkerShard>(options));
    }
  }
  ~TensorParallelPair() {
    rendezvous_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  cv1::CoordinatorMessage InitComm(uint64_t epoch, const std::string& prefix) const {
    cv1::CoordinatorMessage m = Message(epoch);
    m.mutable_init_comm()->set_store_address("127.0.0.1:" + std::to_string(port_));
    m.mutable_init_comm()->set_group_prefix(prefix);
    m.mutable_init_comm()->set_timeout_ms(30000);  // a wait on a silent peer would last this long
    return m;
  }

  std::vector<std::unique_ptr<WorkerShard>> shards;

 private:
  RendezvousService rendezvous_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

void ExpectAcksIn(const std::vector<std::vector<cv1::WorkerMessage>>& replies, int field, uint64_t epoch) {
  for (const auto& r : replies) ASSERT_NO_FATAL_FAILURE(ExpectAckIn(r, field, epoch));
}

TEST_F(WorkerShardTest, ATensorParallelGroupReFormedInANewEpochGivesTheSameTokens) {
  const std::vector<int32_t> direct_a = Direct({kPromptA}, {3})[0];
  TensorParallelPair pair;
  auto& shards = pair.shards;
  ExpectAcksIn(OnAllRanks(shards, [](int r) { return Assign(r, 2, 1); }),
               cv1::CoordinatorMessage::kAssignShard, kEpoch);
  ExpectAcksIn(OnAllRanks(shards, [&](int) { return pair.InitComm(kEpoch, "epoch7"); }),
               cv1::CoordinatorMessage::kInitComm, kEpoch);
  cv1::CoordinatorMessage load = Message();
  load.mutable_load_weights();
  ExpectAcksIn(OnAllRanks(shards, [&](int) { return load; }), cv1::CoordinatorMessage::kLoadWeights, kEpoch);
  cv1::CoordinatorMessage allocate = Message();
  allocate.mutable_allocate_kv_cache()->set_num_blocks(kNumBlocks);
  ExpectAcksIn(OnAllRanks(shards, [&](int) { return allocate; }), cv1::CoordinatorMessage::kAllocateKvCache,
               kEpoch);

  // A step every rank takes, then a step only rank 0 takes (its peer is lost): rank 0 waits on it in the
  // all-reduce until AbortCommunicators, from another thread, ends the wait at once.
  FakeCoordinator before;
  cv1::Step step;
  before.Add(step, 1, static_cast<int>(kPromptA.size()));
  before.Schedule(step, 1, kPromptA, true);
  const cv1::CoordinatorMessage first = before.Send(step);
  auto replies = OnAllRanks(shards, [&](int) { return first; });
  ASSERT_EQ(Tokens(replies[0], 1).size(), 1u);
  step.Clear();
  before.Schedule(step, 1, {replies[0][0].step_result().tokens(0)}, true);
  const auto start = std::chrono::steady_clock::now();
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // rank 0 is (most likely) waiting by then
    shards[0]->AbortCommunicators();
  });
  cv1::WorkerError stuck = ErrorOf(shards[0]->Handle(before.Send(step)));
  aborter.join();
  EXPECT_EQ(stuck.code(), static_cast<int>(absl::StatusCode::kUnavailable)) << stuck.message();
  EXPECT_EQ(stuck.step_id(), 2u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));  // not the 30 s timeout

  // Both ranks are reset into epoch 8 and join the new groups; the sequence starts over and gives the
  // runner's tokens.
  constexpr uint64_t kNewEpoch = kEpoch + 1;
  ExpectAcksIn(OnAllRanks(shards, [&](int) { return Regroup(kNewEpoch); }), cv1::CoordinatorMessage::kReset,
               kNewEpoch);
  for (const auto& shard : shards) EXPECT_EQ(shard->num_sequences(), 0);
  ExpectAcksIn(OnAllRanks(shards, [&](int) { return pair.InitComm(kNewEpoch, "epoch8"); }),
               cv1::CoordinatorMessage::kInitComm, kNewEpoch);
  FakeCoordinator after;
  std::vector<int32_t> got;
  step.Clear();
  after.Add(step, 1, static_cast<int>(kPromptA.size()));
  after.Schedule(step, 1, kPromptA, true);
  for (int i = 0; i < 3; ++i) {
    const cv1::CoordinatorMessage m = after.Send(step, kNewEpoch);
    replies = OnAllRanks(shards, [&](int) { return m; });
    EXPECT_TRUE(replies[1].empty()) << replies[1][0].DebugString();
    std::vector<int32_t> tokens = Tokens(replies[0], i + 1);
    ASSERT_EQ(tokens.size(), 1u);
    got.push_back(tokens[0]);
    step.Clear();
    after.Schedule(step, 1, {got.back()}, true);
  }
  EXPECT_EQ(got, direct_a);
}

}  // namespace
}  // namespace tessera::worker_shard_test
