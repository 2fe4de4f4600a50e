#include "worker/model_runner.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/core/status_macros.h"

namespace tessera {
namespace {

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace

ModelRunner::ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model, Communicator* pp_group)
    : backend_(backend), model_(std::move(model)), pp_group_(pp_group) {}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const Checkpoint& checkpoint,
                                                                 Backend& backend,
                                                                 const ModelRunnerOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(checkpoint, backend, options.model));
  const int pp = model->parallel().pp_size();
  if (pp > 1 && (options.pp_group == nullptr || options.pp_group->size() != pp)) {
    return absl::InvalidArgumentError(absl::StrCat("pp=", pp, " needs a pipeline group of that size"));
  }
  return std::unique_ptr<ModelRunner>(new ModelRunner(backend, std::move(model), options.pp_group));
}

int64_t ModelRunner::KvBlockBytes() const {
  return model_->KvShape(1).BytesPerBlock(backend_.activation_dtype());
}

absl::Status ModelRunner::AllocateKvCache(int num_blocks) {
  if (kv_cache_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the KV cache is already allocated (", kv_cache_->shape().num_blocks, " blocks)"));
  }
  if (num_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_blocks=", num_blocks, " must be positive"));
  }
  const int max_blocks_per_seq =
      std::min(num_blocks, CeilDiv(config().max_position_embeddings, kKvBlockSize));
  const int64_t t = model_->options().max_num_tokens, s = model_->options().max_num_seqs;
  const int64_t ints = 3 * t + (s + 1) + s + s * max_blocks_per_seq + s;
  ASSIGN_OR_RETURN(DeviceBuffer device_meta, backend_.Allocate(ints * 4));
  absl::StatusOr<KvCache> kv_cache = KvCache::Allocate(backend_, model_->KvShape(num_blocks));
  if (!kv_cache.ok()) {
    return absl::Status(kv_cache.status().code(),
                        absl::StrCat("KV cache of ", num_blocks, " blocks (", KvBlockBytes(),
                                     " bytes each): ", kv_cache.status().message()));
  }
  kv_cache_ = std::move(kv_cache).value();
  device_meta_ = std::move(device_meta);
  max_blocks_per_seq_ = max_blocks_per_seq;
  return absl::OkStatus();
}

absl::Status ModelRunner::BuildBatch(const std::vector<Sequence*>& seqs) {
  if (!kv_cache_) return absl::FailedPreconditionError("forward step before the KV cache is allocated");
  const ModelConfig& config = model_->config();
  const LlamaModelOptions& limits = model_->options();
  const int block_size = kv_cache_->shape().block_size;
  const int num_blocks = kv_cache_->shape().num_blocks;
  host_.Clear();
  int num_tokens = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const Sequence& seq = *seqs[s];
    auto name = [&] { return absl::StrCat("sequence ", seq.id, " (row ", s, " of the step)"); };
    const int len = static_cast<int>(seq.tokens.size());
    if (seq.num_computed_tokens >= len) {
      return absl::InvalidArgumentError(absl::StrCat(name(), " has no new token to compute"));
    }
    if (len > config.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat(name(), " has ", len,
                       " tokens, more than max_position_embeddings=", config.max_position_embeddings));
    }
    for (int p = seq.num_computed_tokens; p < len; ++p) {
      if (seq.tokens[p] < 0 || seq.tokens[p] >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(name(), ": token id ", seq.tokens[p], " at position ",
                                                       p, " is outside the vocabulary [0, ",
                                                       config.vocab_size, ")"));
      }
    }
    const int needed = CeilDiv(len, block_size);
    if (static_cast<int>(seq.block_table.size()) < needed) {
      return absl::InvalidArgumentError(absl::StrCat(name(), " has ", len, " tokens but a block table of ",
                                                     seq.block_table.size(), " blocks (", needed,
                                                     " needed)"));
    }
    if (needed > max_blocks_per_seq_) {
      return absl::InvalidArgumentError(absl::StrCat(name(), " needs ", needed, " blocks, more than the ",
                                                     max_blocks_per_seq_, " a sequence can use"));
    }
    for (size_t b = 0; b < seq.block_table.size(); ++b) {
      if (seq.block_table[b] < 0 || seq.block_table[b] >= num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat(name(), ": block id ", seq.block_table[b],
                                                       " at index ", b, " of its block table is outside [0, ",
                                                       num_blocks, ")"));
      }
    }
    num_tokens += len - seq.num_computed_tokens;
  }
  if (num_tokens > limits.max_num_tokens || static_cast<int>(seqs.size()) > limits.max_num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("step of ", num_tokens, " tokens in ", seqs.size(), " sequences exceeds max_num_tokens=",
                     limits.max_num_tokens, " / max_num_seqs=", limits.max_num_seqs));
  }

  host_.query_start.push_back(0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const Sequence& seq = *seqs[s];
    const int len = static_cast<int>(seq.tokens.size());
    for (int p = seq.num_computed_tokens; p < len; ++p) {
      host_.token_ids.push_back(model_->EmbeddingRow(seq.tokens[p]));
      host_.positions.push_back(p);
      host_.slot_mapping.push_back(seq.block_table[p / block_size] * block_size + p % block_size);
    }
    host_.query_start.push_back(static_cast<int32_t>(host_.token_ids.size()));
    host_.seq_lens.push_back(len);
    host_.logit_rows.push_back(static_cast<int32_t>(host_.token_ids.size()) - 1);
    host_.max_query_len = std::max(host_.max_query_len, len - seq.num_computed_tokens);
    host_.max_seq_len = std::max(host_.max_seq_len, len);
    host_.max_blocks_per_seq = std::max(host_.max_blocks_per_seq, CeilDiv(len, block_size));
  }
  // Only the blocks that hold the sequence's tokens (a table may run ahead of them).
  host_.block_tables.assign(seqs.size() * host_.max_blocks_per_seq, 0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int used = CeilDiv(static_cast<int>(seqs[s]->tokens.size()), block_size);
    std::copy_n(seqs[s]->block_table.begin(), used,
                host_.block_tables.begin() + s * host_.max_blocks_per_seq);
  }
  return absl::OkStatus();
}

