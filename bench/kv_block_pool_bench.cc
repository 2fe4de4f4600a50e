// kv_block_pool_bench: the KV block pool's cost per operation at serving scale, no model needed: 100k blocks
// of 16 tokens with ~90k of them cached, then a 2048-token prompt's prefix lookup, its admission and commit,
// decode growth by one token, and the free of a 2048-token sequence. Prints the median of a few rounds.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "coordinator/kv_block_pool.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int32_t kNumBlocks = 100000;
constexpr int32_t kBlockSize = 16;
constexpr int32_t kPromptTokens = 2048;
constexpr int kNumPrompts = 700;   // 700 * 128 blocks: ~90% of the pool cached
constexpr int kNumDecoding = 256;  // sequences growing a token at a time
constexpr int kDecodeSteps = 512;
constexpr int kRounds = 5;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// `n` pseudo-random token ids below 120000, a different sequence for each seed.
std::vector<int32_t> RandomTokens(int n, uint64_t seed) {
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int32_t>((seed >> 33) % 120000);
  }
  return ids;
}

// One figure: microseconds per operation and, for operations over many blocks, nanoseconds per block.
void Print(const char* what, double seconds_per_op, int32_t blocks) {
  std::printf("  %-58s %9.3f us/op", what, seconds_per_op * 1e6);
  if (blocks > 1) std::printf("  (%.1f ns per block)", seconds_per_op * 1e9 / blocks);
  std::printf("\n");
}

void Die(const char* what) {
  std::fprintf(stderr, "kv_block_pool_bench: %s\n", what);
  std::exit(1);
}

int Main() {
  KvBlockPool pool(KvBlockPoolConfig{.num_blocks = kNumBlocks, .block_size = kBlockSize});
  const int32_t prompt_blocks = kPromptTokens / kBlockSize;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kNumPrompts; ++i) {
    prompts.push_back(RandomTokens(kPromptTokens + 1, i + 1));  // + 1: every full block may hit
  }
  std::vector<BlockTable> tables(kNumPrompts);
  std::vector<int32_t> new_ids;
  std::vector<KvBlockCopy> copies;
  PrefixMatch match;
  uint64_t checksum = 0;

  // Admit every prompt, commit it, free it: the pool ends with kNumPrompts * 128 cached free blocks.
  for (int i = 0; i < kNumPrompts; ++i) {
    pool.Lookup(prompts[i].data(), kPromptTokens + 1, match);
    if (!pool.Allocate(tables[i], match, kPromptTokens + 1, new_ids)) Die("the pool is too small");
    pool.Commit(tables[i], prompts[i].data(), kPromptTokens + 1);
  }
  for (BlockTable& t : tables) pool.Free(t);
  std::printf("kv_block_pool_bench: %d blocks of %d tokens, %d cached, prompts of %d tokens (%d blocks)\n",
              kNumBlocks, kBlockSize, pool.num_cached(), kPromptTokens, prompt_blocks);

  std::vector<double> lookup, admit, free_seq, commit, grow, grow_commit;
  for (int round = 0; round < kRounds; ++round) {
    // Lookup: every full block of the prompt hits.
    Clock::time_point t0 = Clock::now();
    for (const std::vector<int32_t>& p : prompts) checksum += pool.Lookup(p.data(), kPromptTokens + 1, match);
    lookup.push_back(Seconds(t0, Clock::now()) / kNumPrompts);

    // Admission with the cached prefix: Lookup and Allocate (128 hits taken out of the free queue + 1 block).
    t0 = Clock::now();
    for (int i = 0; i < kNumPrompts; ++i) {
      pool.Lookup(prompts[i].data(), kPromptTokens + 1, match);
      new_ids.clear();
      if (!pool.Allocate(tables[i], match, kPromptTokens + 1, new_ids)) Die("admission failed");
    }
    admit.push_back(Seconds(t0, Clock::now()) / kNumPrompts);

    // Free of a 2048-token (129-block) sequence.
    t0 = Clock::now();
    for (BlockTable& t : tables) pool.Free(t);
    free_seq.push_back(Seconds(t0, Clock::now()) / kNumPrompts);

    // Commit of a fresh 2048-token prompt: 128 hashes and cache insertions, each evicting an old entry.
    std::vector<std::vector<int32_t>> fresh;
    for (int i = 0; i < 64; ++i) fresh.push_back(RandomTokens(kPromptTokens, 1000003ull * (round + 1) + i));
    std::vector<BlockTable> fresh_tables(fresh.size());
    for (BlockTable& t : fresh_tables) {
      if (!pool.Allocate(t, PrefixMatch{}, kPromptTokens, new_ids)) Die("allocation failed");
    }
    t0 = Clock::now();
    for (size_t i = 0; i < fresh.size(); ++i) pool.Commit(fresh_tables[i], fresh[i].data(), kPromptTokens);
    commit.push_back(Seconds(t0, Clock::now()) / fresh.size());
    for (BlockTable& t : fresh_tables) pool.Free(t);

    // Decode: kNumDecoding sequences (cached prompts) grow a token at a time, a new block every 16 tokens;
    // then the same with Commit after each token (a block's hash every 16 tokens).
    for (int with_commit = 0; with_commit < 2; ++with_commit) {
      std::vector<BlockTable> decoding(kNumDecoding);
      std::vector<std::vector<int32_t>> tokens(kNumDecoding);
      for (int i = 0; i < kNumDecoding; ++i) {
        tokens[i] = prompts[i];
        tokens[i].resize(kPromptTokens + 1 + kDecodeSteps, 7);
        pool.Lookup(tokens[i].data(), kPromptTokens + 1, match);
        if (!pool.Allocate(decoding[i], match, kPromptTokens + 1, new_ids)) Die("admission failed");
      }
      t0 = Clock::now();
      for (int step = 1; step <= kDecodeSteps; ++step) {
        for (int i = 0; i < kNumDecoding; ++i) {
          new_ids.clear();
          if (!pool.Grow(decoding[i], kPromptTokens + 1 + step, new_ids, copies)) Die("grow failed");
          if (with_commit) pool.Commit(decoding[i], tokens[i].data(), kPromptTokens + 1 + step);
        }
      }
      (with_commit ? grow_commit : grow).push_back(Seconds(t0, Clock::now()) / (kNumDecoding * kDecodeSteps));
      for (BlockTable& t : decoding) pool.Free(t);
    }
  }
  if (pool.num_free() != kNumBlocks) Die("blocks leaked");

  Print("lookup, 2049-token prompt, 128 blocks hit", Median(lookup), prompt_blocks);
  Print("admit (lookup + allocate), 128 hits + 1 new block", Median(admit), prompt_blocks + 1);
  Print("free, 2049-token sequence (129 blocks)", Median(free_seq), prompt_blocks + 1);
  Print("commit, 2048 fresh tokens (128 blocks hashed and cached)", Median(commit), prompt_blocks);
  Print("grow by one token (a new block every 16 tokens)", Median(grow), 1);
  Print("grow by one token + commit", Median(grow_commit), 1);
  std::printf("  (checksum %llu, prefix cache: %lld queried tokens, %lld hits)\n",
              static_cast<unsigned long long>(checksum), static_cast<long long>(pool.prefix_cache_queries()),
              static_cast<long long>(pool.prefix_cache_hits()));
  return 0;
}

}  // namespace
}  // namespace tessera

int main() { return tessera::Main(); }
