// ModelRunner: runs forward steps of a LlamaModel over a set of sequences on one rank. It turns sequences
// into the flattened step layout (HostBatch), owns the KV cache and a simple block allocator, and samples.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/kv_cache.h"
#include "worker/model/batch.h"
#include "worker/model/llama.h"

namespace tessera {

// One sequence as the runner sees it. The runner fills block_table and num_computed_tokens.
struct Sequence {
  std::vector<int32_t> tokens;  // prompt followed by generated tokens
  int num_prompt_tokens = 0;
  int num_computed_tokens = 0;       // leading tokens whose keys and values are in the KV cache
  std::vector<int32_t> block_table;  // KV blocks holding tokens [16 * i, 16 * i + 16)
  SamplingRow sampling;
};

struct ModelRunnerOptions {
  LlamaModelOptions model;
  int num_kv_blocks = 0;  // KV cache size in 16-token blocks
  // With pipeline parallelism: the group of this rank's pipeline (the ranks of every stage with its tp_rank;
  // group rank = pp_rank). Hidden states move along it.
  Communicator* pp_group = nullptr;
};

class ModelRunner {
 public:
  // Loads the model and allocates the KV cache. `checkpoint` and `backend` must outlive the runner.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(const Checkpoint& checkpoint,
                                                                           Backend& backend,
                                                                           const ModelRunnerOptions& options);

  // One forward step: for each sequence, its tokens [num_computed_tokens, tokens.size()) are computed
  // (a prompt, part of one, or one decode token; prefill and decode mix freely), KV blocks are allocated
  // as needed and num_computed_tokens advances. Every stage of a pipeline runs the same steps: a stage other
  // than the first first receives the previous stage's hidden states, one other than the last sends its own
  // on. Returns, on the last stage, logits [seqs.size(), vocab] (F32 on the backend, valid until the next
  // step) of each sequence's last token, and an empty tensor on other stages. Errors also include the
  // communicators' (UNAVAILABLE / DEADLINE_EXCEEDED). Errors: INVALID_ARGUMENT (a sequence with no
  // new token, a token id outside the vocabulary, a context past max_position_embeddings, a step larger than
  // the options), RESOURCE_EXHAUSTED (KV cache full; nothing changed).
  [[nodiscard]] absl::StatusOr<Tensor> Forward(const std::vector<Sequence*>& seqs);

  // Samples one token per row of `logits` with each sequence's SamplingRow (step = tokens generated so far)
  // and appends it to the sequence.
  void SampleAndAppend(const Tensor& logits, const std::vector<Sequence*>& seqs);

  // Returns the sequence's KV blocks to the free list.
  void Release(Sequence& seq);

  const ModelConfig& config() const { return model_->config(); }
  Backend& backend() { return backend_; }
  int num_free_blocks() const { return allocator_.num_free(); }

 private:
  ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model, KvCache kv_cache, int num_blocks,
              Communicator* pp_group);
  [[nodiscard]] absl::Status BuildBatch(const std::vector<Sequence*>& seqs);
  BatchMeta UploadBatch();

  Backend& backend_;
  std::unique_ptr<LlamaModel> model_;
  KvCache kv_cache_;
  BlockAllocator allocator_;
  Communicator* pp_group_;
  HostBatch host_;
  int max_blocks_per_seq_ = 0;
  DeviceBuffer device_meta_;  // int32 mirror of host_ (one allocation, sized for the options' maxima)
  // Per-step scratch, kept to reuse its capacity.
  std::vector<int32_t> staging_;  // host_ packed for one copy to device_meta_
  std::vector<int> blocks_wanted_;
  std::vector<SamplingRow> sampling_rows_;
  std::vector<int32_t> sampled_;
};

}  // namespace tessera
