// The Llama forward (Hugging Face LlamaForCausalLM semantics) written once against Backend: embedding,
// decoder layers (RMSNorm, GQA attention over the paged KV cache with llama3 RoPE, SiLU-gated MLP), final
// norm and lm_head for each sequence's last new token.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/parallel_config.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/kv_cache.h"
#include "worker/layers/parallel_linear.h"
#include "worker/model/batch.h"

namespace tessera {

struct LlamaModelOptions {
  int max_num_tokens = 512;  // most new tokens in one step (activation buffers are sized for it)
  int max_num_seqs = 64;     // most sequences in one step
  // This rank's place in tensor x pipeline parallelism and its TP group. Null parallel: the whole model here.
  // A pipeline stage loads only its layers (the first also the embedding, the last the final norm and
  // lm_head).
  const ParallelConfig* parallel = nullptr;
  int rank = 0;
  Communicator* tp_group = nullptr;  // required when parallel->tp_size() > 1
};

class LlamaModel {
 public:
  // Loads every weight of `checkpoint` (validated against config.json first) and allocates the activation
  // buffers once. `checkpoint` and `backend` must outlive the model. Errors: the checkpoint's (naming file
  // and tensor), RESOURCE_EXHAUSTED from the backend.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const Checkpoint& checkpoint,
                                                                        Backend& backend,
                                                                        const LlamaModelOptions& options);

  // Runs one step: writes the new tokens' keys and values into `kv_cache` and returns the logits
  // [num_seqs, vocab_size] (F32, on the backend, valid until the next call) of each sequence's last new
  // token. The batch must fit the options given to Load; batch.token_ids holds embedding rows (EmbeddingRow).
  // Errors: the TP group's (a peer failed or timed out).
  [[nodiscard]] absl::StatusOr<Tensor> Forward(const BatchMeta& batch, KvCache& kv_cache);

  // The row of this rank's embedding table that token `id` reads (the id itself without tensor parallelism).
  int32_t EmbeddingRow(int32_t id) const { return embed_tokens_.LocalRow(id); }
  // Where a stage other than the first expects its input hidden states, [num_tokens, hidden].
  Tensor StageInput(int num_tokens) const { return act_.residual.Rows(0, num_tokens); }
  bool is_first_stage() const { return parallel_.IsFirstStage(pp_rank_); }
  bool is_last_stage() const { return parallel_.IsLastStage(pp_rank_); }
  const ParallelConfig& parallel() const { return parallel_; }
  int rank() const { return options_.rank; }

  const ModelConfig& config() const { return config_; }
  const LlamaModelOptions& options() const { return options_; }
  KvCacheShape KvShape(int num_blocks) const;
  // Bytes of weights used in place from the checkpoint mapping plus those copied.
  int64_t weight_bytes() const { return weight_bytes_; }
  // Bytes of weights this rank holds in memory the backend allocated (the copies; on a GPU or the null
  // device, every weight).
  int64_t allocated_weight_bytes() const { return allocated_weight_bytes_; }

 private:
  // Head counts and widths are this rank's (local): nq = num_heads / tp, nkv = its KV heads, I = intermediate
  // / tp.
  struct Layer {
    Tensor input_norm;                  // [hidden]
    ColumnParallelLinear qkv_proj;      // [(nq + 2 * nkv) * head_dim, hidden]: q_proj, k_proj, v_proj fused
    RowParallelLinear o_proj;           // [hidden, nq * head_dim], all-reduced
    Tensor post_attn_norm;              // [hidden]
    ColumnParallelLinear gate_up_proj;  // [2 * I, hidden]: gate_proj, up_proj fused
    RowParallelLinear down_proj;        // [hidden, I], all-reduced
  };
  // Activation buffers, allocated once for options_.max_num_tokens rows (views are cut per step).
  struct Activations {
    Tensor hidden;           // [max_tokens, hidden]
    Tensor residual;         // [max_tokens, hidden]
    Tensor qkv;              // [max_tokens, (nq + 2 * nkv) * head_dim]
    Tensor q;                // [max_tokens, nq * head_dim], rotated
    Tensor attn;             // [max_tokens, nq * head_dim]
    Tensor gate_up;          // [max_tokens, 2 * I]
    Tensor mlp;              // [max_tokens, I]: silu(gate) * up
    Tensor last;             // [max_seqs, hidden]
    Tensor logits;           // [max_seqs, vocab] F32
    Tensor lm_head_scratch;  // the vocabulary-parallel lm_head's gather buffers (empty without TP)
  };

  LlamaModel(const ModelConfig& config, Backend& backend, const LlamaModelOptions& options,
             const ParallelConfig& parallel)
      : config_(config), backend_(backend), options_(options), parallel_(parallel) {}
  [[nodiscard]] absl::Status LoadWeights(const Checkpoint& checkpoint);
  [[nodiscard]] absl::Status AllocateActivations();
  [[nodiscard]] absl::Status Attention(const BatchMeta& batch, const Layer& layer, int layer_index,
                                       KvCache& kv_cache, int num_tokens);
  [[nodiscard]] absl::Status Mlp(const Layer& layer, int num_tokens);

  ModelConfig config_;
  Backend& backend_;
  LlamaModelOptions options_;
  RopeParams rope_;
  ParallelConfig parallel_;  // tp = pp = 1 when the options give none
  int tp_rank_ = 0;
  int pp_rank_ = 0;
  int num_local_heads_ = 0;
  int num_local_kv_heads_ = 0;
  int64_t local_intermediate_ = 0;
  VocabParallelEmbedding embed_tokens_;  // [vocab slice (+ zero row), hidden]
  std::vector<Layer> layers_;            // this stage's layers, in order
  Tensor final_norm_;                    // [hidden]
  ParallelLmHead lm_head_;               // [vocab slice, hidden] (the embedding's slice when tied)
  Activations act_;
  std::vector<DeviceBuffer> buffers_;  // copied weights and activation memory
  int64_t weight_bytes_ = 0;
  int64_t allocated_weight_bytes_ = 0;
};

}  // namespace tessera
