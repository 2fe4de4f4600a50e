// PlanAttention (see attention_plan.h).
#include "kernels/cuda/attention_plan.h"

#include <algorithm>

#include "kernels/cuda/cuda_kernels.h"

namespace tessera {
namespace {

// kAuto takes the tensor cores once a sequence brings at least this many new tokens. Such a step is a prefill
// (or carries one), where the 64-row mma tiles fill up; a decode-only step reads each sequence's keys once
// for `group` rows, is bound by memory, and keeps the CUDA-core kernel and its split.
constexpr int kMmaMinQueryLen = 2;

}  // namespace

AttentionPlan PlanAttention(AttentionKernel kernel, const AttentionShape& s, int multiprocessors) {
  AttentionPlan plan;
  const int group = s.num_heads / s.num_kv_heads;
  const int64_t tokens_per_tile = cuda::AttentionTokensPerTile(group);
  const int64_t tiles = (s.max_query_len + tokens_per_tile - 1) / tokens_per_tile;
  const int64_t blocks = static_cast<int64_t>(s.num_seqs) * tiles * s.num_kv_heads;
  const int64_t target = 2 * static_cast<int64_t>(multiprocessors);
  int parts = 1;
  if (blocks < target && s.max_seq_len > 256) {
    parts = static_cast<int>(
        std::min<int64_t>({(s.max_seq_len + 127) / 128, (target + blocks - 1) / blocks, 64}));
  }
  const bool mma_fits = kernel != AttentionKernel::kSimt && cuda::MmaAttentionSupports(s.head_dim);
  plan.mma =
      mma_fits && (kernel == AttentionKernel::kMma || (s.max_query_len >= kMmaMinQueryLen && parts == 1));
  if (!plan.mma && parts > 1) {
    plan.num_parts = parts;
    plan.partial_bytes = static_cast<int64_t>(parts) * s.num_tokens * s.num_heads * (s.head_dim + 2) * 4;
  }
  return plan;
}

}  // namespace tessera
