// KvBlockPool: allocation on demand, prefix cache hits (chained, verified, never the last token), LRU
// eviction, fork and copy-on-write, failures that change nothing, hash collisions, and a randomized run
// against a shadow KV cache that checks every cache hit serves the keys and values of exactly the tokens
// asked for.
#include "coordinator/kv_block_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr int32_t kBlockSize = 4;

KvBlockPool MakePool(int32_t num_blocks, PrefixCaching caching = PrefixCaching::kEnabled,
                     KvBlockPoolConfig::HashFn hash_fn = nullptr, int32_t block_size = kBlockSize) {
  return KvBlockPool(KvBlockPoolConfig{
      .num_blocks = num_blocks, .block_size = block_size, .prefix_caching = caching, .hash_fn = hash_fn});
}

// n tokens first, first + 1, ...
std::vector<int32_t> Range(int32_t first, int32_t n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Admits `prompt` as the scheduler will: looks up its cached prefix, allocates, and (as if the step ran)
// commits the whole prompt. Returns the cached tokens, or -1 when the blocks did not suffice.
int64_t Admit(KvBlockPool& pool, BlockTable& table, const std::vector<int32_t>& prompt) {
  PrefixMatch match;
  const int64_t n = static_cast<int64_t>(prompt.size());
  pool.Lookup(prompt.data(), n, match);
  std::vector<int32_t> new_ids;
  if (!pool.Allocate(table, match, n, new_ids)) return -1;
  EXPECT_EQ(new_ids, table.block_ids);
  pool.Commit(table, prompt.data(), n);
  return match.num_tokens;
}

int64_t CachedTokens(const KvBlockPool& pool, const std::vector<int32_t>& tokens) {
  PrefixMatch match;
  return pool.Lookup(tokens.data(), static_cast<int64_t>(tokens.size()), match);
}

TEST(KvBlockPoolTest, AllocationAndFreeReturnEveryBlock) {
  KvBlockPool pool = MakePool(10);
  BlockTable a, b;
  std::vector<int32_t> new_ids;
  std::vector<KvBlockCopy> copies;
  ASSERT_TRUE(pool.Allocate(a, PrefixMatch{}, 9, new_ids));  // 3 blocks
  EXPECT_EQ(a.block_ids.size(), 3u);
  EXPECT_EQ(a.num_tokens, 9);
  ASSERT_TRUE(pool.Grow(a, 13, new_ids, copies));  // a 4th
  ASSERT_TRUE(pool.Allocate(b, PrefixMatch{}, 1, new_ids));
  EXPECT_EQ(new_ids.size(), 5u);
  EXPECT_THAT(copies, IsEmpty());
  EXPECT_EQ(pool.num_free(), 5);
  EXPECT_DOUBLE_EQ(pool.Usage(), 0.5);
  EXPECT_OK(pool.CheckInvariants());
  pool.Free(a);
  pool.Free(b);
  EXPECT_TRUE(a.block_ids.empty());
  EXPECT_EQ(a.num_tokens, 0);
  EXPECT_EQ(pool.num_free(), 10);
  EXPECT_DOUBLE_EQ(pool.Usage(), 0.0);
  EXPECT_OK(pool.CheckInvariants());
}

TEST(KvBlockPoolTest, ReusesACachedPrefixAcrossSequences) {
  KvBlockPool pool = MakePool(16);
  std::vector<int32_t> first = Range(100, 3 * kBlockSize);  // a 3-block prefix ...
  std::vector<int32_t> second = first;
  first.insert(first.end(), {1, 2});  // ... then different tails
  second.insert(second.end(), {7, 8, 9});
  BlockTable a, b;
  EXPECT_EQ(Admit(pool, a, first), 0);
  EXPECT_EQ(pool.num_cached(), 3);  // the partial 4th block is not cached
  EXPECT_EQ(Admit(pool, b, second), 3 * kBlockSize);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(b.block_ids[i], a.block_ids[i]);
    EXPECT_EQ(pool.ref_count(a.block_ids[i]), 2);
  }
  EXPECT_NE(b.block_ids[3], a.block_ids[3]);
  EXPECT_EQ(pool.num_free(), 16 - 5);
  EXPECT_OK(pool.CheckInvariants());
}

