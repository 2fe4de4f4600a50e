// The inputs of one forward step in vLLM's flattened layout: the new tokens of every scheduled sequence in
// one array, with per-sequence offsets, positions, block tables and KV slots (kernels' AttentionMeta), plus
// the rows whose logits are wanted (each sequence's last new token).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/backend.h"

namespace tessera {

// What the host decides for a step; built by the runner, copied to the device once per step.
struct HostBatch {
  std::vector<int32_t> token_ids;     // [num_tokens]: the embedding row of each new token (its id without TP)
  std::vector<int32_t> positions;     // [num_tokens]
  std::vector<int32_t> slot_mapping;  // [num_tokens]
  std::vector<int32_t> query_start;   // [num_seqs + 1]
  std::vector<int32_t> seq_lens;      // [num_seqs]
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq], padded with 0
  std::vector<int32_t> logit_rows;    // [num_seqs]: index in token_ids of each sequence's last new token
  int max_blocks_per_seq = 0;
  int max_query_len = 0;
  int max_seq_len = 0;

  int num_seqs() const { return static_cast<int>(seq_lens.size()); }
  int num_tokens() const { return static_cast<int>(token_ids.size()); }
  void Clear();
};

// Device-side view of a HostBatch, valid until the next step.
struct BatchMeta {
  AttentionMeta attention;
  Tensor token_ids;   // I32 [num_tokens]: embedding rows (see HostBatch::token_ids)
  Tensor logit_rows;  // I32 [num_seqs]
  int num_tokens() const { return attention.num_tokens; }
  int num_seqs() const { return attention.num_seqs; }
};

}  // namespace tessera
