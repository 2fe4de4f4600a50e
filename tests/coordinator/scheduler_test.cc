// Scheduler against a recording StepSink (the worker group's place): the deltas it forms, admission, stop
// conditions, cancellation, failures, pipeline micro-batches, logits rows and graph-step counts, and the
// delivery of observer events (in order, exactly once, never under the scheduler's lock); Suspend / Resume around
// a re-formed group (the same tokens as an uninterrupted run), Fail then Resume, and draining.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/str_cat.h"
#include "tessera/control/v1/control.pb.h"
#include "tests/coordinator/recording_sink.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using control::v1::Step;
using control::v1::StepResult;
using ::tessera::testing::RecordingSink;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(5);

// Records a request's events and checks their order as they come: OnLogits / OnToken only for a choice that
// has not ended, OnChoiceEnd once per choice, OnDone once and last.
class RecordingObserver : public GenerationObserver {
 public:
  explicit RecordingObserver(int32_t stop_on = -1) : stop_on_(stop_on) {}

  bool OnToken(int index, int32_t token) override {
    absl::MutexLock lock(&mu_);
    Check(index, "OnToken");
    tokens[index].push_back(token);
    log.push_back(Cat("token ", index, " ", token));
    return token == stop_on_;
  }
  void OnLogits(int index, const float* values, int64_t size) override {
    absl::MutexLock lock(&mu_);
    Check(index, "OnLogits");
    logits[index].emplace_back(values, values + size);
    log.push_back(Cat("logits ", index));
  }
  void OnChoiceEnd(int index, FinishReason reason) override {
    absl::MutexLock lock(&mu_);
    Check(index, "OnChoiceEnd");
    ends.emplace_back(index, reason);
    log.push_back(Cat("end ", index, reason == FinishReason::kStop ? " stop" : " length"));
  }
  void OnDone(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(done) << "OnDone twice";
    done = true;
    final_status = status;
    log.push_back("done");
  }
  void OnPromptLogprobs(const std::vector<TokenLogprob>& entries) override {
    absl::MutexLock lock(&mu_);
    EXPECT_TRUE(tokens.empty()) << "OnPromptLogprobs after a token";
    for (const TokenLogprob& e : entries) prompt_logprobs.push_back(e.token);
  }
  void OnLogprobs(int index, const TokenLogprob& logprob) override {
    absl::MutexLock lock(&mu_);
    log.push_back(Cat("logprob ", index, " ", logprob.token, " ", logprob.logprob));
  }
  void OnCachedTokens(int cached) override {
    absl::MutexLock lock(&mu_);
    EXPECT_EQ(cached_tokens, -1) << "OnCachedTokens twice";
    EXPECT_TRUE(tokens.empty()) << "OnCachedTokens after a token";
    cached_tokens = cached;
  }
  bool WaitDone() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done), kWait);
  }
  bool IsDone() {
    absl::MutexLock lock(&mu_);
    return done;
  }

  // Read these once OnDone came.
  std::map<int, std::vector<int32_t>> tokens;
  std::map<int, std::vector<std::vector<float>>> logits;
  std::vector<std::pair<int, FinishReason>> ends;
  std::vector<std::string> log;
  bool done = false;
  absl::Status final_status;
  int cached_tokens = -1;
  std::vector<int32_t> prompt_logprobs;  // the tokens of OnPromptLogprobs' entries

 private:
  void Check(int index, const char* call) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    EXPECT_FALSE(done) << call << " after OnDone";
    for (const auto& [ended, reason] : ends)
      EXPECT_NE(ended, index) << call << " after choice " << index << " ended";
  }

  const int32_t stop_on_;
  absl::Mutex mu_;
};

// The output rank's answer: one token per sampled sequence.
StepResult Result(uint64_t step_id, const std::vector<int32_t>& tokens, double worker_seconds = 0) {
  StepResult result;
  result.set_step_id(step_id);
  result.mutable_tokens()->Add(tokens.begin(), tokens.end());
  result.set_worker_seconds(worker_seconds);
  return result;
}

// A logits row of `values`, as the output rank encodes it.
void AddLogits(StepResult& result, uint64_t seq_id, const std::vector<float>& values) {
  control::v1::LogitsRow* row = result.add_logits();
  row->set_seq_id(seq_id);
  row->mutable_values()->resize(values.size() * sizeof(float));
  std::memcpy(row->mutable_values()->data(), values.data(), values.size() * sizeof(float));
}

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
  scheduler.OnStepResult(Result(s0.step_id(), {7}, 0.001));

  Step s1 = sink.WaitStep(1);
  EXPECT_EQ(s1.new_sequences_size(), 0);
  ASSERT_EQ(s1.scheduled_size(), 1);
  EXPECT_EQ(s1.scheduled(0).seq_id(), id);
  EXPECT_THAT(Ids(s1.scheduled(0).tokens()), ElementsAre(7));
  EXPECT_EQ(s1.scheduled(0).new_block_ids_size(), 0);  // token 18 fits in block 2
  scheduler.OnStepResult(Result(s1.step_id(), {8}, 0.001));
  Step s2 = sink.WaitStep(2);
  scheduler.OnStepResult(Result(s2.step_id(), {9}, 0.001));

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
  scheduler.OnStepResult(Result(sink.WaitStep(0).step_id(), {2}, 0));
  ASSERT_TRUE(by_id->WaitDone());
  EXPECT_THAT(by_id->tokens[0], ElementsAre(2));
  EXPECT_EQ(by_id->ends[0].second, FinishReason::kStop);

  auto by_string = std::make_shared<RecordingObserver>(/*stop_on=*/42);
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 10), by_string));
  scheduler.OnStepResult(Result(sink.WaitStep(1).step_id(), {41}, 0));
  scheduler.OnStepResult(Result(sink.WaitStep(2).step_id(), {42}, 0));
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
    scheduler.OnStepResult(Result(s.step_id(), i == 2 ? std::vector<int32_t>{5} : std::vector<int32_t>{}, 0));
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
  scheduler.OnStepResult(Result(s0.step_id(), {9}, 0));
  Step s1 = sink.WaitStep(1);  // b, not c: arrival order
  ASSERT_EQ(s1.new_sequences_size(), 1);
  EXPECT_EQ(s1.new_sequences(0).seq_id(), s0.new_sequences(0).seq_id() + 1);
  scheduler.OnStepResult(Result(s1.step_id(), {9}, 0));
  scheduler.OnStepResult(Result(sink.WaitStep(2).step_id(), {9}, 0));
  EXPECT_TRUE(a->WaitDone() && b->WaitDone() && c->WaitDone());
}

