// Tensor-parallel building blocks (Megatron layout): a column-parallel linear holds a slice of the output
// rows, a row-parallel linear a slice of the input columns and ends in an all-reduce over the TP group; the
// vocabulary-parallel embedding and lm_head hold a slice of the vocabulary. Each layer loads only its slice.
// The layers hand device tensors that the backend may still be writing to their group: the group must wait
// for the backend first (the model runner's SegmentingGroup does).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/parallel_config.h"
#include "worker/weight_loader.h"

namespace tessera {

class ColumnParallelLinear {
 public:
  // Loads rows `out_rows` of `name` (HF layout [out, in]).
  [[nodiscard]] absl::Status Load(WeightLoader& loader, const std::string& name, Range out_rows);
  // A fused projection: rows `out_rows` of each tensor, stacked in order into one weight (q, k, v; gate, up),
  // so that one GEMM computes them all. Nothing changes on disk: each rank stacks its own shard's rows.
  struct Part {
    std::string name;
    Range out_rows;
  };
  [[nodiscard]] absl::Status LoadFused(WeightLoader& loader, const std::vector<Part>& parts);
  // y[T, out_rows.size()] = x[T, in] @ weight^T.
  void Forward(Backend& backend, const Tensor& x, Tensor& y) const { backend.Linear(x, weight_, y); }
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_;  // [out_rows.size(), in] (fused: the parts' rows, stacked)
};

class RowParallelLinear {
 public:
  // Loads columns `in_cols` of `name` (HF layout [out, in]); `group` sums the partial outputs (null or size
  // 1: no communication).
  [[nodiscard]] absl::Status Load(WeightLoader& loader, const std::string& name, Range in_cols,
                                  Communicator* group);
  // y[T, out] = sum over the TP group of x[T, in_cols] @ weight^T. Errors: the communicator's.
  [[nodiscard]] absl::Status Forward(Backend& backend, const Tensor& x, Tensor& y) const;

 private:
  Tensor weight_;  // [out, in_cols.size()]
  Communicator* group_ = nullptr;
};

// The token embedding split over the vocabulary. Each rank holds rows `vocab` of the table plus, when the
// vocabulary is split, one zero row at the end: tokens outside its slice look up that row, and the all-reduce
// over the group adds up each token's one non-zero contribution.
class VocabParallelEmbedding {
 public:
  [[nodiscard]] absl::Status Load(WeightLoader& loader, const std::string& name, Range vocab,
                                  int64_t vocab_size, Communicator* group);
  // The row of the local table that token `id` reads (the zero row when id is outside the slice).
  int32_t LocalRow(int32_t id) const {
    if (!split_) return id;
    return id >= vocab_.begin && id < vocab_.end ? static_cast<int32_t>(id - vocab_.begin)
                                                 : static_cast<int32_t>(vocab_.size());
  }
  // out[T, hidden] = table[local_rows], summed over the group. Errors: the communicator's.
  [[nodiscard]] absl::Status Forward(Backend& backend, const Tensor& local_rows, Tensor& out) const;
  // The rows of this rank's slice (without the zero row): a tied lm_head uses them.
  Tensor SliceRows() const { return table_.Rows(0, vocab_.size()); }

 private:
  Tensor table_;  // [vocab.size() (+1 zero row when split), hidden]
  Range vocab_;
  bool split_ = false;
  Communicator* group_ = nullptr;
};

}  // namespace tessera

namespace tessera {

// The lm_head split over the vocabulary: each rank computes the logits of its slice, and a gather over the TP
// group assembles the full [S, vocab] logits on TP rank 0 only (the output rank's, the one that samples).
class ParallelLmHead {
 public:
  // `weight` holds the rows of this rank's slice (from lm_head.weight, or the embedding's slice when tied).
  // `config` gives every rank's slice; `group` is the TP group (null or size 1: nothing to gather).
  void Init(Tensor weight, const ParallelConfig& config, int tp_rank, Communicator* group);
  // Bytes of scratch Forward needs for `max_seqs` rows (allocated once by the caller).
  int64_t ScratchBytes(int64_t max_seqs) const;
  // logits[S, vocab] (F32) = x[S, hidden] @ lm_head^T on TP rank 0; other TP ranks leave logits unspecified.
  // Errors: the communicator's.
  [[nodiscard]] absl::Status Forward(Backend& backend, const Tensor& x, void* scratch, Tensor& logits) const;

 private:
  Tensor weight_;              // [vocab slice, hidden]
  std::vector<Range> slices_;  // every TP rank's vocabulary slice
  int64_t per_rank_ = 0;       // the largest slice: the gathered block of each rank
  int tp_rank_ = 0;
  Communicator* group_ = nullptr;
};

}  // namespace tessera