TEST(KvBlockPoolTest, MissesFromTheFirstBlockWhereAnyTokenDiffers) {
  KvBlockPool pool = MakePool(16);
  const std::vector<int32_t> prompt = Range(100, 3 * kBlockSize + 1);
  BlockTable a;
  Admit(pool, a, prompt);
  for (int pos = 0; pos < 3 * kBlockSize; ++pos) {
    std::vector<int32_t> other = prompt;
    other[pos] = 7;
    // The blocks after the changed one hold the same tokens, but their chained hashes differ.
    EXPECT_EQ(CachedTokens(pool, other), pos / kBlockSize * kBlockSize) << "token " << pos << " changed";
  }
}

TEST(KvBlockPoolTest, NeverServesTheLastTokenFromTheCache) {
  KvBlockPool pool = MakePool(16);
  const std::vector<int32_t> prompt = Range(100, 3 * kBlockSize);  // exactly 3 full blocks
  BlockTable a;
  Admit(pool, a, prompt);
  ASSERT_EQ(pool.num_cached(), 3);
  EXPECT_EQ(CachedTokens(pool, prompt), 2 * kBlockSize);  // the 3rd block holds the last token
  std::vector<int32_t> longer = prompt;
  longer.push_back(5);
  EXPECT_EQ(CachedTokens(pool, longer), 3 * kBlockSize);
  EXPECT_EQ(CachedTokens(pool, std::vector<int32_t>(prompt.begin(), prompt.begin() + 1)), 0);
  PrefixMatch match;
  EXPECT_EQ(pool.Lookup(prompt.data(), 0, match), 0);
}

TEST(KvBlockPoolTest, EvictsTheLeastRecentlyFreedCachedBlockFirst) {
  KvBlockPool pool = MakePool(6);
  const std::vector<int32_t> first = Range(100, 2 * kBlockSize);
  const std::vector<int32_t> second = Range(200, 2 * kBlockSize);
  std::vector<int32_t> first_longer = first, second_longer = second;
  first_longer.push_back(1);
  second_longer.push_back(1);
  BlockTable a, b, c;
  Admit(pool, a, first);
  pool.Free(a);  // freed first: its blocks are evicted first, its last block before its first
  Admit(pool, b, second);
  pool.Free(b);
  EXPECT_EQ(pool.num_cached(), 4);
  EXPECT_EQ(pool.num_free(), 6);
  EXPECT_EQ(CachedTokens(pool, first_longer), 2 * kBlockSize);

  std::vector<int32_t> new_ids;
  ASSERT_TRUE(pool.Allocate(c, PrefixMatch{}, 3 * kBlockSize, new_ids));  // 2 never-cached blocks, then 1
  EXPECT_EQ(pool.num_cached(), 3);
  EXPECT_EQ(CachedTokens(pool, first_longer), kBlockSize);  // first's last block went
  EXPECT_EQ(CachedTokens(pool, second_longer), 2 * kBlockSize);
  std::vector<KvBlockCopy> copies;
  ASSERT_TRUE(pool.Grow(c, 4 * kBlockSize, new_ids, copies));
  EXPECT_EQ(CachedTokens(pool, first_longer), 0);
  EXPECT_EQ(CachedTokens(pool, second_longer), 2 * kBlockSize);
  ASSERT_TRUE(pool.Grow(c, 5 * kBlockSize, new_ids, copies));
  EXPECT_EQ(CachedTokens(pool, second_longer), kBlockSize);
  EXPECT_OK(pool.CheckInvariants());
}

