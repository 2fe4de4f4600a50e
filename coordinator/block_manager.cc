#include "coordinator/block_manager.h"

#include "core/check.h"

namespace tessera {

BlockManager::BlockManager(int num_blocks, int block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  TESSERA_CHECK(num_blocks >= 0 && block_size > 0);
  free_.reserve(num_blocks);
  for (int id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
}

bool BlockManager::TryReserve(int count) {
  if (count < 0 || reserved_ + count > num_blocks_) return false;
  reserved_ += count;
  return true;
}

void BlockManager::Grow(int64_t num_tokens, std::vector<int32_t>& table, std::vector<int32_t>& new_ids) {
  const int wanted = BlocksFor(num_tokens);
  while (static_cast<int>(table.size()) < wanted) {
    TESSERA_CHECK(!free_.empty());  // reservations make this impossible
    table.push_back(free_.back());
    new_ids.push_back(free_.back());
    free_.pop_back();
  }
}

void BlockManager::Release(std::vector<int32_t>& table, int reserved) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) free_.push_back(*it);
  table.clear();
  reserved_ -= reserved;
  TESSERA_CHECK(reserved_ >= 0);
}

}  // namespace tessera
