// WorkerShard: the worker's side of the control plane (proto/tessera/control/v1/control.proto) without the
// transport. It takes one CoordinatorMessage at a time (setup, steps, reset, ...) and returns the
// WorkerMessages to send back (acks, step results, errors); worker_process.h carries them over the Session
// stream.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tls.h"
#include "kernels/backend.h"
#include "kernels/sampler.h"
#include "parallel/communicator.h"
#include "parallel/communicator_slot.h"
#include "parallel/parallel_config.h"
#include "tessera/control/v1/control.pb.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/model_runner.h"
#include "worker/step_delta.h"

namespace tessera {

struct WorkerShardOptions {
  // From RegisterResponse.
  int rank = 0;
  int world_size = 1;
  uint64_t epoch = 0;
  // The device the worker registered with; assign_shard's device, when set, wins.
  DeviceKind device = DeviceKind::kCpu;
  // CUDA: the GPU this worker uses; -1 = its rank modulo the GPUs the process sees (one rank per GPU, the
  // layout of a node whose workers are ranks 0..N-1 of N GPUs; set CUDA_VISIBLE_DEVICES or this otherwise).
  int device_index = -1;
  std::string listen_host = "127.0.0.1";  // the address this rank's Gloo connections listen on
  TlsFiles control_tls;  // the rendezvous store's channel (the worker's --control-* files); empty: plaintext
  // Receives one line (no newline) per setup phase, e.g. "worker rank 0: loaded weights in 1.2 s (B bytes)".
  std::function<void(const std::string&)> log;
};

// Handles the messages of one worker's session, in order. Not thread-safe: one caller at a time.
//
// - Any message of another epoch: FAILED_PRECONDITION "stale epoch E (worker is in epoch F)"; otherwise
//   ignored.
// - Setup, each answered by an Ack (message = the body's field number, seconds = time taken), in the proto's
//   order (a message out of order is FAILED_PRECONDITION): assign_shard (opens the checkpoint, checks the
//   split against config.json and tp x pp against the group, creates the backend: CPU threads = num_threads,
//   or cores / world_size when 0), init_comm (joins the Gloo groups "<prefix>/tp<pp_rank>" when tp > 1 and
//   "<prefix>/pp<tp_rank>" when pp > 1 through the Rendezvous store; nothing to join in a group of one),
//   load_weights (Ack: bytes_read, peak_rss_bytes), profile_memory (Ack: kv_block_bytes, max_kv_blocks; may
//   repeat), allocate_kv_cache.
// - step: parsed from its bytes, applied in the proto's order (finished, new_sequences, then each scheduled
//   sequence's tokens and new_block_ids appended), then one ModelRunner::Forward over the scheduled sequences
//   in step order. The output rank answers with a StepResult (a token per sequence with sample = true, in
//   step order; empty when none; `graph` when the step replayed a captured graph; a LogitsRow before sampling
//   for each sampled sequence created with return_logits); other ranks answer nothing. A sequence's tokens
//   come only from the steps (the output rank does not append what it sampled: the coordinator sends it
//   back). A failed step leaves the sequences as they were. SamplingParams.top_p = 0 (proto3's unset) means
//   off, like 1.
// - reset: forgets every sequence. With new_epoch (the group is re-formed after a lost rank): also closes the
//   communicators (the model keeps its weights and KV cache), moves to new_epoch, and waits for an init_comm
//   that joins the new groups and returns the worker to where it was (ready, when it was); anything else
//   before that init_comm is out of order. drain: Ack with peak_rss_bytes (steps run in order, so every earlier one
//   is done; later steps are still taken). shutdown: done() turns true, no reply. heartbeat: no reply.
// Errors are WorkerErrors with the absl code; the message starts with "rank R: " and names the culprit (the
// message kind, file, tensor, sequence id, ...); a failed step's error carries its step_id.
class WorkerShard {
 public:
  using Clock = std::chrono::steady_clock;

  explicit WorkerShard(const WorkerShardOptions& options);
  ~WorkerShard();
  WorkerShard(const WorkerShard&) = delete;
  WorkerShard& operator=(const WorkerShard&) = delete;

  // Handles `message`, received at `received` (a StepResult's worker_seconds count from then), and returns
  // the replies to send, in order (often none).
  std::vector<control::v1::WorkerMessage> Handle(const control::v1::CoordinatorMessage& message,
                                                 Clock::time_point received);
  std::vector<control::v1::WorkerMessage> Handle(const control::v1::CoordinatorMessage& message) {
    return Handle(message, Clock::now());
  }