TEST(KvBlockPoolTest, AHitOnAFreeCachedBlockTakesItOutOfTheFreeQueue) {
  KvBlockPool pool = MakePool(4);
  std::vector<int32_t> prompt = Range(100, 2 * kBlockSize);
  BlockTable a, b, c;
  Admit(pool, a, prompt);
  const std::vector<int32_t> cached_ids = a.block_ids;
  pool.Free(a);
  ASSERT_EQ(pool.num_free(), 4);
  prompt.push_back(1);
  EXPECT_EQ(Admit(pool, b, prompt), 2 * kBlockSize);  // 2 hits and 1 new block
  EXPECT_EQ(pool.num_free(), 1);
  for (int32_t id : cached_ids) EXPECT_EQ(pool.ref_count(id), 1);
  // Under pressure the allocator takes the one free block, never the hits.
  std::vector<int32_t> new_ids;
  ASSERT_TRUE(pool.Allocate(c, PrefixMatch{}, kBlockSize, new_ids));
  EXPECT_THAT(c.block_ids, ::testing::Each(::testing::Not(::testing::AnyOfArray(cached_ids))));
  EXPECT_FALSE(pool.CanAllocate(1));
  EXPECT_EQ(pool.num_cached(), 2);
  EXPECT_OK(pool.CheckInvariants());
}

TEST(KvBlockPoolTest, CountsPrefixCacheQueriesAndHitsInTokens) {
  KvBlockPool pool = MakePool(16);
  std::vector<int32_t> prompt = Range(100, 2 * kBlockSize + 3);
  BlockTable a, b;
  Admit(pool, a, prompt);
  Admit(pool, b, prompt);
  EXPECT_EQ(pool.prefix_cache_queries(), 2 * static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(pool.prefix_cache_hits(), 2 * kBlockSize);
  CachedTokens(pool, prompt);  // a lookup alone is not a query: the scheduler may look again before admitting
  EXPECT_EQ(pool.prefix_cache_queries(), 2 * static_cast<int64_t>(prompt.size()));
}

TEST(KvBlockPoolTest, ForkSharesEveryBlock) {
  KvBlockPool pool = MakePool(8);
  BlockTable parent, child;
  const std::vector<int32_t> prompt = Range(100, kBlockSize + 2);
  Admit(pool, parent, prompt);
  pool.Fork(parent, child);
  EXPECT_EQ(child.block_ids, parent.block_ids);
  EXPECT_EQ(child.num_tokens, parent.num_tokens);
  for (int32_t id : parent.block_ids) EXPECT_EQ(pool.ref_count(id), 2);
  EXPECT_EQ(pool.num_free(), 6);
  pool.Free(parent);
  for (int32_t id : child.block_ids) EXPECT_EQ(pool.ref_count(id), 1);
  pool.Free(child);
  EXPECT_EQ(pool.num_free(), 8);
  EXPECT_OK(pool.CheckInvariants());
}

TEST(KvBlockPoolTest, CopyOnWriteCopiesOnlyASharedPartialBlock) {
  KvBlockPool pool = MakePool(8);
  BlockTable parent, child;
  Admit(pool, parent, Range(100, kBlockSize + 2));  // a full block, then a partial one
  pool.Fork(parent, child);
  const int32_t full = parent.block_ids[0], partial = parent.block_ids[1];
  std::vector<int32_t> new_ids;
  std::vector<KvBlockCopy> copies;
  ASSERT_TRUE(pool.Grow(child, kBlockSize + 3, new_ids, copies));  // writes into the shared partial block
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, partial);
  const int32_t copy = copies[0].dst;
  EXPECT_THAT(child.block_ids, ElementsAre(full, copy));
  EXPECT_THAT(new_ids, IsEmpty());
  EXPECT_EQ(pool.ref_count(full), 2);
  EXPECT_EQ(pool.ref_count(partial), 1);
  EXPECT_EQ(pool.ref_count(copy), 1);
  copies.clear();
  ASSERT_TRUE(pool.Grow(parent, kBlockSize + 3, new_ids, copies));  // the partial block is its own again
  EXPECT_THAT(copies, IsEmpty());
  EXPECT_THAT(parent.block_ids, ElementsAre(full, partial));
  // Past the shared full block into new blocks: nothing to copy.
  ASSERT_TRUE(pool.Grow(parent, 2 * kBlockSize + 1, new_ids, copies));
  EXPECT_THAT(copies, IsEmpty());
  EXPECT_EQ(new_ids.size(), 1u);
  EXPECT_OK(pool.CheckInvariants());
}

