// Scheduler: the Engine over a group of workers, continuous batching at iteration level. Each step fits a
// sequence budget (max_num_seqs) and a token budget (max_num_batched_tokens): running sequences that decode come
// first, then prompt chunks of sequences still prefilling (chunked prefill into what is left of the budget),
// then sequences that start or resume, then new requests by priority (lower first) and arrival. KV blocks are
// handed out as sequences grow (KvBlockPool), not reserved for the worst case. When the cache is full, the
// lowest-priority newest running sequences are preempted: their blocks are freed, their token log stays here,
// and they later resume by prefilling prompt + generated tokens again (the prefix cache usually holds most of
// it), so nothing is lost and greedy output equals an unpreempted run. With prefix caching, full blocks are
// found again by a hash of their tokens and everything before them; a new sequence starts from its longest
// cached prefix. A request with n > 1 prefills its prompt once (but its last token) and then forks: the
// choices share the prompt's blocks, and the one partial block is copied on write. Each step is a delta
// against the workers' batches (forgotten, new and scheduled sequences, prompt chunks, sampled tokens fed back,
// new block ids, block copies), serialized once and handed to a StepSink. With pipeline parallelism up to
// max_steps_in_flight micro-batches (disjoint sets of sequences) are in flight so that stages overlap.
//
// There is no scheduler thread. Whichever call changes the state (Submit, SubmitBatch, Cancel, OnStepResult,
// Activate, Fail) then pumps, one thread at a time (the others leave their work to the thread already
// pumping): expire requests that waited too long; deliver the queued observer events with the lock released;
// apply what the observers answered (a stop string ends its choice); form and send the next step with the lock
// released; and again while anything changed. So every worker receives the steps in the same order, a decode
// step is sent from the thread that delivered the previous result (no thread hop), no observer is called under
// the lock, and a choice that hit a stop string gets no further step. Observer events are queued under the
// lock in the order they happen and delivered in that order; the queue holds at most a few events per running
// sequence and one OnDone per request, because each sequence is in at most one step and its events are
// delivered before it is scheduled again.
//
// Metrics (optional): recorded where things happen, under mu_ (arrival, admission, each step result and each
// token, each choice's end, a request's abnormal end, preemptions, prefix cache lookups, the gauges at the end
// of a pump), except the count of choices by finish reason, recorded when their OnChoiceEnd is delivered (a
// stop string may turn a length end into a stop). The metrics' locks are leaves: scheduler mu_, then a
// metric's lock, never the reverse.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/kv_block_pool.h"
#include "coordinator/engine.h"

namespace tessera {

namespace control::v1 {
class Step;
class StepResult;
}
struct EngineMetrics;

// Where steps go (the worker group). SendStep is called by one thread at a time, without the scheduler's
// lock; it may block (backpressure) until the group can take the step.
class StepSink {
 public:
  virtual ~StepSink() = default;
  // `step` is a serialized tessera.control.v1.Step. Errors: the group cannot take it (the scheduler then
  // fails every request with UNAVAILABLE).
  [[nodiscard]] virtual absl::Status SendStep(const std::string& step) = 0;
};

struct SchedulerOptions {
  int num_kv_blocks = 0;
  int block_size = 16;
  int max_num_seqs = 64;              // sequences (choices) admitted and not yet ended
  int max_num_batched_tokens = 2048;  // tokens in one step (longer prompts are prefilled in chunks)
  int max_queued_requests = 1024;     // waiting to be admitted; more is RESOURCE_EXHAUSTED
  int max_steps_in_flight = 1;        // pipeline micro-batches: pp
  // The longest sequence (prompt + max_tokens); 0 = no limit of the scheduler's own. Activate lowers it to what
  // the KV cache holds.
  int max_model_len = 0;
  bool enable_prefix_caching = true;
  double max_queue_time_seconds = 0;  // a request waiting longer fails with RESOURCE_EXHAUSTED; 0 = no limit
  // A step the sink refuses suspends the scheduler (see Suspend) instead of failing every request: the owner
  // recovers the group and calls Resume, or Fail.
  bool suspend_on_send_failure = false;
};

class Scheduler final : public Engine {
 public:
  // `sink` must outlive the scheduler; so must `metrics` unless it is null (nothing is recorded). The
  // scheduler is not ready (Submit fails with UNAVAILABLE) until Activate.
  Scheduler(const SchedulerOptions& options, StepSink& sink, EngineMetrics* metrics = nullptr);
  // Fails what is left with UNAVAILABLE, delivers those events and waits for a thread still pumping.
  ~Scheduler() override ABSL_LOCKS_EXCLUDED(mu_);

