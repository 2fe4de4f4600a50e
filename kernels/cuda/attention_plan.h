// How PagedAttention runs a step on the GPU, decided on the host from the step's shape alone (so that it is
// tested without a GPU, and so that a step graph replays the same decision): which kernel, and into how many
// parts each row's context is split (flash-decoding) when the blocks alone would not fill the GPU.
#pragma once

#include <cstdint>

namespace tessera {

// Which kernel PagedAttention runs.
//  - kAuto: the tensor-core kernel (attention_mma.cu) when head_dim is 64, 128 or 256, the step has a query
//    run of at least 2 tokens (prefill, chunked prefill, or prefill mixed with decode) and the context is not
//    split; otherwise (decode-only steps, other head dims) the CUDA-core kernel (attention.cu) with its
//    split.
//  - kSimt: always the CUDA-core kernel.
//  - kMma: the tensor-core kernel wherever it supports head_dim, over whole contexts (no split, even for
//    decode with few sequences); the CUDA-core kernel for other head dims.
// When the option is kAuto, the environment variable TESSERA_CUDA_ATTENTION=auto|simt|mma (read once, by
// Create) chooses instead; an explicit kSimt or kMma wins over it.
enum class AttentionKernel { kAuto, kSimt, kMma };

// The shape of one attention step, as AttentionMeta and the head counts give it.
struct AttentionShape {
  int num_seqs = 0;
  int num_tokens = 0;
  int max_query_len = 0;  // longest new-token run
  int max_seq_len = 0;    // longest context (a step graph states the longest a sequence can have)
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

struct AttentionPlan {
  bool mma = false;   // the tensor-core kernel (whole contexts); else the CUDA-core kernel
  int num_parts = 1;  // CUDA-core kernel: each row's context split into this many parts, then combined
  int64_t partial_bytes = 0;  // the split's fp32 workspace: num_parts x tokens x heads x (head_dim + 2)
};

// The split: when (sequences x query tiles x KV heads) blocks would not give each of `multiprocessors` two,
// and the longest context passes 256 keys: enough parts for that, at most 64, and few enough that the longest
// context's parts hold >= 128 keys (shorter rows split their own contexts into as many, shorter parts).
AttentionPlan PlanAttention(AttentionKernel kernel, const AttentionShape& shape, int multiprocessors);

}  // namespace tessera