TEST(KvBlockPoolTest, ForkAtABlockBoundaryNeverCopies) {
  KvBlockPool pool = MakePool(8);
  BlockTable parent, child;
  Admit(pool, parent, Range(100, 2 * kBlockSize));
  pool.Fork(parent, child);
  std::vector<int32_t> new_ids;
  std::vector<KvBlockCopy> copies;
  ASSERT_TRUE(pool.Grow(child, 2 * kBlockSize + 1, new_ids, copies));
  ASSERT_TRUE(pool.Grow(parent, 2 * kBlockSize + 1, new_ids, copies));
  EXPECT_THAT(copies, IsEmpty());
  EXPECT_EQ(new_ids.size(), 2u);
  EXPECT_EQ(pool.BlocksNeeded(child, 2 * kBlockSize + 2), 0);
}

TEST(KvBlockPoolTest, FailedGrowAndAllocateChangeNothing) {
  KvBlockPool pool = MakePool(3);
  BlockTable parent, child, other;
  Admit(pool, parent, Range(100, kBlockSize + 1));
  pool.Fork(parent, child);
  ASSERT_EQ(pool.num_free(), 1);
  const BlockTable before = child;
  std::vector<int32_t> new_ids;
  std::vector<KvBlockCopy> copies;
  // A copy of the shared partial block and a new block: 2 > 1 free.
  EXPECT_EQ(pool.BlocksNeeded(child, 2 * kBlockSize + 1), 2);
  EXPECT_FALSE(pool.Grow(child, 2 * kBlockSize + 1, new_ids, copies));
  EXPECT_EQ(child.block_ids, before.block_ids);
  EXPECT_EQ(child.num_tokens, before.num_tokens);
  EXPECT_EQ(child.full_keys.size(), before.full_keys.size());
  EXPECT_THAT(new_ids, IsEmpty());
  EXPECT_THAT(copies, IsEmpty());
  EXPECT_EQ(pool.num_free(), 1);
  for (int32_t id : parent.block_ids) EXPECT_EQ(pool.ref_count(id), 2);

  EXPECT_FALSE(pool.Allocate(other, PrefixMatch{}, kBlockSize + 1, new_ids));
  EXPECT_TRUE(other.block_ids.empty());
  EXPECT_THAT(new_ids, IsEmpty());
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_EQ(pool.prefix_cache_queries(), kBlockSize + 1);  // the failed admission counted nothing
  EXPECT_OK(pool.CheckInvariants());
}

// Every block hashes to the same value: at most one block is cached at a time and every other lookup
// finds a block whose stored tokens or parent differ.
uint64_t ConstantHash(uint64_t, const int32_t*, int32_t) { return 42; }

TEST(KvBlockPoolTest, CollidingHashesNeverServeAnotherBlock) {
  KvBlockPool pool = MakePool(16, PrefixCaching::kEnabled, &ConstantHash);
  BlockTable a, b, c;
  std::vector<int32_t> first = Range(100, 2 * kBlockSize + 1);
  Admit(pool, a, first);
  EXPECT_EQ(pool.num_cached(), 1);  // the second block took the hash from the first
  EXPECT_EQ(CachedTokens(pool, first), 0);
  EXPECT_EQ(CachedTokens(pool, Range(200, 2 * kBlockSize + 1)), 0);
  std::vector<int32_t> one_block = Range(300, kBlockSize + 1);
  Admit(pool, b, one_block);
  EXPECT_EQ(Admit(pool, c, one_block), kBlockSize);  // a verified hit
  EXPECT_EQ(c.block_ids[0], b.block_ids[0]);
  EXPECT_EQ(CachedTokens(pool, first), 0);
  EXPECT_OK(pool.CheckInvariants());
}

// A hash that forgets the parent: the same block after different prefixes collides.
uint64_t UnchainedHash(uint64_t, const int32_t* tokens, int32_t n) {
  return KvBlockPool::HashBlock(0, tokens, n);
}

