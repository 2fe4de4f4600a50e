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
  SamplingRow sampling;
};

struct ModelRunnerOptions {
  LlamaModelOptions model;
  // With pipeline parallelism: the group of this rank's pipeline (the ranks of every stage with its tp_rank;
  // group rank = pp_rank). Hidden states move along it.
  Communicator* pp_group = nullptr;
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

  // One forward step: for each sequence, its tokens [num_computed_tokens, tokens.size()) are computed
  // (a prompt, part of one, or one decode token; prefill and decode mix freely) into the KV blocks of its
  // block_table, which must cover every token (ceil(tokens / 16) blocks at least), and num_computed_tokens
  // advances. Every stage of a pipeline runs the same steps: a stage other than the first first receives the
  // previous stage's hidden states, one other than the last sends its own on. Returns, on the last stage,
  // logits [seqs.size(), vocab] (F32 on the backend, valid until the next step) of each sequence's last
  // token, and an empty tensor on other stages. Errors (naming the sequence; nothing changed):
  // FAILED_PRECONDITION before AllocateKvCache; INVALID_ARGUMENT for a sequence with no new token, a token id
  // outside the vocabulary, a context past max_position_embeddings, a block table too short or with a block
  // id outside [0, num_kv_blocks), a step larger than the options; and the communicators' (UNAVAILABLE /
  // DEADLINE_EXCEEDED).
  [[nodiscard]] absl::StatusOr<Tensor> Forward(const std::vector<Sequence*>& seqs);

  // Samples one token per row of `logits` ([seqs.size(), vocab], as Forward returned it or rows of it) with
  // each sequence's SamplingRow (step = tokens generated so far) into `tokens` (resized to seqs.size()).
  // Sequences are not changed.
  void Sample(const Tensor& logits, const std::vector<Sequence*>& seqs, std::vector<int32_t>& tokens);
  // Sample, then appends each token to its sequence.
  void SampleAndAppend(const Tensor& logits, const std::vector<Sequence*>& seqs);

  const ModelConfig& config() const { return model_->config(); }
  const ParallelConfig& parallel() const { return model_->parallel(); }
  Backend& backend() { return backend_; }

 private:
  ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model, Communicator* pp_group);
  [[nodiscard]] absl::Status BuildBatch(const std::vector<Sequence*>& seqs);
  BatchMeta UploadBatch();

  Backend& backend_;
  std::unique_ptr<LlamaModel> model_;
  std::optional<KvCache> kv_cache_;  // set by AllocateKvCache
  Communicator* pp_group_;
  HostBatch host_;
  int max_blocks_per_seq_ = 0;  // the most blocks a sequence can use: min(num_kv_blocks, max positions / 16)
  DeviceBuffer device_meta_;    // int32 mirror of host_ (one allocation, sized for the options' maxima)
  // Per-step scratch, kept to reuse its capacity.
  std::vector<int32_t> staging_;  // host_ packed for one copy to device_meta_
  std::vector<SamplingRow> sampling_rows_;
  std::vector<int32_t> sampled_;
};

}  // namespace tessera
