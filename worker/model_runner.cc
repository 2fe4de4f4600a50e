#include "worker/model_runner.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace tessera {
namespace {

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

// The graph layout's arrays of `rows` (the largest captured batch) int32s each, in this order, then the block
// tables [rows, max_blocks_per_seq] from a 64-byte boundary.
enum GraphArray { kTokenIds, kPositions, kSlots, kQueryStart, kSeqLens, kLogitRows };
int64_t GraphArrayOffset(GraphArray array, int64_t rows) {
  return array * rows + (array > kQueryStart ? 1 : 0);  // query_start has rows + 1 entries
}
int64_t GraphTablesOffset(int64_t rows) { return (GraphArrayOffset(kLogitRows, rows) + rows + 15) / 16 * 16; }

// 1, 2, 4, then multiples of 8, up to and including `max_batch`.
std::vector<int> GraphBatchSizes(int max_batch) {
  std::vector<int> sizes;
  for (int b : {1, 2, 4}) {
    if (b <= max_batch) sizes.push_back(b);
  }
  for (int b = 8; b <= max_batch; b += 8) sizes.push_back(b);
  if (max_batch > 0 && sizes.back() != max_batch) sizes.push_back(max_batch);
  return sizes;
}

}  // namespace

ModelRunner::ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model,
                         std::unique_ptr<SegmentingGroup> tp_group, Communicator* pp_group,
                         std::vector<int> graph_sizes)
    : backend_(backend),
      tp_group_(std::move(tp_group)),
      model_(std::move(model)),
      pp_group_(pp_group),
      graph_sizes_(std::move(graph_sizes)) {}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const Checkpoint& checkpoint,
                                                                 Backend& backend,
                                                                 const ModelRunnerOptions& options) {
  // The model sees its TP group through a SegmentingGroup, which synchronizes before each collective and
  // cuts graph captures there.
  LlamaModelOptions model_options = options.model;
  std::unique_ptr<SegmentingGroup> tp_group;
  if (options.model.tp_group != nullptr) {
    tp_group = std::make_unique<SegmentingGroup>(backend, *options.model.tp_group);
    model_options.tp_group = tp_group.get();
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(checkpoint, backend, model_options));
  const int pp = model->parallel().pp_size();
  if (pp > 1 && (options.pp_group == nullptr || options.pp_group->size() != pp)) {
    return absl::InvalidArgumentError(absl::StrCat("pp=", pp, " needs a pipeline group of that size"));
  }
  if (options.graph_max_batch < -1) {
    return absl::InvalidArgumentError(absl::StrCat("graph_max_batch=", options.graph_max_batch,
                                                   " must be -1 (the default), 0 or positive"));
  }
  int max_batch = options.graph_max_batch;
  if (max_batch == -1) max_batch = backend.device() == DeviceKind::kCuda ? 256 : 0;
  max_batch = std::min({max_batch, model_options.max_num_seqs, model_options.max_num_tokens});
  return std::unique_ptr<ModelRunner>(new ModelRunner(backend, std::move(model), std::move(tp_group),
                                                      options.pp_group, GraphBatchSizes(max_batch)));
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
  const int64_t eager_ints = 3 * t + (s + 1) + s + s * max_blocks_per_seq + s;
  const int64_t graph_offset = (eager_ints + 15) / 16 * 16;
  const int64_t graph_rows = graph_sizes_.empty() ? 0 : graph_sizes_.back();
  const int64_t graph_ints =
      graph_rows == 0 ? 0 : GraphTablesOffset(graph_rows) + graph_rows * max_blocks_per_seq;
  ASSIGN_OR_RETURN(DeviceBuffer device_meta, backend_.Allocate((graph_offset + graph_ints) * 4));
  absl::StatusOr<KvCache> kv_cache = KvCache::Allocate(backend_, model_->KvShape(num_blocks));
  if (!kv_cache.ok()) {
    return absl::Status(kv_cache.status().code(),
                        absl::StrCat("KV cache of ", num_blocks, " blocks (", KvBlockBytes(),
                                     " bytes each): ", kv_cache.status().message()));
  }
  kv_cache_ = std::move(kv_cache).value();
  device_meta_ = std::move(device_meta);
  graph_meta_offset_ = graph_offset;
  max_blocks_per_seq_ = max_blocks_per_seq;
  return absl::OkStatus();
}