TEST(KvBlockPoolTest, ABlockAfterADifferentPrefixIsAMissEvenWhenItsHashCollides) {
  KvBlockPool pool = MakePool(16, PrefixCaching::kEnabled, &UnchainedHash);
  std::vector<int32_t> first = Range(100, kBlockSize), second = Range(200, kBlockSize);
  const std::vector<int32_t> shared = Range(300, kBlockSize);
  first.insert(first.end(), shared.begin(), shared.end());
  second.insert(second.end(), shared.begin(), shared.end());
  first.push_back(1);
  second.push_back(1);
  BlockTable a, b;
  Admit(pool, a, first);
  EXPECT_EQ(Admit(pool, b, second), 0);  // second's "shared" block took the hash; the tokens match ...
  EXPECT_EQ(CachedTokens(pool, first), kBlockSize);  // ... but it follows another prefix: only block 0 hits
  EXPECT_EQ(CachedTokens(pool, second), 2 * kBlockSize);
  EXPECT_OK(pool.CheckInvariants());
}

TEST(KvBlockPoolTest, HashBlockChainsTheParent) {
  const std::vector<int32_t> tokens = Range(5, 16);
  const uint64_t h = KvBlockPool::HashBlock(0, tokens.data(), 16);
  EXPECT_EQ(h, KvBlockPool::HashBlock(0, tokens.data(), 16));
  EXPECT_NE(h, KvBlockPool::HashBlock(1, tokens.data(), 16));
  EXPECT_NE(h, KvBlockPool::HashBlock(0, tokens.data(), 15));
  std::vector<int32_t> swapped = tokens;
  std::swap(swapped[0], swapped[1]);
  EXPECT_NE(h, KvBlockPool::HashBlock(0, swapped.data(), 16));
}

TEST(KvBlockPoolTest, DisabledCachingNeverCachesOrHits) {
  KvBlockPool pool = MakePool(16, PrefixCaching::kDisabled);
  const std::vector<int32_t> prompt = Range(100, 3 * kBlockSize + 1);
  BlockTable a, b;
  EXPECT_EQ(Admit(pool, a, prompt), 0);
  EXPECT_EQ(Admit(pool, b, prompt), 0);
  EXPECT_EQ(pool.num_cached(), 0);
  EXPECT_THAT(a.full_keys, IsEmpty());
  EXPECT_EQ(pool.prefix_cache_queries(), 0);
  EXPECT_NE(a.block_ids[0], b.block_ids[0]);
  EXPECT_OK(pool.CheckInvariants());
}

// Random admissions (with cache hits), growth (with copy-on-write), forks, frees, preemptions and lookups
// against a shadow KV cache: each slot records the whole prefix whose last token's keys and values it holds.
// Every write must go to a block of refcount 1, and every cache hit must hold exactly the prefix looked up.
class RandomRun {
 public:
  RandomRun(PrefixCaching caching, KvBlockPoolConfig::HashFn hash_fn, uint32_t seed)
      : pool_(MakePool(kNumBlocks, caching, hash_fn, kBs)), kv_(kNumBlocks), rng_(seed) {
    for (auto& block : kv_) block.resize(kBs);
    for (auto& base : bases_) base = Tokens(4 * kBs);
  }

  void Run(int steps) {
    for (int step = 0; step < steps && !::testing::Test::HasFailure(); ++step) {
      const int op = Pick(10);  // admit 3 : decode 4 : fork 1 : free 1 : lookup 1
      if (op < 3) {
        Admit();
      } else if (op < 7) {
        Decode();
      } else if (op < 8) {
        Fork();
      } else if (op < 9) {
        Preempt();
      } else {
        LookupOnly();
      }
      Check(step);
    }
    while (!seqs_.empty()) {
      pool_.Free(seqs_.back().table);
      seqs_.pop_back();
    }
    EXPECT_EQ(pool_.num_free(), kNumBlocks);
    EXPECT_OK(pool_.CheckInvariants());
  }