  // Engine. Observers are called by the calling thread or by the one pumping at the time, never under the
  // scheduler's lock (they may call ready(), stats() or num_free_blocks()). Errors besides Engine's:
  // INVALID_ARGUMENT when prompt + max_tokens exceeds max_model_len (naming both), or n exceeds
  // max_num_seqs.
  [[nodiscard]] absl::Status Submit(GenerationRequest request,
                                    std::shared_ptr<GenerationObserver> observer) override
      ABSL_LOCKS_EXCLUDED(mu_);
  [[nodiscard]] absl::Status Cancel(const std::string& request_id) override ABSL_LOCKS_EXCLUDED(mu_);
  bool ready() const override ABSL_LOCKS_EXCLUDED(mu_);
  // Submit for several requests at once (observers[i] watches requests[i]; the sizes must match): every
  // request is checked first and none is queued when one is refused (Submit's errors, naming the request;
  // RESOURCE_EXHAUSTED when the batch does not fit in the queue as a whole). Requests that fit are admitted
  // together, so that their prompts share the first steps (offline batches: tessera generate).
  [[nodiscard]] absl::Status SubmitBatch(std::vector<GenerationRequest> requests,
                                         std::vector<std::shared_ptr<GenerationObserver>> observers)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Every shard is loaded and holds a KV cache of `num_kv_blocks` blocks: start serving. max_model_len is
  // lowered to the tokens the cache holds when it held more (returned, for the caller to warn about).
  int Activate(int num_kv_blocks) ABSL_LOCKS_EXCLUDED(mu_);
  // The output rank's answer to a step: one token per sampled sequence in step order, and a logits row or
  // logprobs for each sampled sequence that asked for them (matched by seq_id). A result that does not fit
  // its step (an unknown step, a token count, a logits row or logprobs that do not match) fails the group
  // with INTERNAL.
  void OnStepResult(const control::v1::StepResult& result) ABSL_LOCKS_EXCLUDED(mu_);
  // The group is broken (a worker died, a step failed): every request ends with UNAVAILABLE carrying
  // `status`'s message; later Submits fail the same way.
  void Fail(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  // A worker was lost and the group is being re-formed: the steps in flight are dropped (their results, if
  // any come, are ignored), the KV cache is taken as empty (the prefix cache too), and every running sequence
  // is preempted, keeping its token log; no step is formed and ready() is false until Resume. Requests go on
  // being accepted and wait. Nothing happens after a Fail.
  void Suspend() ABSL_LOCKS_EXCLUDED(mu_);
  // The group is whole again: steps resume, and each preempted sequence prefills its token log again and goes
  // on from where it stopped (the same tokens under greedy or seeded sampling). After a Fail (no replacement
  // came in time), also clears the failure: the scheduler serves again.
  void Resume() ABSL_LOCKS_EXCLUDED(mu_);
  // The oldest step in flight: its id and how long ago it was sent (seconds); {0, 0} when none is.
  std::pair<uint64_t, double> OldestStepInFlight() const ABSL_LOCKS_EXCLUDED(mu_);
  // A graceful stop begins: later Submits fail with UNAVAILABLE ("draining") and ready() turns false; the
  // requests already accepted (running or waiting) go on to their end.
  void StartDraining() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits up to `timeout` until no request is running or waiting (or the group has failed); returns how many
  // requests are left (0: idle).
  int WaitIdle(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);

  // Control-plane figures for benchmarks: steps completed, and the sum over them of (time from handing the
  // step to the sink until its result was processed) and of the output rank's worker_seconds.
  struct Stats {
    int64_t steps = 0;
    int64_t graph_steps = 0;  // of steps: the output rank replayed a captured graph
    double step_seconds = 0;
    double worker_seconds = 0;
    double send_seconds = 0;      // of step_seconds: writing the steps to the workers
    double schedule_seconds = 0;  // forming steps (FormStepLocked), summed over the steps formed
    int64_t preemptions = 0;
    int64_t prefix_queries = 0;  // prompt tokens looked up in the prefix cache
    int64_t prefix_hits = 0;     // of them, found
    int64_t step_bytes = 0;      // serialized Steps formed, one copy each (the group sends it to every rank)
    int64_t result_bytes = 0;    // serialized StepResults applied (from the output rank)
  };
  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_);
  int num_free_blocks() const ABSL_LOCKS_EXCLUDED(mu_);
  int num_blocks() const ABSL_LOCKS_EXCLUDED(mu_);
  int max_model_len() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Request;
  // All fields of Seq and Request are guarded by mu_, except Request::observer (set before the request is
  // shared, never changed).
  struct Seq {
    uint64_t id = 0;  // the workers' name for it; a new one each time it starts or resumes
    Request* request = nullptr;
    int index = 0;                // choice index
    std::vector<int32_t> tokens;  // prompt + generated: the token log, kept through preemption
    int num_prompt = 0;
    int num_sent = 0;      // tokens the workers hold (computed, or in a step in flight)
    int num_computed = 0;  // of them, computed (their step's result came back)
    // Sequences start off the workers (new, forked or preempted): the next step that schedules them adds them
    // with num_sent tokens already in their blocks (a cached or shared prefix).
    bool on_workers = false;
    bool holds_last = false;  // n > 1 before the fork: prefill all but the prompt's last token, no sampling
    bool retired = false;     // its blocks are freed and the workers told to forget it (or never had it)
    uint64_t preempted_at_step = 0;  // the step being formed when it was last preempted
    BlockTable blocks;
    bool in_flight = false;
    bool done = false;
    double first_token_at = 0;  // steady-clock seconds; 0 = no token yet
    double last_token_at = 0;
  };
  struct Request : std::enable_shared_from_this<Request> {
    GenerationRequest params;
    std::shared_ptr<GenerationObserver> observer;
    std::vector<std::unique_ptr<Seq>> seqs;  // by choice index (after the fork: all n)
    int choices_left = 0;
    bool finished = false;      // OnDone is queued: no event follows
    bool reported_cached = false;  // OnCachedTokens is queued
    std::vector<TokenLogprob> prompt_logprobs;  // collected until the first token
    bool prompt_logprobs_sent = false;
    uint64_t order = 0;         // arrival order
    double arrival = 0;         // steady-clock seconds: Submit
    double admitted = 0;        // ... admission
  };
  // Waiting requests by (priority, arrival order).
  using WaitingKey = std::pair<int, uint64_t>;
  struct InFlight {
    std::vector<Seq*> scheduled;
    std::vector<int> chunk;  // tokens of scheduled[i] computed by the step
    std::vector<Seq*> sampled;
    double sent_at = 0;
    int num_tokens = 0;         // scheduled in this step
    int num_prompt_tokens = 0;  // of num_tokens: prompt tokens (prefill chunks)
  };
  // One observer call, queued under the lock and made outside it. It holds its request (and so the
  // observer) alive until it is delivered.
  struct Event {
    enum class Kind { kCached, kPromptLogprobs, kLogits, kLogprobs, kToken, kChoiceEnd, kDone };
    Kind kind = Kind::kToken;
    std::shared_ptr<Request> request = nullptr;
    int index = 0;  // choice
    int32_t token = 0;  // kToken; kCached: the cached prompt tokens
    FinishReason reason = FinishReason::kLength;
    absl::Status status = absl::OkStatus();
    std::vector<float> logits = {};           // [vocab]
    std::vector<TokenLogprob> logprobs = {};  // kLogprobs: one; kPromptLogprobs: the prompt's
  };
  using Dropped = std::vector<std::shared_ptr<Request>>;  // requests to release once the lock is not held

