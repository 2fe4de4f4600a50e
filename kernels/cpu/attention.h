// Paged attention kernels for the CPU backend: one work item is (token, kv head), which computes the
// attention of all the query heads sharing that kv head over the token's causal context, read through its
// sequence's block table. Online (streaming) softmax in fp32. The same source is compiled twice: for the
// baseline ISA and for AVX-512 (attention_avx512.cc), chosen at run time.
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace tessera {

struct AttentionArgs {
  const AttentionMeta* meta = nullptr;
  const float* q = nullptr;        // [T, num_heads * head_dim]
  const float* k_cache = nullptr;  // [num_blocks, block_size, num_kv_heads, head_dim]
  const float* v_cache = nullptr;  // same
  float* out = nullptr;            // [T, num_heads * head_dim]
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
};

// Largest head_dim the kernels accept (CHECKed by the backend).
inline constexpr int kMaxAttentionHeadDim = 512;

// Runs work items [begin, end): item = token * num_kv_heads + kv_head.
using AttentionFn = void (*)(const AttentionArgs& args, int64_t begin, int64_t end);
void AttentionGeneric(const AttentionArgs& args, int64_t begin, int64_t end);
void AttentionAvx512(const AttentionArgs& args, int64_t begin, int64_t end);
// The fastest kernel this CPU supports.
AttentionFn BestAttentionFn();

}  // namespace tessera