  int64_t hits() const { return hits_; }

 private:
  static constexpr int32_t kNumBlocks = 40;
  static constexpr int32_t kBs = 3;
  static constexpr size_t kMaxSeqs = 8;

  struct Seq {
    std::vector<int32_t> tokens;
    BlockTable table;
  };

  int Pick(int n) { return static_cast<int>(rng_() % static_cast<uint32_t>(n)); }
  std::vector<int32_t> Tokens(int n) {
    std::vector<int32_t> v(n);
    for (int32_t& t : v) t = Pick(3);  // a tiny vocabulary: many equal blocks after different prefixes
    return v;
  }

  // Computes tokens [from, to) of `seq`: writes their slots.
  void Write(const Seq& seq, int64_t from, int64_t to) {
    for (int64_t pos = from; pos < to; ++pos) {
      const int32_t id = seq.table.block_ids[pos / kBs];
      ASSERT_EQ(pool_.ref_count(id), 1) << "write into shared block " << id;
      kv_[id][pos % kBs].assign(seq.tokens.begin(), seq.tokens.begin() + pos + 1);
    }
  }

  void ExpectHolds(const PrefixMatch& match, const std::vector<int32_t>& tokens) {
    ASSERT_LT(match.num_tokens, static_cast<int64_t>(tokens.size()));
    for (size_t i = 0; i < match.block_ids.size(); ++i) {
      for (int32_t slot = 0; slot < kBs; ++slot) {
        const size_t end = i * kBs + slot + 1;
        ASSERT_EQ(kv_[match.block_ids[i]][slot], std::vector<int32_t>(tokens.begin(), tokens.begin() + end))
            << "cached block " << match.block_ids[i] << " slot " << slot << " holds another prefix";
      }
    }
  }

  void Preempt() {
    if (seqs_.empty()) return;
    const int victim = Pick(static_cast<int>(seqs_.size()));
    pool_.Free(seqs_[victim].table);
    seqs_.erase(seqs_.begin() + victim);
  }

  std::vector<int32_t> RandomPrompt() {
    std::vector<int32_t> prompt = bases_[Pick(3)];
    prompt.resize(Pick(static_cast<int>(prompt.size())) + 1);
    const std::vector<int32_t> tail = Tokens(Pick(2 * kBs));
    prompt.insert(prompt.end(), tail.begin(), tail.end());
    return prompt;
  }

  void Admit() {
    if (seqs_.size() >= kMaxSeqs) return;
    Seq seq;
    seq.tokens = RandomPrompt();
    const int64_t n = static_cast<int64_t>(seq.tokens.size());
    PrefixMatch match;
    pool_.Lookup(seq.tokens.data(), n, match);
    ExpectHolds(match, seq.tokens);
    std::vector<int32_t> new_ids;
    if (!pool_.Allocate(seq.table, match, n, new_ids)) {
      Preempt();
      return;
    }
    hits_ += match.num_tokens;
    Write(seq, match.num_tokens, n);
    pool_.Commit(seq.table, seq.tokens.data(), n);
    seqs_.push_back(std::move(seq));
  }

  void Decode() {
    if (seqs_.empty()) return;
    Seq& seq = seqs_[Pick(static_cast<int>(seqs_.size()))];
    if (seq.tokens.size() > 12 * kBs) return;
    const int64_t from = static_cast<int64_t>(seq.tokens.size());
    const std::vector<int32_t> more = Tokens(1 + Pick(kBs + 1));
    std::vector<int32_t> new_ids;
    std::vector<KvBlockCopy> copies;
    const int32_t free_before = pool_.num_free();
    const int64_t needed = pool_.BlocksNeeded(seq.table, from + static_cast<int64_t>(more.size()));
    if (!pool_.Grow(seq.table, from + static_cast<int64_t>(more.size()), new_ids, copies)) {
      EXPECT_GT(needed, free_before);
      EXPECT_EQ(pool_.num_free(), free_before);
      Preempt();
      return;
    }
    EXPECT_EQ(pool_.num_free(), free_before - needed);
    for (const KvBlockCopy& c : copies) kv_[c.dst] = kv_[c.src];
    seq.tokens.insert(seq.tokens.end(), more.begin(), more.end());
    Write(seq, from, static_cast<int64_t>(seq.tokens.size()));
    pool_.Commit(seq.table, seq.tokens.data(), static_cast<int64_t>(seq.tokens.size()));
  }