TEST(SchedulerTest, RejectsARequestLargerThanTheWholeCache) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  EXPECT_EQ(scheduler.Activate(2), 32);  // max_model_len: what 2 blocks of 16 tokens hold
  EXPECT_THAT(scheduler.Submit(MakeRequest("a", 30, 3), std::make_shared<RecordingObserver>()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the prompt (30 tokens) + max_tokens (3) = 33 tokens exceeds max_model_len=32")));
  // A max_tokens that was not given is the rest of what the cache holds instead.
  GenerationRequest rest = MakeRequest("b", 30, 3);
  rest.max_tokens_is_default = true;
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(rest, observer));
  scheduler.OnStepResult(Result(sink.WaitStep(0).step_id(), {7}));
  scheduler.OnStepResult(Result(sink.WaitStep(1).step_id(), {7}));
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_THAT(observer->log, ElementsAre("token 0 7", "token 0 7", "end 0 length", "done"));
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
  scheduler.OnStepResult(Result(s0.step_id(), {9}, 0));
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
  GenerationRequest two = MakeRequest("a", 1, 4);  // one prompt token: nothing to share, no fork
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
    scheduler.OnStepResult(Result(sink.WaitStep(2 * i).step_id(), {9}, 0));
    scheduler.OnStepResult(Result(sink.WaitStep(2 * i + 1).step_id(), {9}, 0));
  }
  scheduler.OnStepResult(Result(sink.WaitStep(6).step_id(), {9}, 0));
  scheduler.OnStepResult(Result(sink.WaitStep(7).step_id(), {9}, 0));
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_EQ(observer->tokens[0].size(), 4u);
  EXPECT_EQ(observer->tokens[1].size(), 4u);
}

TEST(SchedulerTest, SubmitBatchPrefillsTheWholeBatchInOneStep) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_queued_requests = 3;
  Scheduler scheduler(options, sink);
  scheduler.Activate(16);
  std::vector<GenerationRequest> requests = {MakeRequest("a", 3, 1), MakeRequest("b", 5, 1),
                                             MakeRequest("c", 2, 1)};
  std::vector<std::shared_ptr<RecordingObserver>> observers = {std::make_shared<RecordingObserver>(),
                                                               std::make_shared<RecordingObserver>(),
                                                               std::make_shared<RecordingObserver>()};
  ASSERT_OK(scheduler.SubmitBatch(requests, {observers.begin(), observers.end()}));
  Step s0 = sink.WaitStep(0);
  ASSERT_EQ(s0.scheduled_size(), 3);
  EXPECT_EQ(s0.new_sequences_size(), 3);
  EXPECT_EQ(s0.scheduled(0).tokens_size(), 3);
  EXPECT_EQ(s0.scheduled(1).tokens_size(), 5);
  EXPECT_EQ(s0.scheduled(2).tokens_size(), 2);
  scheduler.OnStepResult(Result(s0.step_id(), {7, 8, 9}));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(observers[i]->WaitDone());
    EXPECT_THAT(observers[i]->log, ElementsAre(Cat("token 0 ", 7 + i), "end 0 length", "done"));
  }
}

TEST(SchedulerTest, SubmitBatchQueuesNothingWhenOneRequestIsRefused) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);  // max_queued_requests = 2
  scheduler.Activate(4);
  auto observers = [](size_t n) {
    std::vector<std::shared_ptr<GenerationObserver>> o;
    for (size_t i = 0; i < n; ++i) o.push_back(std::make_shared<RecordingObserver>());
    return o;
  };
  EXPECT_THAT(scheduler.SubmitBatch({MakeRequest("a", 3, 1), MakeRequest("a", 3, 1)}, observers(2)),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("\"a\"")));
  EXPECT_THAT(scheduler.SubmitBatch({MakeRequest("a", 3, 1), MakeRequest("b", 80, 1)}, observers(2)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exceeds max_model_len=64")));
  EXPECT_THAT(scheduler.SubmitBatch({MakeRequest("a", 3, 1), MakeRequest("b", 3, 1), MakeRequest("c", 3, 1)},
                                    observers(3)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("3 more came together (max_queued_requests=2)")));
  EXPECT_EQ(sink.count(), 0u);
  EXPECT_EQ(scheduler.num_free_blocks(), 4);
  auto a = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 1), a));  // "a" was never queued
  scheduler.OnStepResult(Result(sink.WaitStep(0).step_id(), {7}));
  ASSERT_TRUE(a->WaitDone());
  EXPECT_OK(a->final_status);
}

std::vector<float> RandomRow(std::mt19937& rng, int size) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> row(size);
  for (float& v : row) v = normal(rng);
  return row;
}

TEST(SchedulerTest, ReturnsLogitsRowsJustBeforeTheirTokens) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(16);
  GenerationRequest with = MakeRequest("a", 1, 2);  // one prompt token: both choices start at once
  with.return_logits = true;
  with.n = 2;
  auto observer = std::make_shared<RecordingObserver>(), plain = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(with, observer));
  Step s0 = sink.WaitStep(0);
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 1), plain));  // joins the next step
  ASSERT_EQ(s0.new_sequences_size(), 2);
  EXPECT_TRUE(s0.new_sequences(0).return_logits());
  EXPECT_TRUE(s0.new_sequences(1).return_logits());
  const uint64_t a0 = s0.new_sequences(0).seq_id(), a1 = s0.new_sequences(1).seq_id();

  std::mt19937 rng(std::random_device{}());
  constexpr int kVocab = 37;  // not a multiple of any vector width
  const std::vector<std::vector<float>> rows = {RandomRow(rng, kVocab), RandomRow(rng, kVocab),
                                                RandomRow(rng, kVocab), RandomRow(rng, kVocab)};
  StepResult r0 = Result(s0.step_id(), {7, 8});
  AddLogits(r0, a0, rows[0]);
  AddLogits(r0, a1, rows[1]);
  scheduler.OnStepResult(r0);

  Step s1 = sink.WaitStep(1);
  ASSERT_EQ(s1.new_sequences_size(), 1);
  EXPECT_FALSE(s1.new_sequences(0).return_logits());
  ASSERT_EQ(s1.scheduled_size(), 3);
  StepResult r1 = Result(s1.step_id(), {9, 10, 11});
  AddLogits(r1, a1, rows[3]);  // rows are matched by seq_id, not by position
  AddLogits(r1, a0, rows[2]);
  scheduler.OnStepResult(r1);

  ASSERT_TRUE(observer->WaitDone());
  ASSERT_TRUE(plain->WaitDone());
  EXPECT_OK(observer->final_status);
  EXPECT_THAT(observer->log,
              ElementsAre("logits 0", "token 0 7", "logits 1", "token 1 8", "logits 0", "token 0 9",
                          "end 0 length", "logits 1", "token 1 10", "end 1 length", "done"));
  EXPECT_THAT(observer->logits[0], ElementsAre(rows[0], rows[2]));
  EXPECT_THAT(observer->logits[1], ElementsAre(rows[1], rows[3]));
  EXPECT_THAT(plain->log, ElementsAre("token 0 11", "end 0 length", "done"));
}

