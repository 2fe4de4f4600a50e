#include "coordinator/kv_block_pool.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

// wyhash's 64x64 -> 128 multiply, folded.
inline uint64_t Mum(uint64_t a, uint64_t b) {
  const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

inline uint64_t SplitMix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

constexpr uint64_t kSecret0 = 0xa0761d6478bd642full;
constexpr uint64_t kSecret1 = 0xe7037ed1a0b428dbull;
constexpr uint64_t kSecret2 = 0x8ebc6af09c88c6e3ull;

}  // namespace

uint64_t KvBlockPool::HashBlock(uint64_t parent_hash, const int32_t* tokens, int32_t num_tokens) {
  uint64_t h = Mum(parent_hash ^ kSecret0, static_cast<uint64_t>(num_tokens) ^ kSecret1);
  int32_t i = 0;
  for (; i + 1 < num_tokens; i += 2) {
    const uint64_t pair =
        static_cast<uint32_t>(tokens[i]) | static_cast<uint64_t>(static_cast<uint32_t>(tokens[i + 1])) << 32;
    h = Mum(pair ^ kSecret1, h ^ kSecret2);
  }
  if (i < num_tokens) h = Mum(static_cast<uint32_t>(tokens[i]) ^ kSecret2, h ^ kSecret0);
  return SplitMix64(h);
}

KvBlockPool::CacheIndex::CacheIndex(int32_t max_entries) {
  if (max_entries == 0) return;
  size_t capacity = 2;
  while (capacity < 2 * static_cast<size_t>(max_entries)) capacity *= 2;
  slots_.resize(capacity);
  mask_ = capacity - 1;
}

int32_t KvBlockPool::CacheIndex::Find(uint64_t hash) const {
  if (size_ == 0) return kNil;
  for (uint64_t i = hash & mask_;; i = (i + 1) & mask_) {
    const Slot& slot = slots_[i];
    if (slot.block == kNil) return kNil;
    if (slot.hash == hash) return slot.block;
  }
}

void KvBlockPool::CacheIndex::Insert(uint64_t hash, int32_t block) {
  TESSERA_CHECK(static_cast<size_t>(size_) * 2 < slots_.size());  // one entry per block: never over half full
  uint64_t i = hash & mask_;
  while (slots_[i].block != kNil) i = (i + 1) & mask_;
  slots_[i] = {hash, block};
  ++size_;
}

void KvBlockPool::CacheIndex::Erase(uint64_t hash) {
  uint64_t i = hash & mask_;
  while (slots_[i].hash != hash || slots_[i].block == kNil) {
    TESSERA_CHECK(slots_[i].block != kNil);  // present
    i = (i + 1) & mask_;
  }
  // Backward-shift deletion: move later entries of the probe run into the hole when their home slot allows.
  for (uint64_t j = (i + 1) & mask_; slots_[j].block != kNil; j = (j + 1) & mask_) {
    const uint64_t home = slots_[j].hash & mask_;
    // Whether home lies cyclically in (i, j]: then the entry is still reachable from its home without slot i.
    const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (!stays) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i] = Slot{};
  --size_;
}

KvBlockPool::KvBlockPool(const KvBlockPoolConfig& config)
    : num_blocks_(config.num_blocks),
      block_size_(config.block_size),
      caching_(config.prefix_caching),
      hash_fn_(config.hash_fn ? config.hash_fn : &KvBlockPool::HashBlock),
      blocks_(static_cast<size_t>(config.num_blocks) + 1),
      cached_(config.prefix_caching == PrefixCaching::kEnabled ? config.num_blocks : 0) {
  TESSERA_CHECK(num_blocks_ >= 0 && block_size_ > 0);
  Block& sentinel = blocks_[num_blocks_];
  sentinel.prev = sentinel.next = num_blocks_;
  for (int32_t id = 0; id < num_blocks_; ++id) PushFreeTail(id);
  if (caching_enabled()) {
    tokens_.resize(static_cast<size_t>(num_blocks_) * block_size_);
  }
}

void KvBlockPool::PushFreeTail(int32_t id) {
  Block& sentinel = blocks_[num_blocks_];
  Block& b = blocks_[id];
  b.prev = sentinel.prev;
  b.next = num_blocks_;
  blocks_[sentinel.prev].next = id;
  sentinel.prev = id;
  ++num_free_;
}

void KvBlockPool::RemoveFree(int32_t id) {
  Block& b = blocks_[id];
  blocks_[b.prev].next = b.next;
  blocks_[b.next].prev = b.prev;
  b.prev = b.next = kNil;
  --num_free_;
}

int32_t KvBlockPool::PopFree() {
  const int32_t id = blocks_[num_blocks_].next;
  TESSERA_CHECK(id != num_blocks_);  // callers check num_free_ first
  RemoveFree(id);
  if (blocks_[id].entry != 0) Uncache(id);
  blocks_[id].ref_count = 1;
  return id;
}