  void Fork() {
    if (seqs_.empty() || seqs_.size() >= kMaxSeqs) return;
    Seq child;
    const Seq& parent = seqs_[Pick(static_cast<int>(seqs_.size()))];
    child.tokens = parent.tokens;
    pool_.Fork(parent.table, child.table);
    seqs_.push_back(std::move(child));
  }

  void LookupOnly() {
    const std::vector<int32_t> tokens = RandomPrompt();
    PrefixMatch match;
    pool_.Lookup(tokens.data(), static_cast<int64_t>(tokens.size()), match);
    ExpectHolds(match, tokens);
  }

  void Check(int step) {
    ASSERT_OK(pool_.CheckInvariants()) << "after step " << step;
    std::map<int32_t, int32_t> refs;
    for (const Seq& seq : seqs_) {
      ASSERT_EQ(static_cast<int32_t>(seq.table.block_ids.size()), pool_.BlocksFor(seq.table.num_tokens));
      for (int32_t id : seq.table.block_ids) ++refs[id];
    }
    for (int32_t id = 0; id < kNumBlocks; ++id) {
      ASSERT_EQ(pool_.ref_count(id), refs.count(id) ? refs[id] : 0)
          << "block " << id << " after step " << step;
    }
  }

  KvBlockPool pool_;
  std::vector<std::vector<std::vector<int32_t>>> kv_;  // [block][slot] the prefix it holds
  std::mt19937 rng_;
  std::vector<int32_t> bases_[3];
  std::vector<Seq> seqs_;
  int64_t hits_ = 0;
};

// Few distinct values: collisions between unrelated blocks are common.
uint64_t WeakHash(uint64_t parent, const int32_t* tokens, int32_t n) {
  return (parent * 31 + static_cast<uint64_t>(tokens[0]) + static_cast<uint64_t>(tokens[n - 1])) % 5;
}

TEST(KvBlockPoolTest, RandomOperationsKeepEveryInvariantAndServeOnlyMatchingBlocks) {
  std::random_device seed_source;
  const uint32_t seed = seed_source();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RandomRun run(PrefixCaching::kEnabled, nullptr, seed);
  run.Run(5000);
  EXPECT_GT(run.hits(), 0);
}

TEST(KvBlockPoolTest, RandomOperationsWithAWeakHashServeOnlyMatchingBlocks) {
  std::random_device seed_source;
  const uint32_t seed = seed_source();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RandomRun run(PrefixCaching::kEnabled, &WeakHash, seed);
  run.Run(5000);
}

// Distinct hashes whose low 12 bits are 0xff0 to 0xfff: the entries of the cache's index start probing at its
// last 16 slots and wrap around, so erasures shift entries back across the end.
uint64_t ClusteredHash(uint64_t parent, const int32_t* tokens, int32_t n) {
  const uint64_t h = KvBlockPool::HashBlock(parent, tokens, n);
  return h << 12 | 0xff0 | (h & 0xf);
}

TEST(KvBlockPoolTest, RandomOperationsWithClusteredHashesKeepTheIndexConsistent) {
  std::random_device seed_source;
  const uint32_t seed = seed_source();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RandomRun run(PrefixCaching::kEnabled, &ClusteredHash, seed);
  run.Run(5000);
  EXPECT_GT(run.hits(), 0);
}

TEST(KvBlockPoolTest, RandomOperationsWithCachingDisabled) {
  std::random_device seed_source;
  const uint32_t seed = seed_source();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RandomRun run(PrefixCaching::kDisabled, nullptr, seed);
  run.Run(3000);
  EXPECT_EQ(run.hits(), 0);
}

}  // namespace
}  // namespace tessera