  // Takes the lock, admits what fits, delivers events and sends every step that can be formed; returns with
  // the lock released. If another thread is already pumping, leaves the work to it.
  void Pump() ABSL_LOCKS_EXCLUDED(mu_);
  // Delivers the queued events with mu_ released (it is held again on return), then ends the choices whose
  // OnToken answered true. The delivered requests are appended to `dropped`.
  void DeliverEventsLocked(Dropped& dropped) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails waiting requests older than max_queue_time with RESOURCE_EXHAUSTED.
  void ExpireLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Builds the next step from sequences not in flight; false when there is nothing to run. Requests that
  // are over are moved to `dropped`.
  bool FormStepLocked(std::string& serialized, Dropped& dropped) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tokens `seq` would compute next, and whether its last one is sampled.
  int PendingLocked(const Seq& seq) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds up to `budget` of seq's pending tokens to the step being formed, growing its blocks (preempting
  // lower-priority running sequences when `may_preempt`). Returns the tokens scheduled (0: it did not fit).
  int ScheduleSeqLocked(Seq& seq, int budget, bool may_preempt, control::v1::Step& step, InFlight& flight)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees the blocks of the lowest-priority, newest running sequence that is neither in flight nor in the step
  // being formed nor ranked above `keep`; false when there is none.
  bool PreemptOneLocked(const Seq& keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the best waiting request into running_ (its sequences not yet on the workers) when it fits
  // max_num_seqs and the free blocks hold its first chunk of up to `budget` tokens; null when it does not.
  Request* AdmitOneLocked(int budget) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // n > 1: seq 0 holds the prompt but its last token; the other choices share its blocks from here.
  void ForkLocked(Request& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies a step result (OnStepResult without the pumping).
  void ApplyStepResultLocked(const control::v1::StepResult& result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndChoiceLocked(Seq& seq, FinishReason reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishRequestLocked(Request& request, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees a sequence's blocks and has the workers forget it (a preempted one keeps running later).
  void ReleaseSeqLocked(Seq& seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RetireSeqLocked(Seq& seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SuspendLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the gauges (running and waiting choices, KV cache usage); nothing without metrics.
  void RecordGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool NotPumping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !pumping_; }
  // No request is waiting or unfinished, and every event has been delivered.
  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int NumUnfinishedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lower runs first: priority, then arrival, then choice.
  static bool RanksBefore(const Seq& a, const Seq& b);

  SchedulerOptions options_ ABSL_GUARDED_BY(mu_);
  StepSink& sink_;
  EngineMetrics* const metrics_;  // may be null; thread-safe, its locks are leaves (see the top)
  // The scheduler's only lock. It is never held while calling the sink or an observer, so it meets no other
  // lock (the sink's and the observers' are taken only with mu_ released).
  mutable absl::Mutex mu_;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // StartDraining: Submit refuses
  bool suspended_ ABSL_GUARDED_BY(mu_) = false;  // Suspend: no steps until Resume
  uint64_t first_live_step_ ABSL_GUARDED_BY(mu_) = 0;  // results of earlier steps are from a lost group
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);  // set once the group failed
  KvBlockPool blocks_ ABSL_GUARDED_BY(mu_);
  std::map<WaitingKey, std::shared_ptr<Request>> waiting_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<double, WaitingKey>> waiting_arrivals_ ABSL_GUARDED_BY(mu_);  // oldest first (lazy)
  std::vector<std::shared_ptr<Request>> running_ ABSL_GUARDED_BY(mu_);  // by priority, then admission
  std::unordered_map<std::string, Request*> by_id_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> forget_ ABSL_GUARDED_BY(mu_);  // sequences the workers must drop in the next step
  std::map<uint64_t, InFlight> in_flight_ ABSL_GUARDED_BY(mu_);
  // Per-step scratch: block ids handed to one sequence, copies for the step.
  std::vector<int32_t> new_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<KvBlockCopy> copies_ ABSL_GUARDED_BY(mu_);
  PrefixMatch match_ ABSL_GUARDED_BY(mu_);
  std::vector<KvBlockCopy> fork_copies_ ABSL_GUARDED_BY(mu_);  // from forks, for the next step
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);  // to deliver, in order (bounded: see the top)
  // The events being delivered (with mu_ released) and the step being formed: touched only by the thread
  // that pumps (pumping_), so they need no lock; kept to reuse their memory.
  std::vector<Event> delivering_;
  std::unique_ptr<control::v1::Step> step_;
  uint64_t next_seq_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_step_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_order_ ABSL_GUARDED_BY(mu_) = 1;
  int num_running_seqs_ ABSL_GUARDED_BY(mu_) = 0;  // choices of admitted requests not yet ended
  int num_waiting_seqs_ ABSL_GUARDED_BY(mu_) = 0;  // choices (n) of the requests in waiting_
  Stats stats_ ABSL_GUARDED_BY(mu_);
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;  // a thread is in Pump's loop
};

}  // namespace tessera
