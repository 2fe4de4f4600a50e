// Scheduler: the Engine over a group of workers. Requests are admitted in arrival order while the batch has
// room (max_num_seqs) and the KV cache can reserve their worst case; the running batch grows and shrinks at
// step boundaries. Each step is a delta against the workers' batches (finished, new and scheduled sequences,
// prompt chunks within max_num_batched_tokens, sampled tokens fed back, new block ids), serialized once and
// handed to a StepSink. With pipeline parallelism up to max_steps_in_flight micro-batches (disjoint sets of
// sequences) are in flight so that stages overlap. There is no scheduler thread: whichever call changes the
// state (Submit, Cancel, OnStepResult, Activate) forms and sends the steps that became possible, one caller
// at a time, so that every worker receives the steps in the same order and a decode step is sent from the
// thread that delivered the previous result, without a thread hop.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "coordinator/block_manager.h"
#include "coordinator/engine.h"

namespace tessera {

// Where steps go (the worker group). SendStep is called by one thread at a time, without the scheduler's
// lock.
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
  int max_num_seqs = 64;              // sequences (choices) in the running batch
  int max_num_batched_tokens = 2048;  // tokens in one step (longer prompts are prefilled in chunks)
  int max_queued_requests = 1024;     // waiting to be admitted; more is RESOURCE_EXHAUSTED
  int max_steps_in_flight = 1;        // pipeline micro-batches: pp
};

class Scheduler final : public Engine {
 public:
  // `sink` must outlive the scheduler. The scheduler is not ready (Submit fails with UNAVAILABLE) until
  // Activate.
  Scheduler(const SchedulerOptions& options, StepSink& sink);
  ~Scheduler() override;  // fails what is left with UNAVAILABLE

  [[nodiscard]] absl::Status Submit(GenerationRequest request,
                                    std::shared_ptr<GenerationObserver> observer) override;
  [[nodiscard]] absl::Status Cancel(const std::string& request_id) override;
  bool ready() const override;

  // Every shard is loaded and holds a KV cache of `num_kv_blocks` blocks: start serving.
  void Activate(int num_kv_blocks);
  // The output rank's answer to step `step_id`: one token per sampled sequence, in step order.
  void OnStepResult(uint64_t step_id, const std::vector<int32_t>& tokens, double worker_seconds);
  // The group is broken (a worker died, a step failed): every request ends with UNAVAILABLE carrying
  // `status`'s message; later Submits fail the same way.
  void Fail(const absl::Status& status);

  // Control-plane figures for benchmarks: steps completed, and the sum over them of (time from handing the
  // step to the sink until its result was processed) and of the output rank's worker_seconds.
  struct Stats {
    int64_t steps = 0;
    double step_seconds = 0;
    double worker_seconds = 0;
    double send_seconds = 0;  // of step_seconds: writing the steps to the workers
  };
  Stats stats() const;
  int num_free_blocks() const;

 private:
  struct Request;
  struct Seq {
    uint64_t id = 0;
    Request* request = nullptr;
    int index = 0;                // choice index
    std::vector<int32_t> tokens;  // prompt + generated
    int num_prompt = 0;
    int num_sent = 0;  // tokens the workers hold
    int reserved = 0;  // blocks reserved at admission
    std::vector<int32_t> blocks;
    bool in_flight = false;
    bool done = false;
  };
  struct Request {
    GenerationRequest params;
    std::shared_ptr<GenerationObserver> observer;  // null once OnDone was called
    std::vector<std::unique_ptr<Seq>> seqs;
    int choices_left = 0;
  };
  struct InFlight {
    std::vector<Seq*> scheduled;
    std::vector<Seq*> sampled;
    double sent_at = 0;
  };

  // Admits what fits and sends every step that can be formed; returns with `lock` held. If another thread is
  // already sending, leaves the work to it.
  void Pump(std::unique_lock<std::mutex>& lock);
  void AdmitLocked();
  // Builds the next step from sequences not in flight; false when there is nothing to run.
  bool FormStepLocked(std::string& serialized);
  void EndChoiceLocked(Seq& seq, FinishReason reason);
  void FinishRequestLocked(Request& request, const absl::Status& status);
  void RetireSeqLocked(Seq& seq);
  void FailLocked(const absl::Status& status);

  SchedulerOptions options_;
  StepSink& sink_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool ready_ = false;
  bool stopping_ = false;
  absl::Status failure_;  // set once the group failed
  BlockManager blocks_;
  std::deque<std::unique_ptr<Request>> waiting_;
  std::vector<std::unique_ptr<Request>> running_;
  std::unordered_map<std::string, Request*> by_id_;
  std::vector<uint64_t> forget_;  // sequences the workers must drop in the next step
  std::map<uint64_t, InFlight> in_flight_;
  std::vector<int32_t> new_ids_;  // per-step scratch: block ids handed out to one sequence
  uint64_t next_seq_id_ = 1;
  uint64_t next_step_id_ = 1;
  int num_running_seqs_ = 0;
  Stats stats_;
  bool pumping_ = false;  // a thread is in Pump
  bool repump_ = false;   // state changed while it was sending
};

}  // namespace tessera