absl::Status ModelRunner::CopyKvBlocks(const std::vector<std::pair<int32_t, int32_t>>& copies) {
  if (copies.empty()) return absl::OkStatus();
  if (!kv_cache_) return absl::FailedPreconditionError("block copies before the KV cache is allocated");
  const int num_blocks = kv_cache_->shape().num_blocks;
  for (const auto& [src, dst] : copies) {
    if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks || src == dst) {
      return absl::InvalidArgumentError(absl::StrCat("block copy ", src, " -> ", dst,
                                                     ": ids must differ and lie in [0, ", num_blocks, ")"));
    }
  }
  for (const auto& [src, dst] : copies) {
    for (int layer = 0; layer < kv_cache_->shape().num_layers; ++layer) {
      for (Tensor* pool : {&kv_cache_->key(layer), &kv_cache_->value(layer)}) {
        Tensor to = pool->Rows(dst, 1);
        backend_.Copy(pool->Rows(src, 1), to);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::CaptureGraphs() {
  if (graph_sizes_.empty()) return absl::OkStatus();
  if (!kv_cache_) return absl::FailedPreconditionError("CaptureGraphs before the KV cache is allocated");
  if (!graphs_.empty()) return absl::FailedPreconditionError("the step graphs are already captured");
  std::vector<CapturedStep> graphs;
  for (int batch : graph_sizes_) {
    const BatchMeta meta = UploadGraphBatch(batch, /*padding_only=*/true);
    auto forward = [&] { return model_->Forward(meta, *kv_cache_); };
    RETURN_IF_ERROR(forward().status());  // the warm-up: first uses happen outside the capture
    RETURN_IF_ERROR(FinishStep());
    absl::StatusOr<CapturedStep> step =
        tp_group_ ? tp_group_->Capture(forward) : SegmentingGroup::CaptureWithoutGroup(backend_, forward);
    if (!step.ok()) {
      return absl::Status(step.status().code(), absl::StrCat("capturing the decode step of ", batch,
                                                             " sequences: ", step.status().message()));
    }
    graphs.push_back(std::move(step).value());
  }
  graphs_ = std::move(graphs);
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

BatchMeta ModelRunner::UploadGraphBatch(int batch, bool padding_only) {
  const int64_t rows = graph_sizes_.back();
  const int n = padding_only ? 0 : host_.num_seqs();
  TESSERA_CHECK(n <= batch && batch <= rows);
  // The head: every array, real rows then padding rows (embedding row 0 at position 0, no KV slot, one new
  // token, no context: attention gives zeros and nothing is written to the cache).
  staging_.assign(GraphArrayOffset(kLogitRows, rows) + rows, 0);
  auto array = [&](GraphArray a) { return staging_.data() + GraphArrayOffset(a, rows); };
  for (int i = 0; i < batch; ++i) {
    const bool real = i < n;
    array(kTokenIds)[i] = real ? host_.token_ids[i] : 0;
    array(kPositions)[i] = real ? host_.positions[i] : 0;
    array(kSlots)[i] = real ? host_.slot_mapping[i] : -1;
    array(kQueryStart)[i + 1] = i + 1;
    array(kSeqLens)[i] = real ? host_.seq_lens[i] : 0;
    array(kLogitRows)[i] = i;
  }
  int32_t* base = static_cast<int32_t*>(device_meta_.data()) + graph_meta_offset_;
  backend_.CopyToDevice(base, staging_.data(), static_cast<int64_t>(staging_.size()) * 4);
  // The block tables: each real row's used blocks into its row of the fixed stride; padding rows are never
  // read.
  int32_t* tables = base + GraphTablesOffset(rows);
  if (n > 0) {
    const int64_t width = int64_t{host_.max_blocks_per_seq} * 4;
    backend_.CopyRowsToDevice(tables, int64_t{max_blocks_per_seq_} * 4, host_.block_tables.data(), width,
                              width, n);
  }

  BatchMeta meta;
  AttentionMeta& a = meta.attention;
  a.positions = base + GraphArrayOffset(kPositions, rows);
  a.slot_mapping = base + GraphArrayOffset(kSlots, rows);
  a.query_start = base + GraphArrayOffset(kQueryStart, rows);
  a.seq_lens = base + GraphArrayOffset(kSeqLens, rows);
  a.block_tables = tables;
  a.num_seqs = batch;
  a.num_tokens = batch;
  a.max_blocks_per_seq = max_blocks_per_seq_;
  a.block_size = kv_cache_->shape().block_size;
  a.max_query_len = 1;
  a.max_seq_len = max_blocks_per_seq_ * a.block_size;  // the longest context a sequence can have
  meta.token_ids = Tensor(base + GraphArrayOffset(kTokenIds, rows), DType::kI32, {batch});
  meta.logit_rows = Tensor(base + GraphArrayOffset(kLogitRows, rows), DType::kI32, {batch});
  return meta;
}

absl::StatusOr<Tensor> ModelRunner::Forward(const std::vector<Sequence*>& seqs) {
  RETURN_IF_ERROR(BuildBatch(seqs));
  const int n = host_.num_seqs();
  // A decode step that a captured graph holds: the smallest one.
  const CapturedStep* graph = nullptr;
  int graph_batch = 0;
  if (!graphs_.empty() && host_.max_query_len == 1 && n <= graph_sizes_.back()) {
    const size_t i = std::lower_bound(graph_sizes_.begin(), graph_sizes_.end(), n) - graph_sizes_.begin();
    graph = &graphs_[i];
    graph_batch = graph_sizes_[i];
  }
  const BatchMeta meta = graph ? UploadGraphBatch(graph_batch, /*padding_only=*/false) : UploadBatch();
  const int pp_rank = model_->parallel().PpRank(model_->rank());
  if (!model_->is_first_stage()) {
    Tensor input = model_->StageInput(host_.num_tokens());
    RETURN_IF_ERROR(pp_group_->Recv(input, pp_rank - 1));
  }
  const auto compute_start = std::chrono::steady_clock::now();
  Tensor out;
  if (graph != nullptr) {
    RETURN_IF_ERROR(graph->Replay(backend_));
    out = graph->output().Rows(0, n);
    ++graph_steps_;
  } else {
    ASSIGN_OR_RETURN(out, model_->Forward(meta, *kv_cache_));
  }
  RETURN_IF_ERROR(FinishStep());
  compute_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - compute_start).count();
  if (!model_->is_last_stage()) {
    RETURN_IF_ERROR(pp_group_->Send(out, pp_rank + 1));
    out = Tensor();
  }
  for (Sequence* seq : seqs) seq->num_computed_tokens = static_cast<int>(seq->tokens.size());
  return out;
}

absl::Status ModelRunner::FinishStep() {
  if (tp_group_) tp_group_->WatchStep();
  RETURN_IF_ERROR(backend_.Synchronize());
  return tp_group_ ? tp_group_->StepStatus() : absl::OkStatus();
}

void ModelRunner::DropGraphs() {
  graphs_.clear();
  graph_sizes_.clear();
}

absl::Status ModelRunner::Sample(const Tensor& logits, const std::vector<Sequence*>& seqs,
                                 std::vector<int32_t>& tokens, bool want_logprobs) {
  tokens.resize(seqs.size());
  if (seqs.empty()) return absl::OkStatus();
  TESSERA_CHECK(logits.dim(0) == static_cast<int64_t>(seqs.size()));
  sampling_rows_.clear();
  bool any_logprobs = false;
  for (const Sequence* seq : seqs) {
    SamplingRow row = seq->sampling;
    const int64_t generated = static_cast<int64_t>(seq->tokens.size()) - seq->num_prompt_tokens;
    row.step = static_cast<uint64_t>(generated);
    row.tokens = seq->tokens.data();  // the pointers stay valid: sequences are not changed during the call
    row.num_tokens = static_cast<int64_t>(seq->tokens.size());
    row.num_prompt_tokens = seq->num_prompt_tokens;
    row.logit_bias = seq->logit_bias.data();
    row.num_logit_bias = static_cast<int64_t>(seq->logit_bias.size());
    const bool banned = generated < seq->min_tokens;
    row.banned_ids = banned ? seq->stop_token_ids.data() : nullptr;
    row.num_banned_ids = banned ? static_cast<int64_t>(seq->stop_token_ids.size()) : 0;
    if (!want_logprobs) row.top_logprobs = -1;
    any_logprobs = any_logprobs || row.top_logprobs >= 0;
    sampling_rows_.push_back(row);
  }
  if (any_logprobs) sampled_logprobs_.resize(seqs.size());
  return backend_.Sample(logits, sampling_rows_.data(), tokens.data(),
                         any_logprobs ? sampled_logprobs_.data() : nullptr);
}

absl::Status ModelRunner::SampleAndAppend(const Tensor& logits, const std::vector<Sequence*>& seqs) {
  RETURN_IF_ERROR(Sample(logits, seqs, sampled_));
  for (size_t s = 0; s < seqs.size(); ++s) seqs[s]->tokens.push_back(sampled_[s]);
  return absl::OkStatus();
}

}  // namespace tessera