  // True once a shutdown message was handled: the transport closes the session.
  bool done() const { return done_; }
  // The runner's compute time so far (ModelRunner::compute_seconds), updated after each step; thread-safe (the
  // heartbeat thread reads it).
  double busy_seconds() const { return busy_seconds_.load(std::memory_order_relaxed); }
  int rank() const { return options_.rank; }
  // The epoch this worker is in: RegisterResponse's, then each Reset's new_epoch. Thread-safe (the heartbeat
  // thread stamps its messages with it).
  uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }
  // Thread-safe (the transport's reader thread calls it when a Reset with a new epoch arrives, while this
  // shard's thread may be stuck in a step): aborts the communicators, so that a step waiting on a peer of the
  // abandoned group fails at once instead of waiting out --comm-timeout.
  void AbortCommunicators();
  // The sequences this worker keeps (for tests).
  int num_sequences() const { return seqs_.size(); }

  // The KV cache budget of one rank when the coordinator leaves it to the worker (kv_cache_memory_bytes = 0):
  // a quarter of the host's MemAvailable (/proc/meminfo) split evenly over `world_size` ranks (the worker
  // cannot know how many share its host, so it assumes all do). The same rule is used for CUDA devices for
  // now (the Backend interface has no free-memory query yet). Errors: UNAVAILABLE when /proc/meminfo cannot
  // be read.
  [[nodiscard]] static absl::StatusOr<int64_t> DefaultKvCacheBudget(int world_size);
  // The KV cache budget on a backend that accounts its memory (Backend::Memory: the null device): what a real
  // device of that capacity would hold, kGpuMemoryUtilization of the capacity less what is already allocated
  // (weights, activations), as vLLM's --gpu-memory-utilization. Errors: FAILED_PRECONDITION naming the bytes
  // when nothing is left.
  static constexpr double kGpuMemoryUtilization = 0.9;
  [[nodiscard]] static absl::StatusOr<int64_t> AccountedKvCacheBudget(const MemoryInfo& memory);

 private:
  enum class Phase { kNew, kAssigned, kConnected, kLoaded, kReady };

  // Each fills the figures of its Ack (Handle sends it with the time taken), or fails (Handle prefixes the
  // rank).
  [[nodiscard]] absl::Status AssignShard(const control::v1::AssignShard& assign);
  [[nodiscard]] absl::Status InitComm(const control::v1::InitComm& init);
  [[nodiscard]] absl::Status LoadWeights(control::v1::Ack& ack);
  [[nodiscard]] absl::Status ProfileMemory(const control::v1::ProfileMemory& profile, control::v1::Ack& ack);
  [[nodiscard]] absl::Status AllocateKvCache(const control::v1::AllocateKvCache& allocate);
  // Runs a step; on the output rank fills `result`. Sets `step_id` as soon as it is known.
  [[nodiscard]] absl::Status Step(const std::string& bytes, Clock::time_point received, uint64_t& step_id,
                                  control::v1::StepResult& result, bool& has_result);
  void Log(const std::string& line) const;

  // Appends, for a sequence with prompt_logprobs whose last computed position p is followed by a prompt
  // token, that token's logprobs from `row` (position p's logits).
  [[nodiscard]] absl::Status AddPromptLogprobs(uint64_t seq_id, const SequenceEntry& entry, const Tensor& row,
                                               control::v1::StepResult& result);
  // Appends `row` (one sequence's float32 logits, before sampling touches them) to the result.
  [[nodiscard]] absl::Status AddLogitsRow(uint64_t seq_id, const Tensor& row,
                                          control::v1::StepResult& result);

  WorkerShardOptions options_;
  Phase phase_ = Phase::kNew;
  bool done_ = false;
  control::v1::AssignShard assign_;
  std::unique_ptr<ParallelConfig> parallel_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Backend> backend_;
  DeviceKind device_ = DeviceKind::kCpu;    // assign_shard's choice
  int device_index_ = 0;                    // CUDA: the GPU
  bool use_nccl_ = false;                   // CUDA: NCCL between ranks, else Gloo staged through the host
  // When tp > 1: this stage's TP ranks; when pp > 1: this TP rank's pipeline. Slots, so that a re-formed group
  // replaces the communicators under the model.
  std::unique_ptr<CommunicatorSlot> tp_group_;
  std::unique_ptr<CommunicatorSlot> pp_group_;
  // The same slots for AbortCommunicators on another thread (set once, when created).
  std::atomic<CommunicatorSlot*> tp_slot_{nullptr};
  std::atomic<CommunicatorSlot*> pp_slot_{nullptr};
  std::atomic<uint64_t> epoch_;
  // A Reset with new_epoch took the worker back to kAssigned from here; its next init_comm returns to it.
  Phase rejoin_phase_ = Phase::kNew;
  std::unique_ptr<ModelRunner> runner_;
  std::atomic<double> busy_seconds_{0};
  SequenceTable seqs_;  // the batch every rank keeps, by seq_id
  // Per-step scratch, kept to reuse its capacity.
  std::vector<Sequence*> sample_run_;
  std::vector<float> host_row_;                             // one logits row on the host
  SampleScratch logprob_scratch_;
  std::vector<int32_t> sampled_;
};

}  // namespace tessera
