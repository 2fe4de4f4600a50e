// ModelRunner: runs forward steps of a LlamaModel over a set of sequences on one rank. It turns sequences
// (with the KV block tables their caller chose) into the flattened step layout (HostBatch), owns the KV cache
// storage, and samples. Block allocation belongs to the caller: the coordinator's block manager in serving,
// a BlockAllocator (worker/kv_cache.h) in `tessera generate`, tests and benchmarks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/kv_cache.h"
#include "worker/model/batch.h"
#include "worker/model/captured_step.h"
#include "worker/model/llama.h"

namespace tessera {

// One sequence as the runner sees it. The caller fills tokens, block_table and sampling; the runner advances
// num_computed_tokens.
struct Sequence {
  uint64_t id = 0;              // names the sequence in error messages
  std::vector<int32_t> tokens;  // prompt followed by generated tokens
  int num_prompt_tokens = 0;
  int num_computed_tokens = 0;       // leading tokens whose keys and values are in the KV cache
  std::vector<int32_t> block_table;  // KV blocks holding tokens [16 * i, 16 * i + 16)
  // The row's scalars (top_logprobs -1: no logprobs); ModelRunner::Sample sets its pointers and step from
  // the fields here.
  SamplingRow sampling;
  std::vector<LogitBias> logit_bias;
  std::vector<int32_t> stop_token_ids;  // cannot be drawn while fewer than min_tokens have been generated
  int min_tokens = 0;
};

struct ModelRunnerOptions {
  LlamaModelOptions model;
  // With pipeline parallelism: the group of this rank's pipeline (the ranks of every stage with its tp_rank;
  // group rank = pp_rank). Hidden states move along it.
  Communicator* pp_group = nullptr;
  // Decode steps (one new token per sequence) of up to this many sequences replay step graphs captured by
  // CaptureGraphs, padded to the next captured batch size (1, 2, 4, then multiples of 8, and this number).
  // 0: every step runs eagerly. -1: the device's default, min(256, max_num_seqs) on CUDA (CUDA graphs) and 0
  // on the CPU (where graphs are a call list that saves nothing; tests use them to cover the graph path).
  int graph_max_batch = -1;
};

class ModelRunner {
 public:
  // Loads this rank's weights; the KV cache comes later (AllocateKvCache), once its size is known.
  // `checkpoint` and `backend` must outlive the runner. Errors: the model's (naming file and tensor),
  // INVALID_ARGUMENT when pp > 1 without a pipeline group of that size.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(const Checkpoint& checkpoint,
                                                                           Backend& backend,
                                                                           const ModelRunnerOptions& options);

  // Bytes one KV block (kKvBlockSize tokens, every layer of this stage, keys and values, this rank's KV
  // heads) takes on this rank.
  int64_t KvBlockBytes() const;
  // Allocates the KV cache: `num_blocks` blocks, ids [0, num_blocks). Errors: INVALID_ARGUMENT (num_blocks
  // <= 0), FAILED_PRECONDITION (already allocated), RESOURCE_EXHAUSTED (the memory is not there).
  [[nodiscard]] absl::Status AllocateKvCache(int num_blocks);
  // 0 before AllocateKvCache.
  int num_kv_blocks() const { return kv_cache_ ? kv_cache_->shape().num_blocks : 0; }
  // Copies every layer's keys and values of block src into block dst for each (src, dst), in order: the
  // copy-on-write of a block shared by forked sequences. Errors (nothing copied): FAILED_PRECONDITION before
  // AllocateKvCache; INVALID_ARGUMENT naming a block id outside [0, num_kv_blocks) or a copy onto itself.
  [[nodiscard]] absl::Status CopyKvBlocks(const std::vector<std::pair<int32_t, int32_t>>& copies);

  // Captures the decode-step graphs, one per batch size (after AllocateKvCache; nothing to do when graphs are
  // off). Each is warmed up with one eager step of padding rows (no KV cache slot is written) whose
  // collectives run for real, so every rank of a TP group must call this at the same time; pipeline stages
  // capture independently. Errors: FAILED_PRECONDITION before AllocateKvCache or when already captured; the
  // backend's (UNIMPLEMENTED where it has no graphs) and the TP group's. On error no graph is kept.
  [[nodiscard]] absl::Status CaptureGraphs();
  // The batch sizes CaptureGraphs captures (empty: graphs are off).
  const std::vector<int>& graph_batch_sizes() const { return graph_sizes_; }
  int num_graphs() const { return static_cast<int>(graphs_.size()); }
  // The segments of captured graph i (1 with a stream-ordered TP group or none; with a host-synchronous one,
  // one more than the step's collectives).
  int graph_segments(int i) const { return graphs_[i].num_segments(); }
  // Forward steps that replayed a graph so far.
  int64_t graph_steps() const { return graph_steps_; }
  // Seconds spent computing steps so far: each Forward from its input (after the previous stage's hidden
  // states arrived) until its output is ready (before it is sent on).
  double compute_seconds() const { return compute_seconds_; }

