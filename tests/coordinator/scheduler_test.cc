// Scheduler against a recording StepSink (the worker group's place): the deltas it forms, admission, stop
// conditions, cancellation, failures and pipeline micro-batches.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "tessera/control/v1/control.pb.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using control::v1::Step;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class RecordingSink : public StepSink {
 public:
  absl::Status SendStep(const std::string& serialized) override {
    Step step;
    EXPECT_TRUE(step.ParseFromString(serialized));
    std::lock_guard<std::mutex> lock(mu_);
    steps_.push_back(step);
    cv_.notify_all();
    return status_;
  }
  // Waits for the step with this index (0-based) and returns it.
  Step WaitStep(size_t index) {
    std::unique_lock<std::mutex> lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(5), [&] { return steps_.size() > index; }))
        << "step " << index << " never came";
    return steps_.size() > index ? steps_[index] : Step();
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return steps_.size();
  }
  absl::Status status_;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Step> steps_;
};

class RecordingObserver : public GenerationObserver {
 public:
  bool OnToken(int index, int32_t token) override {
    std::lock_guard<std::mutex> lock(mu_);
    tokens[index].push_back(token);
    return token == stop_on;
  }
  void OnChoiceEnd(int index, FinishReason reason) override {
    std::lock_guard<std::mutex> lock(mu_);
    ends.emplace_back(index, reason);
  }
  void OnDone(const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    done = true;
    final_status = status;
    cv_.notify_all();
  }
  bool WaitDone() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5), [&] { return done; });
  }
  std::map<int, std::vector<int32_t>> tokens;
  std::vector<std::pair<int, FinishReason>> ends;
  bool done = false;
  absl::Status final_status;
  int32_t stop_on = -1;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

GenerationRequest MakeRequest(const std::string& id, int prompt_len, int max_tokens) {
  GenerationRequest r;
  r.id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(100 + i);
  r.max_tokens = max_tokens;
  r.stop_token_ids = {2};
  return r;
}

std::vector<int32_t> Ids(const google::protobuf::RepeatedField<int32_t>& f) { return {f.begin(), f.end()}; }

SchedulerOptions Options(int blocks = 64) {
  SchedulerOptions o;
  o.num_kv_blocks = blocks;
  o.max_num_seqs = 4;
  o.max_num_batched_tokens = 64;
  o.max_queued_requests = 2;
  return o;
}

TEST(SchedulerTest, RefusesRequestsUntilActivated) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  EXPECT_FALSE(scheduler.ready());
  EXPECT_THAT(scheduler.Submit(MakeRequest("a", 3, 2), std::make_shared<RecordingObserver>()),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("loading")));
}

TEST(SchedulerTest, SendsDeltasAndFeedsSampledTokensBack) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 17, 3), observer));

  Step s0 = sink.WaitStep(0);
  ASSERT_EQ(s0.new_sequences_size(), 1);
  const uint64_t id = s0.new_sequences(0).seq_id();
  EXPECT_EQ(s0.new_sequences(0).num_prompt_tokens(), 17);
  ASSERT_EQ(s0.scheduled_size(), 1);
  EXPECT_EQ(s0.scheduled(0).tokens_size(), 17);
  EXPECT_EQ(s0.scheduled(0).new_block_ids_size(), 2);  // 17 tokens in blocks of 16
  EXPECT_TRUE(s0.scheduled(0).sample());
  EXPECT_EQ(scheduler.num_free_blocks(), 6);
  scheduler.OnStepResult(s0.step_id(), {7}, 0.001);

  Step s1 = sink.WaitStep(1);
  EXPECT_EQ(s1.new_sequences_size(), 0);
  ASSERT_EQ(s1.scheduled_size(), 1);
  EXPECT_EQ(s1.scheduled(0).seq_id(), id);
  EXPECT_THAT(Ids(s1.scheduled(0).tokens()), ElementsAre(7));
  EXPECT_EQ(s1.scheduled(0).new_block_ids_size(), 0);  // token 18 fits in block 2
  scheduler.OnStepResult(s1.step_id(), {8}, 0.001);
  Step s2 = sink.WaitStep(2);
  scheduler.OnStepResult(s2.step_id(), {9}, 0.001);

  ASSERT_TRUE(observer->WaitDone());
  EXPECT_OK(observer->final_status);
  EXPECT_THAT(observer->tokens[0], ElementsAre(7, 8, 9));
  ASSERT_EQ(observer->ends.size(), 1u);
  EXPECT_EQ(observer->ends[0].second, FinishReason::kLength);
  EXPECT_EQ(scheduler.num_free_blocks(), 8);
  EXPECT_EQ(scheduler.stats().steps, 3);

  // The workers learn that the sequence is gone with the next step.
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 2, 1), std::make_shared<RecordingObserver>()));
  Step s3 = sink.WaitStep(3);
  EXPECT_THAT(std::vector<uint64_t>(s3.finished().begin(), s3.finished().end()), ElementsAre(id));
}