TEST(SchedulerTest, AMalformedLogitsRowFailsTheGroupNamingTheSequence) {
  struct Case {
    uint64_t seq_offset;  // added to the sampled sequence's id
    int bytes;
    std::string message;
  };
  for (const Case& c : {Case{5, 8, "logits row for sequence 6 that it did not sample"},
                        Case{0, 7, "logits row for sequence 1 of 7 bytes (not float32 values)"}}) {
    SCOPED_TRACE(c.message);
    RecordingSink sink;
    Scheduler scheduler(Options(), sink);
    scheduler.Activate(8);
    GenerationRequest request = MakeRequest("a", 3, 4);
    request.return_logits = true;
    auto observer = std::make_shared<RecordingObserver>();
    ASSERT_OK(scheduler.Submit(request, observer));
    Step s0 = sink.WaitStep(0);
    ASSERT_EQ(s0.new_sequences(0).seq_id(), 1u);
    StepResult result = Result(s0.step_id(), {7});
    control::v1::LogitsRow* row = result.add_logits();
    row->set_seq_id(s0.new_sequences(0).seq_id() + c.seq_offset);
    row->mutable_values()->assign(c.bytes, '\0');
    scheduler.OnStepResult(result);
    ASSERT_TRUE(observer->WaitDone());
    EXPECT_THAT(observer->final_status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr(c.message)));
    EXPECT_TRUE(observer->tokens.empty());
    EXPECT_FALSE(scheduler.ready());
  }
}

TEST(SchedulerTest, CountsStepsThatReplayedACapturedGraph) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 3), observer));
  for (int i = 0; i < 3; ++i) {
    StepResult result = Result(sink.WaitStep(i).step_id(), {9}, 0.25);
    result.set_graph(i > 0);  // the prefill ran eagerly, the decode steps replayed a graph
    scheduler.OnStepResult(result);
  }
  ASSERT_TRUE(observer->WaitDone());
  const Scheduler::Stats stats = scheduler.stats();
  EXPECT_EQ(stats.steps, 3);
  EXPECT_EQ(stats.graph_steps, 2);
  EXPECT_DOUBLE_EQ(stats.worker_seconds, 0.75);
}

TEST(SchedulerTest, AStopStringOnTheLastAllowedTokenEndsTheChoiceWithStop) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  auto observer = std::make_shared<RecordingObserver>(/*stop_on=*/42);
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 2), observer));
  scheduler.OnStepResult(Result(sink.WaitStep(0).step_id(), {41}));
  scheduler.OnStepResult(Result(sink.WaitStep(1).step_id(), {42}));
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_THAT(observer->log, ElementsAre("token 0 41", "token 0 42", "end 0 stop", "done"));
}

TEST(SchedulerTest, AChoiceThatHitAStopStringGetsNoFurtherStep) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(16);
  GenerationRequest two = MakeRequest("a", 1, 5);  // one prompt token: both choices start at once
  two.n = 2;
  auto observer = std::make_shared<RecordingObserver>(/*stop_on=*/42);
  ASSERT_OK(scheduler.Submit(two, observer));
  Step s0 = sink.WaitStep(0);
  ASSERT_EQ(s0.scheduled_size(), 2);
  scheduler.OnStepResult(Result(s0.step_id(), {42, 5}));  // choice 0 matched its stop string
  Step s1 = sink.WaitStep(1);
  ASSERT_EQ(s1.scheduled_size(), 1);
  EXPECT_EQ(s1.scheduled(0).seq_id(), s0.scheduled(1).seq_id());
  EXPECT_THAT(std::vector<uint64_t>(s1.finished().begin(), s1.finished().end()),
              ElementsAre(s0.scheduled(0).seq_id()));
  ASSERT_OK(scheduler.Cancel("a"));
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_THAT(observer->log, ElementsAre("token 0 42", "token 1 5", "end 0 stop", "done"));
}

// Runs `call` on another thread and waits up to 5 s for it: false when it blocked (on a lock its caller
// holds). A blocked call is left behind rather than hanging the test.
bool ReturnsPromptly(std::function<void()> call) {
  auto returned = std::make_shared<absl::Notification>();
  std::thread([call = std::move(call), returned] {
    call();
    returned->Notify();
  }).detach();
  return returned->WaitForNotificationWithTimeout(kWait);
}

// An observer that looks at the scheduler from every callback, as a metrics exporter might.
class CallingBackObserver : public RecordingObserver {
 public:
  explicit CallingBackObserver(Scheduler& scheduler) : scheduler_(scheduler) {}
  bool OnToken(int index, int32_t token) override {
    CallBack();
    return RecordingObserver::OnToken(index, token);
  }
  void OnChoiceEnd(int index, FinishReason reason) override {
    CallBack();
    RecordingObserver::OnChoiceEnd(index, reason);
  }
  void OnDone(const absl::Status& status) override {
    CallBack();
    RecordingObserver::OnDone(status);
  }

 private:
  void CallBack() {
    // Another thread first (it would block on a lock held by this one), then this one (which would
    // deadlock).
    const bool returned = ReturnsPromptly([this] { (void)scheduler_.ready(), (void)scheduler_.stats(); });
    EXPECT_TRUE(returned) << "the scheduler's lock is held during an observer call";
    if (returned) {
      EXPECT_GE(scheduler_.num_free_blocks(), 0);
    }
  }
  Scheduler& scheduler_;
};

