// The Llama forward (Hugging Face LlamaForCausalLM semantics) written once against Backend: embedding,
// decoder layers (RMSNorm, GQA attention over the paged KV cache with llama3 RoPE, SiLU-gated MLP), final
// norm and lm_head for each sequence's last new token.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/kv_cache.h"
#include "worker/model/batch.h"

namespace tessera {

struct LlamaModelOptions {
  int max_num_tokens = 512;  // most new tokens in one step (activation buffers are sized for it)
  int max_num_seqs = 64;     // most sequences in one step
};

class LlamaModel {
 public:
  // Loads every weight of `checkpoint` (validated against config.json first) and allocates the activation
  // buffers once. `checkpoint` and `backend` must outlive the model. Errors: the checkpoint's (naming file and
  // tensor), RESOURCE_EXHAUSTED from the backend.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const Checkpoint& checkpoint,
                                                                        Backend& backend,
                                                                        const LlamaModelOptions& options);

  // Runs one step: writes the new tokens' keys and values into `kv_cache` and returns the logits
  // [num_seqs, vocab_size] (F32, on the backend, valid until the next call) of each sequence's last new token.
  // The batch must fit the options given to Load.
  Tensor Forward(const BatchMeta& batch, KvCache& kv_cache);

  const ModelConfig& config() const { return config_; }
  const LlamaModelOptions& options() const { return options_; }
  KvCacheShape KvShape(int num_blocks) const;
  // Bytes of weights used in place from the checkpoint mapping plus those copied.
  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  struct Layer {
    Tensor input_norm;     // [hidden]
    Tensor q_proj;         // [num_heads * head_dim, hidden]
    Tensor k_proj;         // [num_kv_heads * head_dim, hidden]
    Tensor v_proj;         // [num_kv_heads * head_dim, hidden]
    Tensor o_proj;         // [hidden, num_heads * head_dim]
    Tensor post_attn_norm; // [hidden]
    Tensor gate_proj;      // [intermediate, hidden]
    Tensor up_proj;        // [intermediate, hidden]
    Tensor down_proj;      // [hidden, intermediate]
  };
  // Activation buffers, allocated once for options_.max_num_tokens rows (views are cut per step).
  struct Activations {
    Tensor hidden;    // [max_tokens, hidden]
    Tensor residual;  // [max_tokens, hidden]
    Tensor q;         // [max_tokens, num_heads * head_dim]
    Tensor k;         // [max_tokens, num_kv_heads * head_dim]
    Tensor v;         // [max_tokens, num_kv_heads * head_dim]
    Tensor attn;      // [max_tokens, num_heads * head_dim]
    Tensor gate;      // [max_tokens, intermediate]
    Tensor up;        // [max_tokens, intermediate]
    Tensor last;      // [max_seqs, hidden]
    Tensor logits;    // [max_seqs, vocab] F32
  };

  LlamaModel(const ModelConfig& config, Backend& backend, const LlamaModelOptions& options)
      : config_(config), backend_(backend), options_(options) {}
  [[nodiscard]] absl::Status LoadWeights(const Checkpoint& checkpoint);
  [[nodiscard]] absl::Status AllocateActivations();
  void Attention(const BatchMeta& batch, const Layer& layer, int layer_index, KvCache& kv_cache, int num_tokens);
  void Mlp(const Layer& layer, int num_tokens);

  ModelConfig config_;
  Backend& backend_;
  LlamaModelOptions options_;
  RopeParams rope_;
  Tensor embed_tokens;  // [vocab, hidden]
  std::vector<Layer> layers_;
  Tensor final_norm;    // [hidden]
  Tensor lm_head;       // [vocab, hidden] (the embedding when tied)
  Activations act_;
  std::vector<DeviceBuffer> buffers_;  // copied weights and activation memory
  int64_t weight_bytes_ = 0;
};

}  // namespace tessera