TEST(SchedulerTest, StopsOnStopTokenIdsAndOnTheObserversStopString) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  auto by_id = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 10), by_id));
  scheduler.OnStepResult(sink.WaitStep(0).step_id(), {2}, 0);
  ASSERT_TRUE(by_id->WaitDone());
  EXPECT_THAT(by_id->tokens[0], ElementsAre(2));
  EXPECT_EQ(by_id->ends[0].second, FinishReason::kStop);

  auto by_string = std::make_shared<RecordingObserver>();
  by_string->stop_on = 42;
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 10), by_string));
  scheduler.OnStepResult(sink.WaitStep(1).step_id(), {41}, 0);
  scheduler.OnStepResult(sink.WaitStep(2).step_id(), {42}, 0);
  ASSERT_TRUE(by_string->WaitDone());
  EXPECT_THAT(by_string->tokens[0], ElementsAre(41, 42));
  EXPECT_EQ(by_string->ends[0].second, FinishReason::kStop);
}

TEST(SchedulerTest, ChunksLongPromptsAndSamplesOnlyAfterTheLastChunk) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_num_batched_tokens = 8;
  Scheduler scheduler(options, sink);
  scheduler.Activate(8);
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 20, 1), observer));
  std::vector<int> chunks;
  for (int i = 0; i < 3; ++i) {
    Step s = sink.WaitStep(i);
    ASSERT_EQ(s.scheduled_size(), 1);
    chunks.push_back(s.scheduled(0).tokens_size());
    EXPECT_EQ(s.scheduled(0).sample(), i == 2);
    EXPECT_EQ(s.new_sequences_size(), i == 0 ? 1 : 0);
    scheduler.OnStepResult(s.step_id(), i == 2 ? std::vector<int32_t>{5} : std::vector<int32_t>{}, 0);
  }
  EXPECT_THAT(chunks, ElementsAre(8, 8, 4));
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_THAT(observer->tokens[0], ElementsAre(5));
}

TEST(SchedulerTest, AdmitsInArrivalOrderWithinTheBatchAndQueueLimits) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_num_seqs = 1;
  Scheduler scheduler(options, sink);
  scheduler.Activate(8);
  auto a = std::make_shared<RecordingObserver>(), b = std::make_shared<RecordingObserver>(),
       c = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 1), a));
  Step s0 = sink.WaitStep(0);
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 1), b));
  ASSERT_OK(scheduler.Submit(MakeRequest("c", 3, 1), c));
  EXPECT_THAT(scheduler.Submit(MakeRequest("d", 3, 1), std::make_shared<RecordingObserver>()),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("max_queued_requests=2")));
  EXPECT_THAT(scheduler.Submit(MakeRequest("a", 3, 1), std::make_shared<RecordingObserver>()),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("\"a\"")));
  scheduler.OnStepResult(s0.step_id(), {9}, 0);
  Step s1 = sink.WaitStep(1);  // b, not c: arrival order
  ASSERT_EQ(s1.new_sequences_size(), 1);
  EXPECT_EQ(s1.new_sequences(0).seq_id(), s0.new_sequences(0).seq_id() + 1);
  scheduler.OnStepResult(s1.step_id(), {9}, 0);
  scheduler.OnStepResult(sink.WaitStep(2).step_id(), {9}, 0);
  EXPECT_TRUE(a->WaitDone() && b->WaitDone() && c->WaitDone());
}