TEST(SchedulerTest, ObserversAreNotCalledUnderTheSchedulersLock) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(16);
  auto finished = std::make_shared<CallingBackObserver>(scheduler);
  auto cancelled = std::make_shared<CallingBackObserver>(scheduler);
  auto failed = std::make_shared<CallingBackObserver>(scheduler);
  ASSERT_OK(scheduler.Submit(MakeRequest("finished", 3, 2), finished));
  scheduler.OnStepResult(Result(sink.WaitStep(0).step_id(), {7}));
  scheduler.OnStepResult(Result(sink.WaitStep(1).step_id(), {8}));
  ASSERT_TRUE(finished->WaitDone());
  EXPECT_THAT(finished->log, ElementsAre("token 0 7", "token 0 8", "end 0 length", "done"));

  ASSERT_OK(scheduler.Submit(MakeRequest("cancelled", 3, 5), cancelled));
  scheduler.OnStepResult(Result(sink.WaitStep(2).step_id(), {7}));
  ASSERT_OK(scheduler.Cancel("cancelled"));
  ASSERT_TRUE(cancelled->WaitDone());
  EXPECT_THAT(cancelled->log, ElementsAre("token 0 7", "done"));
  EXPECT_THAT(cancelled->final_status, StatusIs(absl::StatusCode::kCancelled));

  ASSERT_OK(scheduler.Submit(MakeRequest("failed", 3, 5), failed));
  scheduler.Fail(absl::UnavailableError("worker rank 0 closed its session"));
  ASSERT_TRUE(failed->WaitDone());
  EXPECT_THAT(failed->final_status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 0")));
}

TEST(SchedulerTest, DestroyingTheSchedulerEndsRunningAndQueuedRequestsWithUnavailable) {
  RecordingSink sink;
  auto running = std::make_shared<RecordingObserver>(), queued = std::make_shared<RecordingObserver>();
  {
    SchedulerOptions options = Options();
    options.max_num_seqs = 1;
    Scheduler scheduler(options, sink);
    scheduler.Activate(8);
    ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 5), running));
    ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 5), queued));
    scheduler.OnStepResult(Result(sink.WaitStep(0).step_id(), {7}));
  }
  ASSERT_TRUE(running->done);  // delivered by the destructor
  ASSERT_TRUE(queued->done);
  EXPECT_THAT(running->log, ElementsAre("token 0 7", "done"));
  EXPECT_THAT(running->final_status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
  EXPECT_THAT(queued->log, ElementsAre("done"));
}

// A sink that answers every step from its own thread, as the output rank's session does: one token per
// sampled sequence, drawn from a few ordinary ones, the stop id 2 and the stop string 42.
class AnsweringSink : public StepSink {
 public:
  explicit AnsweringSink(uint32_t seed) : rng_(seed) {}
  ~AnsweringSink() override { Stop(); }

  absl::Status SendStep(const std::string& serialized) override {
    Step step;
    EXPECT_TRUE(step.ParseFromString(serialized));
    absl::MutexLock lock(&mu_);
    steps_.push_back(std::move(step));
    return absl::OkStatus();
  }
  void Start(Scheduler& scheduler) {
    thread_ = std::thread([this, &scheduler] { Answer(scheduler); });
  }
  // Answers what is queued, then stops.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Answer(Scheduler& scheduler) {
    constexpr int32_t kTokens[] = {7, 8, 9, 10, 2, 42};
    while (true) {
      Step step;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !steps_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (steps_.empty()) return;  // stop_
        step = std::move(steps_.front());
        steps_.pop_front();
      }
      std::vector<int32_t> tokens;
      for (const auto& entry : step.scheduled()) {
        if (entry.sample()) tokens.push_back(kTokens[rng_() % std::size(kTokens)]);
      }
      scheduler.OnStepResult(Result(step.step_id(), tokens));
    }
  }

  std::mt19937 rng_;  // the answering thread's
  absl::Mutex mu_;
  std::deque<Step> steps_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

TEST(SchedulerTest, ConcurrentSubmitsCancelsAndResultsKeepEveryRequestsEventsInOrder) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(Cat("seed ", seed));
  AnsweringSink sink(seed);
  SchedulerOptions options = Options(256);
  options.max_queued_requests = 1000;
  options.max_steps_in_flight = 2;
  Scheduler scheduler(options, sink);
  scheduler.Activate(256);
  sink.Start(scheduler);

  constexpr int kThreads = 4, kPerThread = 25;
  std::vector<std::shared_ptr<RecordingObserver>> observers(kThreads * kPerThread);
  std::vector<GenerationRequest> requests(observers.size());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(seed + t);
      for (int i = t * kPerThread; i < (t + 1) * kPerThread; ++i) {
        requests[i] =
            MakeRequest(Cat("r", i), 1 + static_cast<int>(rng() % 20), 1 + static_cast<int>(rng() % 6));
        requests[i].n = 1 + static_cast<int>(rng() % 3);
        observers[i] = std::make_shared<RecordingObserver>(/*stop_on=*/42);
        EXPECT_OK(scheduler.Submit(requests[i], observers[i]));
        if (rng() % 4 == 0) (void)scheduler.Cancel(Cat("r", i));  // NOT_FOUND when it ended meanwhile
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < observers.size(); ++i) {
    SCOPED_TRACE(requests[i].id);
    ASSERT_TRUE(observers[i]->WaitDone());
    const RecordingObserver& o = *observers[i];
    if (!o.final_status.ok()) {
      EXPECT_THAT(o.final_status, StatusIs(absl::StatusCode::kCancelled));
      continue;
    }
    EXPECT_EQ(static_cast<int>(o.ends.size()), requests[i].n);
    for (const auto& [index, tokens] : o.tokens) {
      EXPECT_LE(static_cast<int>(tokens.size()), requests[i].max_tokens);
      const bool stopped = tokens.back() == 2 || tokens.back() == 42;
      for (const auto& [ended, reason] : o.ends) {
        if (ended == index) {
          EXPECT_EQ(reason, stopped ? FinishReason::kStop : FinishReason::kLength);
        }
      }
    }
  }
  sink.Stop();
  EXPECT_EQ(scheduler.num_free_blocks(), 256);
}

