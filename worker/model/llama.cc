#include "worker/model/llama.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "worker/model_split.h"
#include "worker/weight_loader.h"

namespace tessera {
namespace {

// Rows [0, n) of a buffer allocated for more.
Tensor Head(const Tensor& t, int64_t n) { return t.Rows(0, n); }

// Rows [heads.begin * head_dim, heads.end * head_dim) of a projection: the heads' output rows.
Range HeadRows(Range heads, int head_dim) { return {heads.begin * head_dim, heads.end * head_dim}; }

}  // namespace

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const Checkpoint& checkpoint, Backend& backend,
                                                             const LlamaModelOptions& options) {
  if (options.max_num_tokens <= 0 || options.max_num_seqs <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_num_tokens=", options.max_num_tokens,
                                                   " and max_num_seqs=", options.max_num_seqs,
                                                   " must be positive"));
  }
  RETURN_IF_ERROR(checkpoint.ValidateForLlama());
  const ModelConfig& c = checkpoint.config();
  ParallelConfig whole = *SplitModel(c, 1, 1);
  const ParallelConfig& parallel = options.parallel != nullptr ? *options.parallel : whole;
  if (parallel.tp_size() > 1 &&
      (options.tp_group == nullptr || options.tp_group->size() != parallel.tp_size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp=", parallel.tp_size(), " needs a TP group of that size"));
  }
  std::unique_ptr<LlamaModel> model(new LlamaModel(c, backend, options, parallel));
  model->tp_rank_ = parallel.TpRank(options.rank);
  model->pp_rank_ = parallel.PpRank(options.rank);
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

  const int t = tp_rank_;
  const Range q_heads = parallel_.QueryHeads(t), kv_heads = parallel_.KvHeads(t);
  const Range mlp = parallel_.IntermediateShard(t), vocab = parallel_.VocabShard(t);
  num_local_heads_ = static_cast<int>(q_heads.size());
  num_local_kv_heads_ = static_cast<int>(kv_heads.size());
  local_intermediate_ = mlp.size();
  Communicator* group = parallel_.tp_size() > 1 ? options_.tp_group : nullptr;

  WeightLoader loader(checkpoint, backend_);
  auto whole = [&](const std::string& name, Tensor& dst) -> absl::Status {
    ASSIGN_OR_RETURN(dst, loader.Load(name));
    return absl::OkStatus();
  };
  const bool first = parallel_.IsFirstStage(pp_rank_), last = parallel_.IsLastStage(pp_rank_);
  const bool tied = c.tie_word_embeddings && !checkpoint.Has("lm_head.weight");
  if (first || (last && tied)) {
    RETURN_IF_ERROR(embed_tokens_.Load(loader, "model.embed_tokens.weight", vocab, c.vocab_size, group));
  }
  const Range stage = parallel_.StageLayers(pp_rank_);
  layers_.resize(stage.size());
  for (int local = 0; local < static_cast<int>(stage.size()); ++local) {
    Layer& l = layers_[local];
    std::string p = absl::StrCat("model.layers.", stage.begin + local, ".");
    RETURN_IF_ERROR(whole(p + "input_layernorm.weight", l.input_norm));
    RETURN_IF_ERROR(l.qkv_proj.LoadFused(loader, {{p + "self_attn.q_proj.weight", HeadRows(q_heads, c.head_dim)},
                                                  {p + "self_attn.k_proj.weight", HeadRows(kv_heads, c.head_dim)},
                                                  {p + "self_attn.v_proj.weight", HeadRows(kv_heads, c.head_dim)}}));
    RETURN_IF_ERROR(
        l.o_proj.Load(loader, p + "self_attn.o_proj.weight", HeadRows(q_heads, c.head_dim), group));
    RETURN_IF_ERROR(whole(p + "post_attention_layernorm.weight", l.post_attn_norm));
    RETURN_IF_ERROR(l.gate_up_proj.LoadFused(loader, {{p + "mlp.gate_proj.weight", mlp}, {p + "mlp.up_proj.weight", mlp}}));
    RETURN_IF_ERROR(l.down_proj.Load(loader, p + "mlp.down_proj.weight", mlp, group));
  }
  if (last) {
    RETURN_IF_ERROR(whole("model.norm.weight", final_norm_));
    Tensor lm_head;
    if (tied) {
      lm_head = embed_tokens_.SliceRows();
    } else {
      ASSIGN_OR_RETURN(lm_head, loader.LoadRows("lm_head.weight", vocab.begin, vocab.size()));
    }
    lm_head_.Init(lm_head, parallel_, t, group);
  }
  weight_bytes_ = checkpoint.bytes_accessed();
  allocated_weight_bytes_ = loader.bytes_copied();
  for (DeviceBuffer& b : loader.TakeBuffers()) buffers_.push_back(std::move(b));
  return absl::OkStatus();
}

