// BlockManager: the coordinator's owner of KV cache blocks (workers only read and write the blocks they are
// told to). Admission reserves a sequence's worst case (prompt + max_tokens) up front, so that blocks handed
// out lazily, as the sequence grows, never run short and nothing has to be preempted. Not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

namespace tessera {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_reserved() const { return reserved_; }
  // Blocks that hold `num_tokens` tokens.
  int BlocksFor(int64_t num_tokens) const {
    return static_cast<int>((num_tokens + block_size_ - 1) / block_size_);
  }

  // Reserves `count` blocks for a sequence if the unreserved ones suffice.
  bool TryReserve(int count);
  // Grows `table` to hold `num_tokens` tokens, appending the new ids to `table` and `new_ids`. The table's
  // sequence must hold a reservation covering num_tokens (CHECKed).
  void Grow(int64_t num_tokens, std::vector<int32_t>& table, std::vector<int32_t>& new_ids);
  // Returns a sequence's blocks and its reservation of `reserved` blocks; clears `table`.
  void Release(std::vector<int32_t>& table, int reserved);

 private:
  int num_blocks_;
  int block_size_;
  int reserved_ = 0;
  std::vector<int32_t> free_;  // a stack: the most recently freed block is reused first
};

}  // namespace tessera