// Answers every step from `first` on (token `token` for each sampled sequence) until every observer is done;
// returns the steps it answered.
std::vector<Step> Drive(RecordingSink& sink, Scheduler& scheduler,
                        const std::vector<std::shared_ptr<RecordingObserver>>& observers, size_t first = 0,
                        int32_t token = 7) {
  std::vector<Step> steps;
  auto all_done = [&] {
    return std::all_of(observers.begin(), observers.end(), [](const auto& o) { return o->IsDone(); });
  };
  for (size_t k = first; !all_done() && k < first + 10000; ++k) {
    Step step = sink.WaitStep(k);
    if (step.step_id() == 0) break;  // none came (WaitStep failed the test)
    std::vector<int32_t> tokens;
    for (const auto& s : step.scheduled()) {
      if (s.sample()) tokens.push_back(token);
    }
    steps.push_back(step);
    scheduler.OnStepResult(Result(step.step_id(), tokens));
  }
  return steps;
}

TEST(SchedulerTest, PreemptsTheNewestWhenTheCacheIsFullAndResumesItFromItsTokenLog) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.enable_prefix_caching = false;  // the resumed sequence computes everything again
  Scheduler scheduler(options, sink);
  scheduler.Activate(4);  // 64 tokens: one sequence of 60, not two
  auto a = std::make_shared<RecordingObserver>(), b = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.SubmitBatch({MakeRequest("a", 20, 40), MakeRequest("b", 20, 40)}, {a, b}));
  const std::vector<Step> steps = Drive(sink, scheduler, {a, b});
  ASSERT_TRUE(a->done && b->done);
  for (const auto& o : {a, b}) {
    EXPECT_OK(o->final_status);
    EXPECT_EQ(o->tokens[0].size(), 40u);
    EXPECT_THAT(o->ends, ElementsAre(std::make_pair(0, FinishReason::kLength)));
  }
  EXPECT_GT(scheduler.stats().preemptions, 0);
  EXPECT_EQ(scheduler.num_free_blocks(), 4);  // nothing leaked
  // b was forgotten, then added again under a new id with its whole token log (prompt + tokens so far) to
  // prefill, and sampled on from there.
  ASSERT_EQ(steps[0].new_sequences_size(), 2);
  const uint64_t b_first = steps[0].new_sequences(1).seq_id();
  uint64_t b_again = 0;
  bool forgotten = false;
  for (const Step& step : steps) {
    for (uint64_t f : step.finished()) forgotten |= f == b_first;
    for (const auto& n : step.new_sequences()) {
      if (n.seq_id() > b_first) {
        EXPECT_TRUE(forgotten) << "b came back before it was forgotten";
        EXPECT_EQ(n.num_prompt_tokens(), 20);  // generated tokens count as generated, not prompt
        b_again = n.seq_id();
      }
    }
    for (const auto& s : step.scheduled()) {
      if (s.seq_id() == b_again && s.new_block_ids_size() > 0 && s.tokens_size() > 1) {
        EXPECT_EQ(s.tokens(0), 100);  // the prefill starts again from the prompt's first token
      }
    }
  }
  EXPECT_NE(b_again, 0u);
  EXPECT_TRUE(forgotten);
}

TEST(SchedulerTest, ASecondRequestSharingAPrefixReusesItsCachedBlocks) {
  for (bool caching : {true, false}) {
    SCOPED_TRACE(caching ? "prefix caching" : "no prefix caching");
    RecordingSink sink;
    SchedulerOptions options = Options();
    options.enable_prefix_caching = caching;
    Scheduler scheduler(options, sink);
    scheduler.Activate(16);
    auto first = std::make_shared<RecordingObserver>(), second = std::make_shared<RecordingObserver>();
    ASSERT_OK(scheduler.Submit(MakeRequest("a", 50, 2), first));  // 3 full blocks and 2 tokens
    const size_t steps = Drive(sink, scheduler, {first}).size();
    GenerationRequest shared = MakeRequest("b", 52, 2);
    shared.prompt[50] = 9;  // the same 3 blocks, a different tail
    ASSERT_OK(scheduler.Submit(shared, second));
    const Step step = sink.WaitStep(steps);
    Drive(sink, scheduler, {second}, steps);
    ASSERT_TRUE(second->done);
    EXPECT_EQ(first->cached_tokens, 0);
    EXPECT_EQ(second->cached_tokens, caching ? 48 : 0);
    ASSERT_EQ(step.new_sequences_size(), 1);
    EXPECT_EQ(step.new_sequences(0).cached_tokens_size(), caching ? 48 : 0);
    EXPECT_EQ(step.new_sequences(0).num_prompt_tokens(), 52);
    EXPECT_EQ(step.scheduled(0).tokens_size(), caching ? 4 : 52);  // only the rest is computed
    EXPECT_EQ(step.scheduled(0).new_block_ids_size(), 4);           // the cached blocks come first
    EXPECT_EQ(scheduler.stats().prefix_hits, caching ? 48 : 0);
    EXPECT_EQ(second->tokens[0], first->tokens[0]);
    EXPECT_EQ(scheduler.num_free_blocks(), 16);
  }
}

TEST(SchedulerTest, NChoicesPrefillThePromptOnceThenForkCopyingTheSharedPartialBlock) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(16);
  GenerationRequest three = MakeRequest("a", 20, 3);
  three.n = 3;
  three.sampling.seed = 10;
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(three, observer));
  const Step prefill = sink.WaitStep(0);
  ASSERT_EQ(prefill.scheduled_size(), 1);
  EXPECT_EQ(prefill.scheduled(0).tokens_size(), 19);  // all but the last prompt token
  EXPECT_FALSE(prefill.scheduled(0).sample());
  scheduler.OnStepResult(Result(prefill.step_id(), {}));
  const Step fork = sink.WaitStep(1);
  ASSERT_EQ(fork.scheduled_size(), 3);
  ASSERT_EQ(fork.new_sequences_size(), 2);
  ASSERT_EQ(fork.copies_size(), 2);  // tokens 16..18 sit in a shared partial block: each child copies it
  const std::vector<int32_t> parent_blocks = Ids(prefill.scheduled(0).new_block_ids());
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(fork.new_sequences(i).sampling().seed(), 11u + i);
    EXPECT_EQ(fork.new_sequences(i).cached_tokens_size(), 19);
    EXPECT_EQ(fork.copies(i).src(), parent_blocks[1]);
    const std::vector<int32_t> child = Ids(fork.scheduled(1 + i).new_block_ids());
    ASSERT_EQ(child.size(), 2u);
    EXPECT_EQ(child[0], parent_blocks[0]);  // the full block is shared
    EXPECT_EQ(child[1], fork.copies(i).dst());
  }
  for (const auto& s : fork.scheduled()) {
    EXPECT_THAT(Ids(s.tokens()), ElementsAre(119));  // the last prompt token, in every choice
    EXPECT_TRUE(s.sample());
  }
  Drive(sink, scheduler, {observer}, 1);
  ASSERT_TRUE(observer->done);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(observer->tokens[i].size(), 3u);
  EXPECT_EQ(scheduler.num_free_blocks(), 16);
}

