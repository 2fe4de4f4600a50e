// ParallelConfig: all rank arithmetic of tensor x pipeline parallelism in one tested class (Megatron layout,
// as vLLM and TensorRT-LLM): rank = pp_rank * tp_size + tp_rank; layers split over pipeline stages; attention
// heads, KV heads (replicated when tp > num_kv_heads), MLP columns and the vocabulary split over TP ranks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

// The model dimensions that sharding depends on (parallel/ knows nothing else of the model).
struct ShardedShape {
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
};

// A half-open range [begin, end).
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const Range&) const = default;
};

class ParallelConfig {
 public:
  // Validates the split. `pp_layers` (optional) gives each stage's layer count: pp positive entries summing
  // to num_layers. Empty means as even as possible; the leftover layers go one each to the stages before the
  // last, from the second-to-last backwards (the last stage also runs the lm_head), as vLLM does.
  // Errors: INVALID_ARGUMENT naming the numbers, e.g. "num_attention_heads=9 is not divisible by tp=2".
  [[nodiscard]] static absl::StatusOr<ParallelConfig> Create(const ShardedShape& shape, int tp, int pp,
                                                             std::vector<int> pp_layers = {});

  int tp_size() const { return tp_; }
  int pp_size() const { return pp_; }
  int world_size() const { return tp_ * pp_; }

  int Rank(int pp_rank, int tp_rank) const { return pp_rank * tp_ + tp_rank; }
  int TpRank(int rank) const { return rank % tp_; }
  int PpRank(int rank) const { return rank / tp_; }
  // The rank that samples: the last stage's TP rank 0.
  int output_rank() const { return Rank(pp_ - 1, 0); }
  bool IsFirstStage(int pp_rank) const { return pp_rank == 0; }
  bool IsLastStage(int pp_rank) const { return pp_rank == pp_ - 1; }

  // Layers [begin, end) of a pipeline stage.
  Range StageLayers(int pp_rank) const;
  // Query heads of a TP rank (num_heads / tp each).
  Range QueryHeads(int tp_rank) const;
  // KV heads of a TP rank: num_kv_heads / tp each, or, when tp > num_kv_heads, the one head it shares with
  // tp / num_kv_heads - 1 other ranks (replication).
  Range KvHeads(int tp_rank) const;
  // Columns of gate/up (rows of down's input) of a TP rank.
  Range IntermediateShard(int tp_rank) const;
  // Vocabulary rows of the embedding and lm_head: ceil(vocab / tp) each, the last rank taking what is left.
  Range VocabShard(int tp_rank) const;

  // The GPU a rank uses on a node that shows `num_devices` GPUs to it: one per rank in rank order, wrapping
  // around (ranks 0..N-1 of a node with N GPUs each get their own; more ranks than GPUs share them).
  static int DeviceOfRank(int rank, int num_devices) { return rank % num_devices; }

  // Names of a rank's groups (unique within one bring-up; callers may prefix them): "tp<pp_rank>", the TP
  // group of its stage, and "pp<tp_rank>", the pipeline through every stage with its TP rank.
  std::string TpGroupName(int rank) const;
  std::string PpGroupName(int rank) const;

  // "tp=2 pp=2 layers=[0,8)[8,16)".
  std::string ToString() const;

 private:
  ParallelConfig(const ShardedShape& shape, int tp, int pp, std::vector<int> stage_starts)
      : shape_(shape), tp_(tp), pp_(pp), stage_starts_(std::move(stage_starts)) {}

  ShardedShape shape_;
  int tp_;
  int pp_;
  std::vector<int> stage_starts_;  // [pp + 1]: stage s owns layers [stage_starts_[s], stage_starts_[s + 1])
};

}  // namespace tessera
