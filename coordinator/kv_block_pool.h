// KvBlockPool: the coordinator's owner of KV cache blocks with automatic prefix caching, as vLLM V1's
// BlockPool and KVCacheManager. Blocks are handed out on demand as sequences grow (the scheduler preempts
// when they run out), full blocks are cached under a chained hash of their tokens and reused by later prompts
// that start the same way, and sequences fork by sharing blocks, copying a shared partial block before
// writing into it.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

enum class PrefixCaching { kEnabled, kDisabled };

struct KvBlockPoolConfig {
  // The hash of a full block's tokens chained to its parent's (the block before it; 0 for the first block).
  using HashFn = uint64_t (*)(uint64_t parent_hash, const int32_t* tokens, int32_t num_tokens);

  int32_t num_blocks = 0;
  int32_t block_size = 16;  // tokens per block
  PrefixCaching prefix_caching = PrefixCaching::kEnabled;
  HashFn hash_fn = nullptr;  // null = KvBlockPool::HashBlock; tests inject a weak one to force collisions
};

// What a computed full block holds. `hash` chains the hashes of every block before it with this block's
// tokens; `entry` names the cache entry that holds exactly this content (tokens and, through the parent's
// entry, the whole prefix), or kNoEntry when none could be made (a hash collision with a different block).
struct FullBlockKey {
  static constexpr uint64_t kNoEntry = ~uint64_t{0};
  uint64_t hash = 0;
  uint64_t entry = kNoEntry;
};

// A sequence's blocks. Owned by the caller (the scheduler's sequence) and changed only by the pool.
struct BlockTable {
  std::vector<int32_t> block_ids;       // in token order; size() == BlocksFor(num_tokens)
  int64_t num_tokens = 0;               // token slots the blocks were grown to hold
  std::vector<FullBlockKey> full_keys;  // keys of the first full_keys.size() blocks, computed and committed
};

// A worker-side copy of every layer's keys and values from block src into block dst (control Step's copies).
struct KvBlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
  bool operator==(const KvBlockCopy&) const = default;
};

// A cached prefix found by Lookup, taken by Allocate.
struct PrefixMatch {
  std::vector<int32_t> block_ids;  // the cached blocks, in token order
  std::vector<FullBlockKey> keys;  // their keys
  int64_t num_tokens = 0;          // tokens they hold: block_ids.size() * block_size
  int64_t num_queried = 0;         // the tokens Lookup was asked about (the prefix cache query)
};

// Caching: a block becomes cached when Commit sees it full. The hash map holds one block per hash, indexed by
// the hash's low bits (a hash function must mix well for speed, not for correctness). A hit is verified
// against the stored tokens and the parent's entry id (ids are never reused), so by induction a hit holds
// exactly the tokens and prefix asked for: a hash collision costs a miss, never wrong KV. Cached blocks stay
// cached after Free (refcount 0, in the free queue) until the allocator takes them for something else.
//
// Free queue: the blocks with refcount 0, cached or not, in one LRU list (an intrusive doubly linked list
// over block ids). Allocation takes the head (least recently freed), evicting its cache entry; Free appends a
// sequence's blocks to the tail last block first, so a prefix's tail is evicted before its head; a cache hit
// on a free block takes it out of the list. Every operation is O(1) per block it touches.
//
// Not thread-safe: the scheduler calls it under its own lock.
class KvBlockPool {
 public:
  explicit KvBlockPool(const KvBlockPoolConfig& config);

  // The default block hash: wyhash-style 64x64->128 multiply-folds over pairs of token ids seeded with the
  // parent's hash, finished with splitmix64. Not cryptographic (hits are verified, see above).
  static uint64_t HashBlock(uint64_t parent_hash, const int32_t* tokens, int32_t num_tokens);

  int32_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  bool caching_enabled() const { return caching_ == PrefixCaching::kEnabled; }
  // Blocks with refcount 0, cached or not: what allocation can take.
  int32_t num_free() const { return num_free_; }
  // Blocks cached (in use or free).
  int32_t num_cached() const { return cached_.size(); }
  // The fraction of blocks in use (refcount > 0), in [0, 1].
  double Usage() const { return num_blocks_ ? 1.0 - static_cast<double>(num_free_) / num_blocks_ : 0.0; }
  // Blocks that hold `num_tokens` tokens.
  int32_t BlocksFor(int64_t num_tokens) const {
    return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
  }
  int32_t ref_count(int32_t block_id) const { return blocks_[block_id].ref_count; }
  // Whether `num_blocks` blocks can be allocated now.
  bool CanAllocate(int64_t num_blocks) const { return num_blocks <= num_free_; }

  // Prefix cache counters in tokens (vLLM's prefix_cache_queries / prefix_cache_hits), counted by Allocate.
  int64_t prefix_cache_queries() const { return prefix_cache_queries_; }
  int64_t prefix_cache_hits() const { return prefix_cache_hits_; }

  // Finds the longest run of cached full blocks starting `tokens[0, num_tokens)`, never covering the last
  // token (the engine must compute it to get logits): at most (num_tokens - 1) / block_size blocks. Fills
  // `match` (replacing its contents) and returns match.num_tokens. Changes nothing (the blocks stay free and
  // evictable): pass the match to Allocate before the pool next allocates, grows or commits (Free keeps it
  // valid, so a scheduler may preempt and retry). 0 when caching is disabled.
  int64_t Lookup(const int32_t* tokens, int64_t num_tokens, PrefixMatch& match) const;