TEST(SchedulerTest, AdmitsByPriorityThenArrival) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_num_seqs = 1;
  options.max_queued_requests = 8;
  Scheduler scheduler(options, sink);
  scheduler.Activate(16);
  std::vector<std::shared_ptr<RecordingObserver>> o;
  std::vector<GenerationRequest> requests;
  for (int priority : {0, 5, 5, -1}) {
    requests.push_back(MakeRequest(Cat("p", o.size()), 3 + static_cast<int>(o.size()), 1));
    requests.back().priority = priority;
    o.push_back(std::make_shared<RecordingObserver>());
  }
  ASSERT_OK(scheduler.Submit(requests[0], o[0]));  // runs first: it came alone
  for (int i = 1; i < 4; ++i) ASSERT_OK(scheduler.Submit(requests[i], o[i]));
  std::vector<int> started;  // prompt lengths (3 + i names request i), in the order they started
  for (const Step& step : Drive(sink, scheduler, o)) {
    for (const auto& n : step.new_sequences()) started.push_back(n.num_prompt_tokens());
  }
  // p0 (running), then p3 (priority -1), then p1 and p2 (priority 5) in arrival order.
  EXPECT_THAT(started, ElementsAre(3, 6, 4, 5));
  for (auto& observer : o) EXPECT_OK(observer->final_status);
}

TEST(SchedulerTest, ARequestWaitingLongerThanMaxQueueTimeFailsWithResourceExhausted) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_num_seqs = 1;
  options.max_queue_time_seconds = 0.05;
  Scheduler scheduler(options, sink);
  scheduler.Activate(16);
  auto running = std::make_shared<RecordingObserver>(), waiting = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 3), running));
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 3), waiting));
  const Step s0 = sink.WaitStep(0);
  absl::SleepFor(absl::Milliseconds(100));
  scheduler.OnStepResult(Result(s0.step_id(), {7}));  // the next pump expires b
  ASSERT_TRUE(waiting->WaitDone());
  EXPECT_THAT(waiting->final_status,
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("max_queue_time=0.05 s")));
  Drive(sink, scheduler, {running}, 1);
  EXPECT_OK(running->final_status);
  EXPECT_EQ(scheduler.num_free_blocks(), 16);
}

TEST(SchedulerTest, CancelMidPrefillFreesExactlyItsOwnBlocks) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_num_batched_tokens = 32;  // a prompt of 100 takes 4 chunks
  Scheduler scheduler(options, sink);
  scheduler.Activate(16);
  auto other = std::make_shared<RecordingObserver>(), cancelled = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("other", 20, 50), other));
  const Step s0 = sink.WaitStep(0);
  ASSERT_OK(scheduler.Submit(MakeRequest("long", 100, 5), cancelled));  // waits for the step in flight
  scheduler.OnStepResult(Result(s0.step_id(), {7}));  // other decodes from here (2 blocks)
  const Step chunk = sink.WaitStep(1);
  ASSERT_EQ(chunk.scheduled_size(), 2);
  EXPECT_EQ(chunk.scheduled(1).tokens_size(), 31);  // what the decode left of the budget
  ASSERT_OK(scheduler.Cancel("long"));
  EXPECT_EQ(scheduler.num_free_blocks(), 16 - 2 - 2);  // its chunk is in flight: its blocks too
  scheduler.OnStepResult(Result(chunk.step_id(), {7}));
  EXPECT_EQ(scheduler.num_free_blocks(), 16 - 2);  // only other's blocks are held
  ASSERT_TRUE(cancelled->WaitDone());
  EXPECT_THAT(cancelled->final_status, StatusIs(absl::StatusCode::kCancelled));
  Drive(sink, scheduler, {other}, 2);
  EXPECT_EQ(scheduler.num_free_blocks(), 16);
}

TEST(SchedulerTest, PromptLogprobsComputeThePromptOneTokenAStepAndArriveOnceBeforeTheFirstToken) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(16);
  GenerationRequest r = MakeRequest("a", 4, 1);
  r.sampling.prompt_logprobs = true;
  r.sampling.logprobs = true;
  auto observer = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(r, observer));
  for (int k = 0; k < 4; ++k) {
    const Step step = sink.WaitStep(k);
    ASSERT_EQ(step.scheduled_size(), 1);
    ASSERT_EQ(step.scheduled(0).tokens_size(), 1);  // one prompt position a step
    EXPECT_EQ(step.scheduled(0).tokens(0), 100 + k);
    if (k == 0) {
      EXPECT_TRUE(step.new_sequences(0).sampling().prompt_logprobs());
    }
    StepResult result = Result(step.step_id(), k == 3 ? std::vector<int32_t>{7} : std::vector<int32_t>{});
    const uint64_t id = step.scheduled(0).seq_id();
    if (k < 3) {  // position k's logits give prompt token k + 1; the first one is sent twice, as after a resume
      for (int repeat = 0; repeat < (k == 0 ? 2 : 1); ++repeat) {
        control::v1::PromptLogprobs* p = result.add_prompt_logprobs();
        p->set_seq_id(id);
        p->set_first_position(k + 1);
        control::v1::TokenLogprobs* e = p->add_entries();
        e->set_token(101 + k);
        e->set_logprob(-1.5f);
      }
    } else {
      control::v1::TokenLogprobs* e = result.add_logprobs();
      e->set_seq_id(id);
      e->set_token(7);
      e->set_logprob(-0.25f);
    }
    scheduler.OnStepResult(result);
  }
  ASSERT_TRUE(observer->WaitDone());
  EXPECT_THAT(observer->prompt_logprobs, ElementsAre(101, 102, 103));
  EXPECT_THAT(observer->log, ElementsAre("logprob 0 7 -0.25", "token 0 7", "end 0 length", "done"));
}

