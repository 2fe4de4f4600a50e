#include "parallel/parallel_config.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<ParallelConfig> ParallelConfig::Create(const ShardedShape& shape, int tp, int pp,
                                                      std::vector<int> pp_layers) {
  auto error = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (tp < 1) return error("tp=", tp, " must be at least 1");
  if (pp < 1) return error("pp=", pp, " must be at least 1");
  if (shape.num_heads % tp != 0)
    return error("num_attention_heads=", shape.num_heads, " is not divisible by tp=", tp);
  if (shape.num_kv_heads <= 0 || shape.num_heads % shape.num_kv_heads != 0) {
    return error("num_key_value_heads=", shape.num_kv_heads,
                 " does not divide num_attention_heads=", shape.num_heads);
  }
  if (shape.num_kv_heads % tp != 0 && tp % shape.num_kv_heads != 0) {
    return error("num_key_value_heads=", shape.num_kv_heads, " and tp=", tp,
                 " do not divide one another (KV heads are split, or replicated when tp is a multiple)");
  }
  if (shape.intermediate_size % tp != 0) {
    return error("intermediate_size=", shape.intermediate_size, " is not divisible by tp=", tp);
  }
  if (shape.vocab_size < tp) return error("vocab_size=", shape.vocab_size, " is smaller than tp=", tp);
  if (pp > shape.num_layers) return error("pp=", pp, " is larger than num_hidden_layers=", shape.num_layers);

  if (pp_layers.empty()) {
    pp_layers.assign(pp, shape.num_layers / pp);
    for (int i = 0; i < shape.num_layers % pp; ++i) pp_layers[pp - 2 - i] += 1;
  }
  if (static_cast<int>(pp_layers.size()) != pp) {
    return error("--pp-layers has ", pp_layers.size(), " entries (", absl::StrJoin(pp_layers, ","),
                 ") but pp=", pp);
  }
  for (int n : pp_layers) {
    if (n < 1)
      return error("--pp-layers ", absl::StrJoin(pp_layers, ","), ": every stage needs at least one layer");
  }
  const int total = std::accumulate(pp_layers.begin(), pp_layers.end(), 0);
  if (total != shape.num_layers) {
    return error("--pp-layers ", absl::StrJoin(pp_layers, ","), " sums to ", total,
                 " but num_hidden_layers=", shape.num_layers);
  }
  std::vector<int> starts(pp + 1, 0);
  for (int s = 0; s < pp; ++s) starts[s + 1] = starts[s] + pp_layers[s];
  return ParallelConfig(shape, tp, pp, std::move(starts));
}

Range ParallelConfig::StageLayers(int pp_rank) const {
  return {stage_starts_[pp_rank], stage_starts_[pp_rank + 1]};
}

Range ParallelConfig::QueryHeads(int tp_rank) const {
  const int64_t per_rank = shape_.num_heads / tp_;
  return {tp_rank * per_rank, (tp_rank + 1) * per_rank};
}

Range ParallelConfig::KvHeads(int tp_rank) const {
  if (tp_ > shape_.num_kv_heads) {
    const int64_t head = tp_rank / (tp_ / shape_.num_kv_heads);
    return {head, head + 1};
  }
  const int64_t per_rank = shape_.num_kv_heads / tp_;
  return {tp_rank * per_rank, (tp_rank + 1) * per_rank};
}

Range ParallelConfig::IntermediateShard(int tp_rank) const {
  const int64_t per_rank = shape_.intermediate_size / tp_;
  return {tp_rank * per_rank, (tp_rank + 1) * per_rank};
}

Range ParallelConfig::VocabShard(int tp_rank) const {
  const int64_t per_rank = CeilDiv(shape_.vocab_size, tp_);
  return {std::min(shape_.vocab_size, tp_rank * per_rank),
          std::min(shape_.vocab_size, (tp_rank + 1) * per_rank)};
}

std::string ParallelConfig::TpGroupName(int rank) const { return absl::StrCat("tp", PpRank(rank)); }
std::string ParallelConfig::PpGroupName(int rank) const { return absl::StrCat("pp", TpRank(rank)); }

std::string ParallelConfig::ToString() const {
  std::string layers;
  for (int s = 0; s < pp_; ++s)
    absl::StrAppend(&layers, "[", stage_starts_[s], ",", stage_starts_[s + 1], ")");
  return absl::StrCat("tp=", tp_, " pp=", pp_, " layers=", layers);
}

}  // namespace tessera