BatchMeta ModelRunner::UploadBatch() {
  // Packs every array into one host buffer and copies it to the device in one transfer.
  staging_.clear();
  auto pack = [&](const std::vector<int32_t>& v) {
    size_t offset = staging_.size();
    staging_.insert(staging_.end(), v.begin(), v.end());
    return offset;
  };
  const size_t token_ids = pack(host_.token_ids), positions = pack(host_.positions),
               slot_mapping = pack(host_.slot_mapping), query_start = pack(host_.query_start),
               seq_lens = pack(host_.seq_lens), block_tables = pack(host_.block_tables),
               logit_rows = pack(host_.logit_rows);
  TESSERA_CHECK(static_cast<int64_t>(staging_.size()) * 4 <= device_meta_.bytes());
  int32_t* base = static_cast<int32_t*>(device_meta_.data());
  backend_.CopyToDevice(base, staging_.data(), static_cast<int64_t>(staging_.size()) * 4);

  BatchMeta meta;
  AttentionMeta& a = meta.attention;
  a.positions = base + positions;
  a.slot_mapping = base + slot_mapping;
  a.query_start = base + query_start;
  a.seq_lens = base + seq_lens;
  a.block_tables = base + block_tables;
  a.num_seqs = host_.num_seqs();
  a.num_tokens = host_.num_tokens();
  a.max_blocks_per_seq = host_.max_blocks_per_seq;
  a.block_size = kv_cache_->shape().block_size;
  a.max_query_len = host_.max_query_len;
  a.max_seq_len = host_.max_seq_len;
  meta.token_ids = Tensor(base + token_ids, DType::kI32, {a.num_tokens});
  meta.logit_rows = Tensor(base + logit_rows, DType::kI32, {a.num_seqs});
  return meta;
}

absl::StatusOr<Tensor> ModelRunner::Forward(const std::vector<Sequence*>& seqs) {
  RETURN_IF_ERROR(BuildBatch(seqs));
  BatchMeta meta = UploadBatch();
  const int pp_rank = model_->parallel().PpRank(model_->rank());
  if (!model_->is_first_stage()) {
    Tensor input = model_->StageInput(meta.num_tokens());
    RETURN_IF_ERROR(pp_group_->Recv(input, pp_rank - 1));
  }
  ASSIGN_OR_RETURN(Tensor out, model_->Forward(meta, *kv_cache_));
  if (!model_->is_last_stage()) {
    backend_.Synchronize();
    RETURN_IF_ERROR(pp_group_->Send(out, pp_rank + 1));
    out = Tensor();
  }
  for (Sequence* seq : seqs) seq->num_computed_tokens = static_cast<int>(seq->tokens.size());
  return out;
}

void ModelRunner::Sample(const Tensor& logits, const std::vector<Sequence*>& seqs,
                         std::vector<int32_t>& tokens) {
  tokens.resize(seqs.size());
  if (seqs.empty()) return;
  TESSERA_CHECK(logits.dim(0) == static_cast<int64_t>(seqs.size()));
  sampling_rows_.clear();
  for (const Sequence* seq : seqs) {
    SamplingRow row = seq->sampling;
    row.step = seq->tokens.size() - seq->num_prompt_tokens;
    sampling_rows_.push_back(row);
  }
  backend_.Sample(logits, sampling_rows_.data(), tokens.data());
}

void ModelRunner::SampleAndAppend(const Tensor& logits, const std::vector<Sequence*>& seqs) {
  Sample(logits, seqs, sampled_);
  for (size_t s = 0; s < seqs.size(); ++s) seqs[s]->tokens.push_back(sampled_[s]);
}

}  // namespace tessera