// A deterministic stand-in for the workers' model: the token sampled after a sequence's last position depends
// only on its prompt length and on how many tokens it holds, as greedy decoding's does. A sequence that is
// added again with its whole token log (after a Suspend) therefore samples what it would have sampled anyway.
class PositionalModel {
 public:
  StepResult Answer(const Step& step) {
    for (const auto& n : step.new_sequences()) {
      prompt_[n.seq_id()] = n.num_prompt_tokens();
      length_[n.seq_id()] = 0;
    }
    std::vector<int32_t> tokens;
    for (const auto& s : step.scheduled()) {
      EXPECT_TRUE(prompt_.contains(s.seq_id())) << "sequence " << s.seq_id() << " was never added";
      const int length = (length_[s.seq_id()] += s.tokens_size());
      if (s.sample()) tokens.push_back(1000 * prompt_[s.seq_id()] + length);  // never the stop id 2
    }
    return Result(step.step_id(), tokens);
  }

 private:
  std::map<uint64_t, int> prompt_;  // by seq_id
  std::map<uint64_t, int> length_;  // tokens the workers hold
};

// Answers every step from `first` on with `model` until every observer is done; returns the steps answered.
std::vector<Step> DriveWith(PositionalModel& model, RecordingSink& sink, Scheduler& scheduler,
                            const std::vector<std::shared_ptr<RecordingObserver>>& observers, size_t first) {
  std::vector<Step> steps;
  auto all_done = [&] {
    return std::all_of(observers.begin(), observers.end(), [](const auto& o) { return o->IsDone(); });
  };
  for (size_t k = first; !all_done() && k < first + 1000; ++k) {
    Step step = sink.WaitStep(k);
    if (step.step_id() == 0 && k > 0) break;  // none came (WaitStep failed the test)
    steps.push_back(step);
    scheduler.OnStepResult(model.Answer(step));
  }
  return steps;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(SchedulerTest, SuspendDropsTheStepsInFlightAndResumeRestartsEverySequenceFromItsTokenLog) {
  const std::vector<GenerationRequest> requests = {MakeRequest("a", 17, 6), MakeRequest("b", 3, 6)};
  // The same requests, never interrupted.
  std::vector<std::vector<int32_t>> uninterrupted;
  {
    RecordingSink sink;
    Scheduler scheduler(Options(), sink);
    scheduler.Activate(8);
    PositionalModel model;
    auto a = std::make_shared<RecordingObserver>(), b = std::make_shared<RecordingObserver>();
    ASSERT_OK(scheduler.SubmitBatch(requests, {a, b}));
    DriveWith(model, sink, scheduler, {a, b}, 0);
    ASSERT_TRUE(a->done && b->done);
    uninterrupted = {a->tokens[0], b->tokens[0]};
    ASSERT_EQ(uninterrupted[0].size(), 6u);
  }

  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  PositionalModel model;
  auto a = std::make_shared<RecordingObserver>(), b = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.SubmitBatch(requests, {a, b}));
  const Step s0 = sink.WaitStep(0);
  ASSERT_EQ(s0.new_sequences_size(), 2);
  scheduler.OnStepResult(model.Answer(s0));
  scheduler.OnStepResult(model.Answer(sink.WaitStep(1)));
  const Step in_flight = sink.WaitStep(2);  // both mid-decode, two tokens each so far
  ASSERT_EQ(in_flight.scheduled_size(), 2);
  EXPECT_LT(scheduler.num_free_blocks(), scheduler.num_blocks());

  scheduler.Suspend();
  EXPECT_FALSE(scheduler.ready());
  EXPECT_EQ(scheduler.num_free_blocks(), scheduler.num_blocks());  // the KV cache is taken as empty
  // The lost group's late answer is ignored: no token, no INTERNAL failure.
  scheduler.OnStepResult(Result(in_flight.step_id(), {5, 5}));
  EXPECT_FALSE(a->IsDone());
  EXPECT_FALSE(b->IsDone());
  // Requests are still accepted while suspended, but wait: no step is formed.
  auto c = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("c", 5, 2), c));
  EXPECT_EQ(sink.count(), 3u);
  EXPECT_FALSE(scheduler.ready());

  scheduler.Resume();
  EXPECT_TRUE(scheduler.ready());
  const Step resumed = sink.WaitStep(3);
  EXPECT_EQ(resumed.finished_size(), 0);  // the workers forgot everything themselves
  // a and b come back under new ids with their whole token log (prompt + the two tokens) to prefill; c joins.
  ASSERT_EQ(resumed.new_sequences_size(), 3);
  std::map<int, std::vector<int32_t>> prefilled;  // by prompt length
  for (int i = 0; i < resumed.new_sequences_size(); ++i) {
    const auto& n = resumed.new_sequences(i);
    EXPECT_NE(n.seq_id(), s0.new_sequences(0).seq_id());
    EXPECT_NE(n.seq_id(), s0.new_sequences(1).seq_id());
    for (const auto& s : resumed.scheduled()) {
      if (s.seq_id() == n.seq_id()) {
        prefilled[n.num_prompt_tokens()] = Ids(s.tokens());
        EXPECT_TRUE(s.sample());
        EXPECT_EQ(s.new_block_ids_size(), (s.tokens_size() + 15) / 16);
      }
    }
  }
  ASSERT_EQ(prefilled.size(), 3u);
  EXPECT_EQ(prefilled[17], Concat(requests[0].prompt, {uninterrupted[0][0], uninterrupted[0][1]}));
  EXPECT_EQ(prefilled[3], Concat(requests[1].prompt, {uninterrupted[1][0], uninterrupted[1][1]}));
  EXPECT_EQ(prefilled[5], MakeRequest("c", 5, 2).prompt);

  scheduler.OnStepResult(model.Answer(resumed));
  DriveWith(model, sink, scheduler, {a, b, c}, 4);
  ASSERT_TRUE(a->done && b->done && c->done);
  EXPECT_OK(a->final_status);
  EXPECT_OK(b->final_status);
  EXPECT_OK(c->final_status);
  EXPECT_EQ(a->tokens[0], uninterrupted[0]);  // the same tokens as without the lost worker, none twice
  EXPECT_EQ(b->tokens[0], uninterrupted[1]);
  EXPECT_EQ(c->tokens[0].size(), 2u);
  EXPECT_EQ(scheduler.num_free_blocks(), scheduler.num_blocks());
}