void KvBlockPool::Uncache(int32_t id) {
  Block& b = blocks_[id];
  TESSERA_CHECK(cached_.Find(b.hash) == id);
  cached_.Erase(b.hash);
  b.entry = 0;
}

bool KvBlockPool::Holds(int32_t id, uint64_t parent_entry, const int32_t* tokens) const {
  const Block& b = blocks_[id];
  return b.parent_entry == parent_entry &&
         std::memcmp(BlockTokens(id), tokens, sizeof(int32_t) * block_size_) == 0;
}

int64_t KvBlockPool::Lookup(const int32_t* tokens, int64_t num_tokens, PrefixMatch& match) const {
  match.block_ids.clear();
  match.keys.clear();
  match.num_tokens = 0;
  match.num_queried = num_tokens;
  if (!caching_enabled() || num_tokens <= 1) return 0;
  const int64_t max_blocks = (num_tokens - 1) / block_size_;  // the last token is always computed
  uint64_t parent_hash = 0;
  uint64_t parent_entry = 0;
  for (int64_t i = 0; i < max_blocks; ++i) {
    const int32_t* block_tokens = tokens + i * block_size_;
    const uint64_t hash = hash_fn_(parent_hash, block_tokens, block_size_);
    const int32_t id = cached_.Find(hash);
    if (id == kNil || !Holds(id, parent_entry, block_tokens)) break;
    const uint64_t entry = blocks_[id].entry;
    match.block_ids.push_back(id);
    match.keys.push_back({hash, entry});
    parent_hash = hash;
    parent_entry = entry;
  }
  match.num_tokens = static_cast<int64_t>(match.block_ids.size()) * block_size_;
  return match.num_tokens;
}

int64_t KvBlockPool::BlocksNeeded(const PrefixMatch& match, int64_t num_tokens) const {
  int64_t needed = std::max<int64_t>(0, BlocksFor(num_tokens) - static_cast<int64_t>(match.block_ids.size()));
  for (int32_t id : match.block_ids) needed += blocks_[id].ref_count == 0;
  return needed;
}

int64_t KvBlockPool::BlocksNeeded(const BlockTable& table, int64_t num_tokens) const {
  if (num_tokens <= table.num_tokens) return 0;
  const bool copy = table.num_tokens % block_size_ != 0 && blocks_[table.block_ids.back()].ref_count > 1;
  return BlocksFor(num_tokens) - static_cast<int64_t>(table.block_ids.size()) + (copy ? 1 : 0);
}

bool KvBlockPool::Allocate(BlockTable& table, const PrefixMatch& match, int64_t num_tokens,
                           std::vector<int32_t>& new_ids) {
  TESSERA_CHECK(table.block_ids.empty() && table.num_tokens == 0 && table.full_keys.empty());
  TESSERA_CHECK(num_tokens >= match.num_tokens && match.block_ids.size() == match.keys.size());
  for (size_t i = 0; i < match.block_ids.size(); ++i) {
    TESSERA_CHECK(blocks_[match.block_ids[i]].entry == match.keys[i].entry);  // still the block Lookup saw
  }
  if (!CanAllocate(BlocksNeeded(match, num_tokens))) return false;
  for (int32_t id : match.block_ids) {
    if (blocks_[id].ref_count++ == 0) RemoveFree(id);
    table.block_ids.push_back(id);
    new_ids.push_back(id);
  }
  table.full_keys = match.keys;
  for (int32_t n = BlocksFor(num_tokens) - static_cast<int32_t>(match.block_ids.size()); n > 0; --n) {
    const int32_t id = PopFree();
    table.block_ids.push_back(id);
    new_ids.push_back(id);
  }
  table.num_tokens = num_tokens;
  if (caching_enabled()) {
    prefix_cache_queries_ += match.num_queried;
    prefix_cache_hits_ += match.num_tokens;
  }
  return true;
}

bool KvBlockPool::Grow(BlockTable& table, int64_t num_tokens, std::vector<int32_t>& new_ids,
                       std::vector<KvBlockCopy>& copies) {
  if (num_tokens <= table.num_tokens) return true;
  if (!CanAllocate(BlocksNeeded(table, num_tokens))) return false;
  if (table.num_tokens % block_size_ != 0 && blocks_[table.block_ids.back()].ref_count > 1) {
    const int32_t src = table.block_ids.back();
    const int32_t dst = PopFree();
    --blocks_[src].ref_count;  // still > 0: others hold it
    table.block_ids.back() = dst;
    copies.push_back({src, dst});
  }
  for (int32_t n = BlocksFor(num_tokens) - static_cast<int32_t>(table.block_ids.size()); n > 0; --n) {
    const int32_t id = PopFree();
    table.block_ids.push_back(id);
    new_ids.push_back(id);
  }
  table.num_tokens = num_tokens;
  return true;
}

