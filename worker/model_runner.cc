#include "worker/model_runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/core/status_macros.h"

namespace tessera {
namespace {

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace

ModelRunner::ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model, KvCache kv_cache,
                         int num_blocks, Communicator* pp_group)
    : backend_(backend),
      model_(std::move(model)),
      kv_cache_(std::move(kv_cache)),
      allocator_(num_blocks),
      pp_group_(pp_group) {}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const Checkpoint& checkpoint,
                                                                 Backend& backend,
                                                                 const ModelRunnerOptions& options) {
  if (options.num_kv_blocks <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_blocks=", options.num_kv_blocks, " must be positive"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(checkpoint, backend, options.model));
  const int pp = model->parallel().pp_size();
  if (pp > 1 && (options.pp_group == nullptr || options.pp_group->size() != pp)) {
    return absl::InvalidArgumentError(absl::StrCat("pp=", pp, " needs a pipeline group of that size"));
  }
  ASSIGN_OR_RETURN(KvCache kv_cache, KvCache::Allocate(backend, model->KvShape(options.num_kv_blocks)));
  std::unique_ptr<ModelRunner> runner(new ModelRunner(backend, std::move(model), std::move(kv_cache),
                                                      options.num_kv_blocks, options.pp_group));
  const int block_size = runner->kv_cache_.shape().block_size;
  runner->max_blocks_per_seq_ =
      std::min(options.num_kv_blocks, CeilDiv(runner->config().max_position_embeddings, block_size));
  const int64_t t = options.model.max_num_tokens, s = options.model.max_num_seqs;
  const int64_t ints = 3 * t + (s + 1) + s + s * runner->max_blocks_per_seq_ + s;
  ASSIGN_OR_RETURN(runner->device_meta_, backend.Allocate(ints * 4));
  return runner;
}

absl::Status ModelRunner::BuildBatch(const std::vector<Sequence*>& seqs) {
  const ModelConfig& config = model_->config();
  const LlamaModelOptions& limits = model_->options();
  const int block_size = kv_cache_.shape().block_size;
  host_.Clear();
  int num_tokens = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const Sequence& seq = *seqs[s];
    const int len = static_cast<int>(seq.tokens.size());
    if (seq.num_computed_tokens >= len) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " has no new token to compute"));
    }
    if (len > config.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, " has ", len,
                       " tokens, more than max_position_embeddings=", config.max_position_embeddings));
    }
    for (int p = seq.num_computed_tokens; p < len; ++p) {
      if (seq.tokens[p] < 0 || seq.tokens[p] >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": token id ", seq.tokens[p],
                                                       " at position ", p, " is outside the vocabulary [0, ",
                                                       config.vocab_size, ")"));
      }
    }
    num_tokens += len - seq.num_computed_tokens;
  }
  if (num_tokens > limits.max_num_tokens || static_cast<int>(seqs.size()) > limits.max_num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("step of ", num_tokens, " tokens in ", seqs.size(), " sequences exceeds max_num_tokens=",
                     limits.max_num_tokens, " / max_num_seqs=", limits.max_num_seqs));
  }
  // Blocks first, all or nothing, so that a full cache leaves every sequence as it was.
  std::vector<int>& wanted = blocks_wanted_;
  wanted.assign(seqs.size(), 0);
  int total_wanted = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    wanted[s] = CeilDiv(static_cast<int>(seqs[s]->tokens.size()), block_size) -
                static_cast<int>(seqs[s]->block_table.size());
    total_wanted += std::max(0, wanted[s]);
  }
  if (total_wanted > allocator_.num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache is full: step needs ", total_wanted,
                                                     " blocks, ", allocator_.num_free(), " free"));
  }
  for (size_t s = 0; s < seqs.size(); ++s) {
    if (wanted[s] > 0) RETURN_IF_ERROR(allocator_.Allocate(wanted[s], seqs[s]->block_table));
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
    host_.max_blocks_per_seq = std::max(host_.max_blocks_per_seq, static_cast<int>(seq.block_table.size()));
  }
  host_.block_tables.assign(seqs.size() * host_.max_blocks_per_seq, 0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    std::copy(seqs[s]->block_table.begin(), seqs[s]->block_table.end(),
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
  a.block_size = kv_cache_.shape().block_size;
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
  ASSIGN_OR_RETURN(Tensor out, model_->Forward(meta, kv_cache_));
  if (!model_->is_last_stage()) {
    backend_.Synchronize();
    RETURN_IF_ERROR(pp_group_->Send(out, pp_rank + 1));
    out = Tensor();
  }
  for (Sequence* seq : seqs) seq->num_computed_tokens = static_cast<int>(seq->tokens.size());
  return out;
}

void ModelRunner::SampleAndAppend(const Tensor& logits, const std::vector<Sequence*>& seqs) {
  sampling_rows_.clear();
  for (const Sequence* seq : seqs) {
    SamplingRow row = seq->sampling;
    row.step = seq->tokens.size() - seq->num_prompt_tokens;
    sampling_rows_.push_back(row);
  }
  sampled_.resize(seqs.size());
  backend_.Sample(logits, sampling_rows_.data(), sampled_.data());
  for (size_t s = 0; s < seqs.size(); ++s) seqs[s]->tokens.push_back(sampled_[s]);
}

void ModelRunner::Release(Sequence& seq) {
  allocator_.Free(seq.block_table);
  seq.block_table.clear();
  seq.num_computed_tokens = 0;
}

}  // namespace tessera