TEST(SchedulerTest, ASuspendedSchedulerFormsNoStepEvenWhenResultsArrive) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_steps_in_flight = 2;
  Scheduler scheduler(options, sink);
  scheduler.Activate(16);
  auto a = std::make_shared<RecordingObserver>(), b = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 4), a));
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 4, 4), b));
  const Step s0 = sink.WaitStep(0);
  scheduler.OnStepResult(Result(s0.step_id(), std::vector<int32_t>(s0.scheduled_size(), 7)));
  const size_t sent = sink.count();
  scheduler.Suspend();
  for (size_t k = 1; k < sent; ++k) {  // the other micro-batch's late result
    const Step late = sink.WaitStep(k);
    scheduler.OnStepResult(Result(late.step_id(), std::vector<int32_t>(late.scheduled_size(), 7)));
  }
  ASSERT_OK(scheduler.Cancel("b"));  // a request may still be cancelled while suspended
  ASSERT_TRUE(b->WaitDone());
  EXPECT_THAT(b->final_status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(sink.count(), sent);
  EXPECT_FALSE(a->IsDone());
  scheduler.Resume();
  const Step resumed = sink.WaitStep(sent);
  ASSERT_EQ(resumed.new_sequences_size(), 1);  // a only
  ASSERT_EQ(resumed.scheduled_size(), 1);
  EXPECT_THAT(Ids(resumed.scheduled(0).tokens()), ElementsAre(100, 101, 102, 7));
}

TEST(SchedulerTest, ARefusedStepSuspendsInsteadOfFailingWithSuspendOnSendFailure) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.suspend_on_send_failure = true;
  Scheduler scheduler(options, sink);
  scheduler.Activate(8);
  sink.set_status(absl::UnavailableError("cannot send a step to worker rank 1"));
  auto a = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 20, 2), a));
  const Step refused = sink.WaitStep(0);
  EXPECT_FALSE(scheduler.ready());
  EXPECT_FALSE(a->IsDone());
  EXPECT_EQ(scheduler.num_free_blocks(), 8);
  EXPECT_EQ(sink.count(), 1u);  // no step until Resume
  ASSERT_OK(
      scheduler.Submit(MakeRequest("b", 2, 1), std::make_shared<RecordingObserver>()));  // accepted, waits
  EXPECT_EQ(sink.count(), 1u);

  sink.set_status(absl::OkStatus());
  scheduler.Resume();
  const Step again = sink.WaitStep(1);
  ASSERT_GE(again.new_sequences_size(), 1);
  EXPECT_NE(again.new_sequences(0).seq_id(), refused.new_sequences(0).seq_id());
  EXPECT_EQ(again.scheduled(0).tokens_size(), 20);
  EXPECT_EQ(again.finished_size(), 0);
  scheduler.OnStepResult(Result(again.step_id(), std::vector<int32_t>(again.scheduled_size(), 7)));
  scheduler.OnStepResult(Result(sink.WaitStep(2).step_id(), {8}));
  ASSERT_TRUE(a->WaitDone());
  EXPECT_OK(a->final_status);
  EXPECT_THAT(a->tokens[0], ElementsAre(7, 8));
}

TEST(SchedulerTest, ARefusedStepFailsEveryRequestWithoutSuspendOnSendFailure) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  sink.set_status(absl::UnavailableError("cannot send a step to worker rank 1"));
  auto a = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 20, 2), a));
  ASSERT_TRUE(a->WaitDone());
  EXPECT_THAT(a->final_status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 1")));
  EXPECT_FALSE(scheduler.ready());
}

TEST(SchedulerTest, ResumeAfterAFailureClearsItAndServesAgain) {
  RecordingSink sink;
  Scheduler scheduler(Options(), sink);
  scheduler.Activate(8);
  auto failed = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 5), failed));
  const Step s0 = sink.WaitStep(0);
  scheduler.Fail(absl::UnavailableError("worker rank 1 missed its heartbeats; no replacement came"));
  ASSERT_TRUE(failed->WaitDone());
  EXPECT_THAT(failed->final_status, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 1")));
  scheduler.Suspend();  // nothing happens after a Fail
  EXPECT_FALSE(scheduler.ready());
  EXPECT_THAT(scheduler.Submit(MakeRequest("b", 3, 1), std::make_shared<RecordingObserver>()),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("rank 1")));

  scheduler.Resume();
  EXPECT_TRUE(scheduler.ready());
  EXPECT_EQ(scheduler.num_free_blocks(), 8);
  scheduler.OnStepResult(Result(s0.step_id(), {9}));  // a result from before the failure changes nothing
  auto served = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 1), served));  // the id is free again
  const Step s1 = sink.WaitStep(1);
  ASSERT_EQ(s1.new_sequences_size(), 1);
  scheduler.OnStepResult(Result(s1.step_id(), {7}));
  ASSERT_TRUE(served->WaitDone());
  EXPECT_OK(served->final_status);
  EXPECT_THAT(served->tokens[0], ElementsAre(7));
}

TEST(SchedulerTest, DrainingRefusesNewRequestsAndWaitIdleWaitsForTheAcceptedOnes) {
  RecordingSink sink;
  SchedulerOptions options = Options();
  options.max_num_seqs = 1;
  Scheduler scheduler(options, sink);
  scheduler.Activate(8);
  auto running = std::make_shared<RecordingObserver>(), queued = std::make_shared<RecordingObserver>();
  ASSERT_OK(scheduler.Submit(MakeRequest("a", 3, 2), running));
  ASSERT_OK(scheduler.Submit(MakeRequest("b", 3, 1), queued));
  EXPECT_EQ(scheduler.WaitIdle(absl::ZeroDuration()), 2);
  scheduler.StartDraining();
  EXPECT_FALSE(scheduler.ready());
  EXPECT_THAT(scheduler.Submit(MakeRequest("c", 3, 1), std::make_shared<RecordingObserver>()),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("draining")));
  EXPECT_EQ(scheduler.WaitIdle(absl::Milliseconds(10)), 2);  // both still to finish
  scheduler.OnStepResult(Result(sink.WaitStep(0).step_id(), {7}));
  scheduler.OnStepResult(Result(sink.WaitStep(1).step_id(), {8}));
  ASSERT_TRUE(running->WaitDone());
  EXPECT_EQ(scheduler.WaitIdle(absl::Milliseconds(10)), 1);  // b, admitted after a, still runs
  scheduler.OnStepResult(Result(sink.WaitStep(2).step_id(), {9}));
  EXPECT_EQ(scheduler.WaitIdle(kWait), 0);
  EXPECT_OK(running->final_status);
  EXPECT_OK(queued->final_status);
  EXPECT_THAT(queued->tokens[0], ElementsAre(9));
}

}  // namespace
}  // namespace tessera