absl::Status LlamaModel::AllocateActivations() {
  const ModelConfig& c = config_;
  const int64_t t = options_.max_num_tokens, s = options_.max_num_seqs;
  const int64_t q_width = int64_t{num_local_heads_} * c.head_dim;
  const int64_t kv_width = int64_t{num_local_kv_heads_} * c.head_dim;
  DType act = backend_.activation_dtype();
  auto alloc = [&](DType dtype, int64_t rows, int64_t cols, Tensor& dst) -> absl::Status {
    ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.Allocate(rows * cols * DTypeSize(dtype)));
    dst = buffer.View(dtype, {rows, cols});
    buffers_.push_back(std::move(buffer));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(alloc(act, t, c.hidden_size, act_.hidden));
  RETURN_IF_ERROR(alloc(act, t, c.hidden_size, act_.residual));
  RETURN_IF_ERROR(alloc(act, t, q_width + 2 * kv_width, act_.qkv));
  RETURN_IF_ERROR(alloc(act, t, q_width, act_.q));
  RETURN_IF_ERROR(alloc(act, t, q_width, act_.attn));
  RETURN_IF_ERROR(alloc(act, t, 2 * local_intermediate_, act_.gate_up));
  RETURN_IF_ERROR(alloc(act, t, local_intermediate_, act_.mlp));
  if (parallel_.IsLastStage(pp_rank_)) {
    RETURN_IF_ERROR(alloc(act, s, c.hidden_size, act_.last));
    RETURN_IF_ERROR(alloc(DType::kF32, s, c.vocab_size, act_.logits));
    if (int64_t scratch = lm_head_.ScratchBytes(s); scratch > 0) {
      RETURN_IF_ERROR(alloc(DType::kF32, 1, scratch / 4, act_.lm_head_scratch));
    }
  }
  return absl::OkStatus();
}

KvCacheShape LlamaModel::KvShape(int num_blocks) const {
  KvCacheShape shape;
  shape.num_layers = static_cast<int>(layers_.size());
  shape.num_blocks = num_blocks;
  shape.num_kv_heads = num_local_kv_heads_;
  shape.head_dim = config_.head_dim;
  return shape;
}

absl::Status LlamaModel::Attention(const BatchMeta& batch, const Layer& layer, int layer_index,
                                   KvCache& kv_cache, int num_tokens) {
  const int head_dim = config_.head_dim;
  Tensor x = Head(act_.hidden, num_tokens);
  Tensor qkv = Head(act_.qkv, num_tokens), q = Head(act_.q, num_tokens);
  layer.qkv_proj.Forward(backend_, x, qkv);
  backend_.RopeQkvToCache(batch.attention, rope_, head_dim, qkv, q, kv_cache.key(layer_index),
                          kv_cache.value(layer_index));
  Tensor attn = Head(act_.attn, num_tokens);
  backend_.PagedAttention(batch.attention, q, kv_cache.key(layer_index), kv_cache.value(layer_index),
                          num_local_heads_, num_local_kv_heads_, head_dim,
                          1.0f / std::sqrt(static_cast<float>(head_dim)), attn);
  return layer.o_proj.Forward(backend_, attn, x);
}

absl::Status LlamaModel::Mlp(const Layer& layer, int num_tokens) {
  Tensor x = Head(act_.hidden, num_tokens);
  Tensor gate_up = Head(act_.gate_up, num_tokens), mlp = Head(act_.mlp, num_tokens);
  layer.gate_up_proj.Forward(backend_, x, gate_up);
  backend_.SiluMulFused(gate_up, mlp);
  return layer.down_proj.Forward(backend_, mlp, x);
}

absl::StatusOr<Tensor> LlamaModel::Forward(const BatchMeta& batch, KvCache& kv_cache) {
  const int num_tokens = batch.num_tokens(), num_seqs = batch.num_seqs();
  TESSERA_CHECK(num_tokens <= options_.max_num_tokens && num_seqs <= options_.max_num_seqs);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Tensor hidden = Head(act_.hidden, num_tokens), residual = Head(act_.residual, num_tokens);

  // residual = the stage's input: the embeddings on the first stage; what the runner received elsewhere.
  if (parallel_.IsFirstStage(pp_rank_))
    RETURN_IF_ERROR(embed_tokens_.Forward(backend_, batch.token_ids, residual));
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i) {
    const Layer& layer = layers_[i];
    if (i == 0) {
      backend_.RmsNorm(residual, layer.input_norm, eps, hidden);
    } else {
      backend_.AddRmsNorm(hidden, residual, layer.input_norm, eps);  // residual += mlp out; hidden = norm
    }
    RETURN_IF_ERROR(Attention(batch, layer, i, kv_cache, num_tokens));
    backend_.AddRmsNorm(hidden, residual, layer.post_attn_norm, eps);  // residual += attn out; hidden = norm
    RETURN_IF_ERROR(Mlp(layer, num_tokens));
  }
  backend_.Add(hidden, residual, hidden);               // the stage's last residual connection
  if (!parallel_.IsLastStage(pp_rank_)) return hidden;  // the next stage's input
  Tensor last = Head(act_.last, num_seqs);
  backend_.GatherRows(hidden, batch.logit_rows, last);
  backend_.RmsNorm(last, final_norm_, eps, last);
  Tensor logits = Head(act_.logits, num_seqs);
  RETURN_IF_ERROR(lm_head_.Forward(backend_, last, act_.lm_head_scratch.data(), logits));
  return logits;
}

}  // namespace tessera
