#include "worker/kv_cache.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace tessera {

absl::StatusOr<KvCache> KvCache::Allocate(Backend& backend, const KvCacheShape& shape) {
  if (shape.num_layers <= 0 || shape.num_blocks <= 0 || shape.block_size <= 0 || shape.num_kv_heads <= 0 ||
      shape.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache shape must be positive: layers=", shape.num_layers, " blocks=", shape.num_blocks,
        " kv_heads=", shape.num_kv_heads, " head_dim=", shape.head_dim));
  }
  KvCache cache;
  cache.shape_ = shape;
  DType dtype = backend.activation_dtype();
  int64_t pool_elems = int64_t{shape.num_blocks} * shape.block_size * shape.num_kv_heads * shape.head_dim;
  int64_t pool_bytes = pool_elems * DTypeSize(dtype);
  ASSIGN_OR_RETURN(cache.storage_, backend.Allocate(pool_bytes * 2 * shape.num_layers));
  char* base = static_cast<char*>(cache.storage_.data());
  for (int l = 0; l < shape.num_layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      Tensor pool(base + (int64_t{2} * l + kv) * pool_bytes, dtype,
                  {shape.num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim});
      (kv == 0 ? cache.keys_ : cache.values_).push_back(pool);
    }
  }
  return cache;
}

BlockAllocator::BlockAllocator(int num_blocks) {
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

absl::Status BlockAllocator::Allocate(int count, std::vector<int32_t>& blocks) {
  if (count > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache is full: ", count, " blocks wanted, ", num_free(), " free"));
  }
  for (int i = 0; i < count; ++i) {
    blocks.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

absl::Status BlockAllocator::Cover(int64_t num_tokens, std::vector<int32_t>& block_table) {
  const int64_t wanted =
      (num_tokens + kKvBlockSize - 1) / kKvBlockSize - static_cast<int64_t>(block_table.size());
  return wanted > 0 ? Allocate(static_cast<int>(wanted), block_table) : absl::OkStatus();
}

void BlockAllocator::Free(const std::vector<int32_t>& blocks) {
  free_.insert(free_.end(), blocks.begin(), blocks.end());
}

}  // namespace tessera