TEST(SchedulerTest, RejectsARequestLargerThanTheWholeCache) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(2);
  EXPECT_THAT(scheduler.Submit(MakeRequest("a", 30, 3), std::make_shared<RecordingObserver>()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("the whole cache has 2")));
}

TEST(SchedulerTest, CancelEndsTheRequestAndFreesItsBlocksAfterTheStepInFlight) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 20, 50), observer));
  Step s0 = sink.WaitStep(0);
  ASSERT_OK(scheduler.Cancel("a"));
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_THAT(observer->final_status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(scheduler.num_free_blocks(), 6);  // still in flight
  scheduler.OnStepResult(s0.step_id(), {9}, 0);
  EXPECT_EQ(scheduler.num_free_blocks(), 8);
  EXPECT_TRUE(observer->tokens.empty());
  EXPECT_THAT(scheduler.Cancel("a"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 2, 1), std::make_shared<RecordingObserver>()));
  Step s1 = sink.WaitStep(1);
  EXPECT_THAT(std::vector<uint64_t>(s1.finished().begin(), s1.finished().end()),
              ElementsAre(s0.new_sequences(0).seq_id()));
}

TEST(SchedulerTest, AFailedGroupEndsEveryRequestWithUnavailable) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  auto running = std::make_shared<RecordingObserver>(), queued = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 5), running));
  sink.WaitStep(0);
  scheduler.Fail(absl::UnavailableError("worker rank 1 (pid 7 on h) closed its session"));
  ASSERT_TRUE(running->WaitDone());
  EXPECT_THAT(running->final_status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 1")));
  EXPECT_FALSE(scheduler.ready());
  EXPECT_THAT(scheduler.Submit(MakeRequest("b", 3, 5), queued),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 1")));
}

TEST(SchedulerTest, KeepsTwoDisjointMicroBatchesInFlightForAPipeline) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_steps_in_flight = 2;
  Scheduler scheduler(options, sink);
  scheduler.Activate(16);
  GenerationRequest two = MakeRequest("a", 3, 4);
  two.n = 2;
  two.sampling.seed = 10;
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(two, observer));
  Step s0 = sink.WaitStep(0), s1 = sink.WaitStep(1);
  ASSERT_EQ(s0.scheduled_size(), 1);
  ASSERT_EQ(s1.scheduled_size(), 1);
  EXPECT_NE(s0.scheduled(0).seq_id(), s1.scheduled(0).seq_id());
  EXPECT_EQ(s0.new_sequences(0).sampling().seed(), 10u);
  EXPECT_EQ(s1.new_sequences(0).sampling().seed(), 11u);
  EXPECT_EQ(sink.count(), 2u);  // both in flight, nothing else to run
  for (int i = 0; i < 3; ++i) {
    scheduler.OnStepResult(sink.WaitStep(2 * i).step_id(), {9}, 0);
    scheduler.OnStepResult(sink.WaitStep(2 * i + 1).step_id(), {9}, 0);
  }
  scheduler.OnStepResult(sink.WaitStep(6).step_id(), {9}, 0);
  scheduler.OnStepResult(sink.WaitStep(7).step_id(), {9}, 0);
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_EQ(observer->tokens[0].size(), 4u);
  EXPECT_EQ(observer->tokens[1].size(), 4u);
}

}  // namespace
}  // namespace tessera
