#include "worker/model/llama.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/core/status_macros.h"
#include "worker/weight_loader.h"

namespace tessera {
namespace {

// Rows [0, n) of a buffer allocated for more.
Tensor Head(const Tensor& t, int64_t n) { return t.Rows(0, n); }

}  // namespace

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const Checkpoint& checkpoint, Backend& backend,
                                                             const LlamaModelOptions& options) {
  if (options.max_num_tokens <= 0 || options.max_num_seqs <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_num_tokens=", options.max_num_tokens,
                                                   " and max_num_seqs=", options.max_num_seqs, " must be positive"));
  }
  RETURN_IF_ERROR(checkpoint.ValidateForLlama());
  std::unique_ptr<LlamaModel> model(new LlamaModel(checkpoint.config(), backend, options));
  RETURN_IF_ERROR(model->LoadWeights(checkpoint));
  RETURN_IF_ERROR(model->AllocateActivations());
  return model;
}

absl::Status LlamaModel::LoadWeights(const Checkpoint& checkpoint) {
  const ModelConfig& c = config_;
  if (c.rope_scaling.has_value()) {
    rope_.llama3_scaling = true;
    rope_.factor = static_cast<float>(c.rope_scaling->factor);
    rope_.low_freq_factor = static_cast<float>(c.rope_scaling->low_freq_factor);
    rope_.high_freq_factor = static_cast<float>(c.rope_scaling->high_freq_factor);
    rope_.original_max_position_embeddings = c.rope_scaling->original_max_position_embeddings;
  }
  rope_.theta = static_cast<float>(c.rope_theta);

  WeightLoader loader(checkpoint, backend_);
  auto load = [&](const std::string& name, Tensor& dst) -> absl::Status {
    ASSIGN_OR_RETURN(dst, loader.Load(name));
    weight_bytes_ += dst.nbytes();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(load("model.embed_tokens.weight", embed_tokens));
  layers_.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    Layer& l = layers_[i];
    std::string p = absl::StrCat("model.layers.", i, ".");
    RETURN_IF_ERROR(load(p + "input_layernorm.weight", l.input_norm));
    RETURN_IF_ERROR(load(p + "self_attn.q_proj.weight", l.q_proj));
    RETURN_IF_ERROR(load(p + "self_attn.k_proj.weight", l.k_proj));
    RETURN_IF_ERROR(load(p + "self_attn.v_proj.weight", l.v_proj));
    RETURN_IF_ERROR(load(p + "self_attn.o_proj.weight", l.o_proj));
    RETURN_IF_ERROR(load(p + "post_attention_layernorm.weight", l.post_attn_norm));
    RETURN_IF_ERROR(load(p + "mlp.gate_proj.weight", l.gate_proj));
    RETURN_IF_ERROR(load(p + "mlp.up_proj.weight", l.up_proj));
    RETURN_IF_ERROR(load(p + "mlp.down_proj.weight", l.down_proj));
  }
  RETURN_IF_ERROR(load("model.norm.weight", final_norm));
  if (c.tie_word_embeddings && !checkpoint.Has("lm_head.weight")) {
    lm_head = embed_tokens;
  } else {
    RETURN_IF_ERROR(load("lm_head.weight", lm_head));
  }
  for (DeviceBuffer& b : loader.TakeBuffers()) buffers_.push_back(std::move(b));
  return absl::OkStatus();
}