  // One forward step: for each sequence, its tokens [num_computed_tokens, tokens.size()) are computed
  // (a prompt, part of one, or one decode token; prefill and decode mix freely) into the KV blocks of its
  // block_table, which must cover every token (ceil(tokens / 16) blocks at least), and num_computed_tokens
  // advances. Every stage of a pipeline runs the same steps: a stage other than the first first receives the
  // previous stage's hidden states, one other than the last sends its own on. A decode step of at most
  // graph_batch_sizes().back() sequences replays the smallest captured graph that holds it. Returns, on the
  // output rank (TP rank 0 of the last stage), logits [seqs.size(), vocab] (F32 on the backend, valid until the
  // next step) of each sequence's last token; on the last stage's other TP ranks a tensor of that shape whose
  // contents are unspecified; an empty tensor on other stages. The step's work has finished on return (the
  // backend is synchronized, and a stream-ordered TP group's step status checked). Errors (naming the sequence; nothing
  // changed): FAILED_PRECONDITION before AllocateKvCache; INVALID_ARGUMENT for a sequence with no new token,
  // a token id outside the vocabulary, a context past max_position_embeddings, a block table too short or
  // with a block id outside [0, num_kv_blocks), a step larger than the options; and the communicators'
  // (UNAVAILABLE / DEADLINE_EXCEEDED) and the backend's (the device failed: INTERNAL, RESOURCE_EXHAUSTED).
  [[nodiscard]] absl::StatusOr<Tensor> Forward(const std::vector<Sequence*>& seqs);
  // Forgets the captured graphs (every later step runs eagerly): a re-formed TP group's stream-ordered
  // communicator is a new one, and the old graphs have the old one's collectives baked in.
  void DropGraphs();

  // Samples one token per row of `logits` ([seqs.size(), vocab], as Forward returned it or rows of it) with
  // each sequence's SamplingRow (step = tokens generated so far; the penalties over its tokens; its logit
  // bias; its stop_token_ids banned while fewer than min_tokens tokens have been generated) into `tokens`
  // (resized to seqs.size()). With `want_logprobs`, the rows whose sampling.top_logprobs >= 0 also get their
  // token's raw logprobs in sampled_logprobs()[row]; without, none are computed. Sequences are not changed.
  // Errors: the backend's (the device failed).
  [[nodiscard]] absl::Status Sample(const Tensor& logits, const std::vector<Sequence*>& seqs,
                                    std::vector<int32_t>& tokens, bool want_logprobs = false);
  // After Sample(..., true): entry s for each row s whose sequence asked for logprobs (others unspecified).
  const std::vector<SampleLogprobs>& sampled_logprobs() const { return sampled_logprobs_; }
  // Sample, then appends each token to its sequence.
  [[nodiscard]] absl::Status SampleAndAppend(const Tensor& logits, const std::vector<Sequence*>& seqs);

  const ModelConfig& config() const { return model_->config(); }
  const ParallelConfig& parallel() const { return model_->parallel(); }
  // Bytes of this rank's weights in backend memory (LlamaModel::allocated_weight_bytes).
  int64_t allocated_weight_bytes() const { return model_->allocated_weight_bytes(); }
  Backend& backend() { return backend_; }

 private:
  ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model, std::unique_ptr<SegmentingGroup> tp_group,
              Communicator* pp_group, std::vector<int> graph_sizes);
  [[nodiscard]] absl::Status BuildBatch(const std::vector<Sequence*>& seqs);
  BatchMeta UploadBatch();
  // After a step's work is enqueued: has the TP group watch it, waits for the backend, and returns the
  // backend's and the group's verdict on it.
  [[nodiscard]] absl::Status FinishStep();
  // The graph layout of device_meta_ for `batch` rows (the first host_.num_seqs() of them this step's, the
  // rest padding), uploaded. With `padding_only`, every row is padding (for warm-up and capture).
  BatchMeta UploadGraphBatch(int batch, bool padding_only);

  Backend& backend_;
  std::unique_ptr<SegmentingGroup> tp_group_;  // the model's TP group (null without TP); owned here
  std::unique_ptr<LlamaModel> model_;
  std::optional<KvCache> kv_cache_;  // set by AllocateKvCache
  Communicator* pp_group_;
  HostBatch host_;
  int max_blocks_per_seq_ = 0;  // the most blocks a sequence can use: min(num_kv_blocks, max positions / 16)
  // int32 mirror of host_ (one allocation, sized for the options' maxima). Eager steps pack the arrays one
  // after another; graph steps use a fixed layout (the pointers baked into the graphs), after the eager part.
  DeviceBuffer device_meta_;
  int64_t graph_meta_offset_ = 0;     // in int32s
  std::vector<int> graph_sizes_;      // ascending
  std::vector<CapturedStep> graphs_;  // graphs_[i] serves graph_sizes_[i] rows
  int64_t graph_steps_ = 0;
  double compute_seconds_ = 0;
  // Per-step scratch, kept to reuse its capacity.
  std::vector<int32_t> staging_;  // host_ packed for one copy to device_meta_ (or the graph layout's head)
  std::vector<SamplingRow> sampling_rows_;
  std::vector<int32_t> sampled_;
  std::vector<SampleLogprobs> sampled_logprobs_;
};

}  // namespace tessera