uint64_t KvBlockPool::Register(int32_t id, uint64_t hash, uint64_t parent_entry, const int32_t* tokens) {
  if (parent_entry == FullBlockKey::kNoEntry) return FullBlockKey::kNoEntry;  // its prefix has no entry
  if (const int32_t cached = cached_.Find(hash); cached != kNil) {
    if (Holds(cached, parent_entry, tokens)) return blocks_[cached].entry;  // identical: keep it
    Uncache(cached);  // a collision (or an orphan whose parent entry was evicted): the newer block wins
  }
  Block& b = blocks_[id];
  // A block is cached under the one hash its tokens give, so a cached block of this sequence is the one
  // found.
  TESSERA_CHECK(b.entry == 0);
  b.hash = hash;
  b.entry = next_entry_++;
  b.parent_entry = parent_entry;
  std::memcpy(&tokens_[static_cast<size_t>(id) * block_size_], tokens, sizeof(int32_t) * block_size_);
  cached_.Insert(hash, id);
  return b.entry;
}

void KvBlockPool::Commit(BlockTable& table, const int32_t* tokens, int64_t num_computed) {
  TESSERA_CHECK(num_computed <= table.num_tokens);
  if (!caching_enabled()) return;
  const size_t num_full = static_cast<size_t>(num_computed / block_size_);
  for (size_t i = table.full_keys.size(); i < num_full; ++i) {
    const FullBlockKey parent = i == 0 ? FullBlockKey{0, 0} : table.full_keys[i - 1];
    const int32_t* block_tokens = tokens + i * block_size_;
    const uint64_t hash = hash_fn_(parent.hash, block_tokens, block_size_);
    table.full_keys.push_back({hash, Register(table.block_ids[i], hash, parent.entry, block_tokens)});
  }
}

void KvBlockPool::Fork(const BlockTable& parent, BlockTable& child) {
  TESSERA_CHECK(child.block_ids.empty() && child.num_tokens == 0 && child.full_keys.empty());
  for (int32_t id : parent.block_ids) {
    TESSERA_CHECK(blocks_[id].ref_count > 0);
    ++blocks_[id].ref_count;
  }
  child = parent;
}

void KvBlockPool::Free(BlockTable& table) {
  for (auto it = table.block_ids.rbegin(); it != table.block_ids.rend(); ++it) {
    Block& b = blocks_[*it];
    TESSERA_CHECK(b.ref_count > 0);
    if (--b.ref_count == 0) PushFreeTail(*it);
  }
  table.block_ids.clear();
  table.full_keys.clear();
  table.num_tokens = 0;
}

absl::Status KvBlockPool::CheckInvariants() const {
  std::vector<char> in_queue(static_cast<size_t>(num_blocks_), 0);
  int32_t queued = 0;
  int32_t prev = num_blocks_;
  for (int32_t id = blocks_[num_blocks_].next; id != num_blocks_; id = blocks_[id].next) {
    if (id < 0 || id >= num_blocks_) return absl::InternalError(Cat("free queue holds bad id ", id));
    if (in_queue[id]) return absl::InternalError(Cat("block ", id, " is twice in the free queue"));
    if (blocks_[id].prev != prev) return absl::InternalError(Cat("block ", id, "'s prev link is broken"));
    if (blocks_[id].ref_count != 0) {
      return absl::InternalError(
          Cat("block ", id, " is in the free queue with refcount ", blocks_[id].ref_count));
    }
    in_queue[id] = 1;
    prev = id;
    if (++queued > num_blocks_) return absl::InternalError("the free queue has a cycle");
  }
  if (blocks_[num_blocks_].prev != prev) return absl::InternalError("the free queue's tail link is broken");
  if (queued != num_free_) {
    return absl::InternalError(Cat("num_free ", num_free_, " but ", queued, " queued"));
  }
  int32_t num_entries = 0;
  for (int32_t id = 0; id < num_blocks_; ++id) {
    const Block& b = blocks_[id];
    if (b.ref_count < 0) return absl::InternalError(Cat("block ", id, " has refcount ", b.ref_count));
    if (b.ref_count == 0 && !in_queue[id]) {
      return absl::InternalError(Cat("block ", id, " has refcount 0 but is not in the free queue"));
    }
    if (b.entry == 0) continue;
    ++num_entries;
    if (!caching_enabled()) return absl::InternalError(Cat("block ", id, " is cached with caching disabled"));
    if (cached_.Find(b.hash) != id) {
      return absl::InternalError(Cat("cached block ", id, " is not the hash map's entry for its hash"));
    }
  }
  if (num_entries != num_cached()) {
    return absl::InternalError(Cat(num_cached(), " hash map entries but ", num_entries, " cached blocks"));
  }
  return absl::OkStatus();
}

}  // namespace tessera