absl::Status LlamaModel::AllocateActivations() {
  const ModelConfig& c = config_;
  const int64_t t = options_.max_num_tokens, s = options_.max_num_seqs;
  const int64_t q_width = int64_t{c.num_attention_heads} * c.head_dim;
  const int64_t kv_width = int64_t{c.num_key_value_heads} * c.head_dim;
  DType act = backend_.activation_dtype();
  auto alloc = [&](DType dtype, int64_t rows, int64_t cols, Tensor& dst) -> absl::Status {
    ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.Allocate(rows * cols * DTypeSize(dtype)));
    dst = buffer.View(dtype, {rows, cols});
    buffers_.push_back(std::move(buffer));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(alloc(act, t, c.hidden_size, act_.hidden));
  RETURN_IF_ERROR(alloc(act, t, c.hidden_size, act_.residual));
  RETURN_IF_ERROR(alloc(act, t, q_width, act_.q));
  RETURN_IF_ERROR(alloc(act, t, kv_width, act_.k));
  RETURN_IF_ERROR(alloc(act, t, kv_width, act_.v));
  RETURN_IF_ERROR(alloc(act, t, q_width, act_.attn));
  RETURN_IF_ERROR(alloc(act, t, c.intermediate_size, act_.gate));
  RETURN_IF_ERROR(alloc(act, t, c.intermediate_size, act_.up));
  RETURN_IF_ERROR(alloc(act, s, c.hidden_size, act_.last));
  RETURN_IF_ERROR(alloc(DType::kF32, s, c.vocab_size, act_.logits));
  return absl::OkStatus();
}

KvCacheShape LlamaModel::KvShape(int num_blocks) const {
  KvCacheShape shape;
  shape.num_layers = config_.num_hidden_layers;
  shape.num_blocks = num_blocks;
  shape.num_kv_heads = config_.num_key_value_heads;
  shape.head_dim = config_.head_dim;
  return shape;
}

void LlamaModel::Attention(const BatchMeta& batch, const Layer& layer, int layer_index, KvCache& kv_cache,
                           int num_tokens) {
  const ModelConfig& c = config_;
  Tensor x = Head(act_.hidden, num_tokens);
  Tensor q = Head(act_.q, num_tokens), k = Head(act_.k, num_tokens), v = Head(act_.v, num_tokens);
  backend_.Linear(x, layer.q_proj, q);
  backend_.Linear(x, layer.k_proj, k);
  backend_.Linear(x, layer.v_proj, v);
  backend_.Rope(batch.attention, rope_, c.head_dim, q, k);
  backend_.WriteKvCache(batch.attention, k, v, kv_cache.key(layer_index), kv_cache.value(layer_index));
  Tensor attn = Head(act_.attn, num_tokens);
  backend_.PagedAttention(batch.attention, q, kv_cache.key(layer_index), kv_cache.value(layer_index),
                          c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                          1.0f / std::sqrt(static_cast<float>(c.head_dim)), attn);
  backend_.Linear(attn, layer.o_proj, x);
}

void LlamaModel::Mlp(const Layer& layer, int num_tokens) {
  Tensor x = Head(act_.hidden, num_tokens);
  Tensor gate = Head(act_.gate, num_tokens), up = Head(act_.up, num_tokens);
  backend_.Linear(x, layer.gate_proj, gate);
  backend_.Linear(x, layer.up_proj, up);
  backend_.SiluMul(gate, up, gate);
  backend_.Linear(gate, layer.down_proj, x);
}

Tensor LlamaModel::Forward(const BatchMeta& batch, KvCache& kv_cache) {
  const int num_tokens = batch.num_tokens(), num_seqs = batch.num_seqs();
  TESSERA_CHECK(num_tokens <= options_.max_num_tokens && num_seqs <= options_.max_num_seqs);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Tensor hidden = Head(act_.hidden, num_tokens), residual = Head(act_.residual, num_tokens);

  backend_.Embedding(batch.token_ids, embed_tokens, residual);  // residual = embeddings
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i) {
    const Layer& layer = layers_[i];
    if (i == 0) {
      backend_.RmsNorm(residual, layer.input_norm, eps, hidden);
    } else {
      backend_.AddRmsNorm(hidden, residual, layer.input_norm, eps);  // residual += mlp out; hidden = norm
    }
    Attention(batch, layer, i, kv_cache, num_tokens);
    backend_.AddRmsNorm(hidden, residual, layer.post_attn_norm, eps);  // residual += attn out; hidden = norm
    Mlp(layer, num_tokens);
  }
  backend_.Add(hidden, residual, hidden);  // the last layer's residual connection
  Tensor last = Head(act_.last, num_seqs);
  backend_.GatherRows(hidden, batch.logit_rows, last);
  backend_.RmsNorm(last, final_norm, eps, last);
  Tensor logits = Head(act_.logits, num_seqs);
  backend_.Linear(last, lm_head, logits);
  return logits;
}

}  // namespace tessera