  // Free-queue blocks Allocate(match, num_tokens) would take (the match's free blocks plus the new ones), and
  // Grow(table, num_tokens) would take (new blocks plus one for a copy-on-write).
  int64_t BlocksNeeded(const PrefixMatch& match, int64_t num_tokens) const;
  int64_t BlocksNeeded(const BlockTable& table, int64_t num_tokens) const;

  // Starts an empty `table` (CHECKed) with the match's cached blocks (refcount + 1, taken out of the free
  // queue when free) and grows it to `num_tokens` (>= match.num_tokens, CHECKed) with new blocks. Appends
  // every id of the table (cached ones first) to `new_ids`. Counts a prefix cache query of match.num_queried
  // tokens and match.num_tokens hits. Returns false, changing nothing, when the free blocks do not suffice.
  // The match must still be valid: its blocks hold the entries Lookup saw (CHECKed). An empty match starts a
  // plain table.
  bool Allocate(BlockTable& table, const PrefixMatch& match, int64_t num_tokens,
                std::vector<int32_t>& new_ids);

  // Grows `table` to hold `num_tokens` token slots (no-op when it already does). New blocks are appended to
  // table.block_ids and `new_ids`. When the table's partial last block is shared (refcount > 1) and tokens
  // are to be written into it, it is first replaced by a private copy: table.block_ids.back() becomes a new
  // block dst and {src, dst} is appended to `copies` (dst is not in `new_ids`: the workers must swap src for
  // dst in this sequence's block table). Full blocks are never written, so never copied. Returns false,
  // changing nothing, when the free blocks do not suffice (the scheduler preempts and retries).
  bool Grow(BlockTable& table, int64_t num_tokens, std::vector<int32_t>& new_ids,
            std::vector<KvBlockCopy>& copies);

  // Records that the first `num_computed` tokens of the table's sequence, `tokens[0, num_computed)`, are in
  // the KV cache (num_computed <= table.num_tokens, CHECKed) and caches the blocks that became full. When an
  // identical block is already cached, that entry stays and the sequence keeps its own block, uncached. When
  // another block holds the hash (a collision), the newer block takes the entry. No-op when caching is off.
  void Commit(BlockTable& table, const int32_t* tokens, int64_t num_computed);

  // Makes `child` (empty, CHECKed) share every block of `parent` (refcount + 1 each): n > 1 choices.
  void Fork(const BlockTable& parent, BlockTable& child);

  // Returns the table's blocks (refcount - 1); those reaching 0 join the free queue's tail, last block first,
  // keeping their cache entries. Clears `table`.
  void Free(BlockTable& table);

  // Every invariant of the pool's state, for tests: each block is either in use (refcount > 0) or in the free
  // queue, exactly once; num_free() counts the queue; the hash map and the blocks' cache entries agree.
  // Internal error naming the first broken one.
  [[nodiscard]] absl::Status CheckInvariants() const;

 private:
  static constexpr int32_t kNil = -1;

  struct Block {
    int32_t ref_count = 0;
    int32_t prev = kNil;  // free queue links (sentinel: num_blocks_); kNil when in use
    int32_t next = kNil;
    uint64_t hash = 0;          // when cached
    uint64_t entry = 0;         // cache entry id; 0 = not cached
    uint64_t parent_entry = 0;  // the entry of the block before it (0 for a sequence's first block)
  };
  // The cache's hash -> block map: open addressing with linear probing over a table allocated once (a power
  // of two >= 2 * num_blocks slots, so at most half full), indexed by the hash's low bits; erase shifts back.
  class CacheIndex {
   public:
    explicit CacheIndex(int32_t max_entries);
    int32_t size() const { return size_; }
    // The block cached under `hash`, or kNil.
    int32_t Find(uint64_t hash) const;
    // `hash` must be absent.
    void Insert(uint64_t hash, int32_t block);
    // `hash` must be present.
    void Erase(uint64_t hash);

   private:
    struct Slot {
      uint64_t hash = 0;
      int32_t block = kNil;  // kNil = empty
    };
    std::vector<Slot> slots_;
    uint64_t mask_ = 0;
    int32_t size_ = 0;
  };

  const int32_t* BlockTokens(int32_t id) const { return &tokens_[static_cast<size_t>(id) * block_size_]; }
  // Whether cached block `id` holds `tokens` after the block of entry `parent_entry`.
  bool Holds(int32_t id, uint64_t parent_entry, const int32_t* tokens) const;
  void PushFreeTail(int32_t id);
  void RemoveFree(int32_t id);
  // Takes the free queue's head, evicting its cache entry; refcount 1.
  int32_t PopFree();
  void Uncache(int32_t id);
  // Caches full block `id` (a sequence's block) under `hash` after `parent_entry`; returns its content's
  // entry.
  uint64_t Register(int32_t id, uint64_t hash, uint64_t parent_entry, const int32_t* tokens);

  int32_t num_blocks_;
  int32_t block_size_;
  PrefixCaching caching_;
  KvBlockPoolConfig::HashFn hash_fn_;
  std::vector<Block> blocks_;  // [num_blocks + 1]: the last is the free queue's sentinel
  int32_t num_free_ = 0;
  std::vector<int32_t> tokens_;  // [num_blocks * block_size] the tokens of each cached block (caching only)
  CacheIndex cached_;            // hash -> cached block
  uint64_t next_entry_ = 1;
  int64_t prefix_cache_queries_ = 0;
  int64_t prefix_cache_hits_ = 0;
};

}  // namespace tessera
