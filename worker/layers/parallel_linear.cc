#include "worker/layers/parallel_linear.h"

#include "core/status_macros.h"

namespace tessera {

absl::Status ColumnParallelLinear::Load(WeightLoader& loader, const std::string& name, Range out_rows) {
  ASSIGN_OR_RETURN(weight_, loader.LoadRows(name, out_rows.begin, out_rows.size()));
  return absl::OkStatus();
}

absl::Status ColumnParallelLinear::LoadFused(WeightLoader& loader, const std::vector<Part>& parts) {
  std::vector<WeightLoader::RowSlice> slices;
  for (const Part& part : parts) slices.push_back({part.name, part.out_rows.begin, part.out_rows.size()});
  ASSIGN_OR_RETURN(weight_, loader.LoadStackedRows(slices));
  return absl::OkStatus();
}

absl::Status RowParallelLinear::Load(WeightLoader& loader, const std::string& name, Range in_cols,
                                     Communicator* group) {
  ASSIGN_OR_RETURN(weight_, loader.LoadColumns(name, in_cols.begin, in_cols.size()));
  group_ = group;
  return absl::OkStatus();
}

absl::Status RowParallelLinear::Forward(Backend& backend, const Tensor& x, Tensor& y) const {
  backend.Linear(x, weight_, y);
  if (group_ == nullptr || group_->size() == 1) return absl::OkStatus();
  return group_->AllReduceSum(y);
}

absl::Status VocabParallelEmbedding::Load(WeightLoader& loader, const std::string& name, Range vocab,
                                          int64_t vocab_size, Communicator* group) {
  vocab_ = vocab;
  split_ = vocab.size() != vocab_size;
  group_ = group;
  ASSIGN_OR_RETURN(table_, loader.LoadRows(name, vocab.begin, vocab.size(), split_ ? 1 : 0));
  return absl::OkStatus();
}

absl::Status VocabParallelEmbedding::Forward(Backend& backend, const Tensor& local_rows, Tensor& out) const {
  backend.Embedding(local_rows, table_, out);
  if (!split_ || group_ == nullptr || group_->size() == 1) return absl::OkStatus();
  return group_->AllReduceSum(out);
}

}  // namespace tessera

namespace tessera {

void ParallelLmHead::Init(Tensor weight, const ParallelConfig& config, int tp_rank, Communicator* group) {
  weight_ = weight;
  tp_rank_ = tp_rank;
  group_ = config.tp_size() > 1 ? group : nullptr;
  slices_.clear();
  per_rank_ = 0;
  for (int r = 0; r < config.tp_size(); ++r) {
    slices_.push_back(config.VocabShard(r));
    per_rank_ = std::max(per_rank_, slices_.back().size());
  }
  TESSERA_CHECK(weight_.dim(0) == slices_[tp_rank].size());
}

int64_t ParallelLmHead::ScratchBytes(int64_t max_seqs) const {
  if (group_ == nullptr) return 0;
  // The local block [S, per_rank] then the gathered blocks [tp, S, per_rank], all F32.
  return (1 + static_cast<int64_t>(slices_.size())) * max_seqs * per_rank_ * 4;
}

absl::Status ParallelLmHead::Forward(Backend& backend, const Tensor& x, void* scratch, Tensor& logits) const {
  const int64_t s = x.dim(0);
  if (group_ == nullptr) {
    backend.Linear(x, weight_, logits);
    return absl::OkStatus();
  }
  constexpr int64_t kF32 = 4;
  const int64_t local_cols = slices_[tp_rank_].size();
  float* base = static_cast<float*>(scratch);
  Tensor local(base, DType::kF32, {s, per_rank_});
  if (local_cols == per_rank_) {
    backend.Linear(x, weight_, local);
  } else {  // a short last slice: compute it compactly, then spread its rows to the block's stride
    float* compact = base + s * per_rank_;
    Tensor compact_view(compact, DType::kF32, {s, local_cols});
    backend.Linear(x, weight_, compact_view);
    backend.Copy2D(compact, local_cols * kF32, base, per_rank_ * kF32, local_cols * kF32, s);
  }
  const int tp = static_cast<int>(slices_.size());
  Tensor gathered(base + s * per_rank_, DType::kF32, {tp * s * per_rank_});
  RETURN_IF_ERROR(group_->Gather(local.Reshape({s * per_rank_}), gathered, /*root=*/0));
  if (tp_rank_ != 0) return absl::OkStatus();
  // Rank r's block [S, per_rank] becomes columns [slice.begin, slice.end) of every row: one strided copy each.
  const int64_t vocab = logits.dim(1);
  for (int r = 0; r < tp; ++r) {
    backend.Copy2D(gathered.data_as<float>() + r * s * per_rank_, per_rank_ * kF32,
                   logits.data_as<float>() + slices_[r].begin, vocab * kF32, slices_[r].size() * kF32, s);
  }
  return absl::OkStatus();
}

}  // namespace tessera
