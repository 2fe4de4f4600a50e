// Paged KV cache storage of one rank: per layer a key and a value pool of fixed-size blocks, allocated once,
// and BlockAllocator, a free list of block ids for callers that play the coordinator's part themselves
// (`tessera generate`, tests, benchmarks); in serving the coordinator's block manager owns allocation.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace tessera {

// Tokens per KV block.
inline constexpr int kKvBlockSize = 16;

struct KvCacheShape {
  int num_layers = 0;
  int num_blocks = 0;
  int block_size = kKvBlockSize;
  int num_kv_heads = 0;  // local to this rank
  int head_dim = 0;

  // Bytes of one block over all layers, keys and values.
  int64_t BytesPerBlock(DType dtype) const {
    return int64_t{2} * num_layers * block_size * num_kv_heads * head_dim * DTypeSize(dtype);
  }
};

class KvCache {
 public:
  // Allocates every layer's pools ([num_blocks, block_size, num_kv_heads, head_dim] of the backend's
  // activation dtype). Errors: RESOURCE_EXHAUSTED when the memory is not there.
  [[nodiscard]] static absl::StatusOr<KvCache> Allocate(Backend& backend, const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  Tensor& key(int layer) { return keys_[layer]; }
  Tensor& value(int layer) { return values_[layer]; }

 private:
  KvCacheShape shape_;
  DeviceBuffer storage_;
  std::vector<Tensor> keys_;    // [num_layers] x [num_blocks, block_size, num_kv_heads, head_dim]
  std::vector<Tensor> values_;  // [num_layers] x [num_blocks, block_size, num_kv_heads, head_dim]
};

// Hands out KV block ids. Not thread-safe.
class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks);
  // Takes `count` free blocks, appending their ids to `blocks`. Errors: RESOURCE_EXHAUSTED (nothing taken).
  [[nodiscard]] absl::Status Allocate(int count, std::vector<int32_t>& blocks);
  // Appends blocks to `block_table` until it covers `num_tokens` tokens (kKvBlockSize per block). Errors:
  // RESOURCE_EXHAUSTED (nothing taken).
  [[nodiscard]] absl::Status Cover(int64_t num_tokens, std::vector<int32_t>& block_table);
  void Free(const std::vector<int32_t>& blocks);
  int num_free() const { return static_cast<int>(free_.size()); }

 private:
  std::vector<int32_t> free_;
};

}  // namespace tessera
