// Small helpers shared by the benchmark executables: fail with one line, time with a steady clock, summarise
// repeated timings and make reproducible prompts.
#pragma once

#include <errno.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/kv_cache.h"
#include "worker/model_runner.h"

namespace tessera::bench {

using Clock = std::chrono::steady_clock;

// Prints "PROGRAM: message" on stderr and exits 1 (benchmarks are executables; libraries never exit).
[[noreturn]] inline void Die(const absl::Status& s) {
  std::fprintf(stderr, "%s: %s\n", program_invocation_short_name, std::string(s.message()).c_str());
  std::exit(1);
}

inline void OrDie(const absl::Status& s) {
  if (!s.ok()) Die(s);
}

template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return std::move(v).value();
}

inline double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// n pseudo-random token ids below vocab - 1000 (clear of Llama 3's special tokens), the same for a seed.
inline std::vector<int32_t> RandomPrompt(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    ids[i] = static_cast<int32_t>((seed >> 8) % static_cast<uint32_t>(vocab - 1000));
  }
  return ids;
}

// Gives each sequence the KV blocks its tokens need (the coordinator's block manager does this in serving).
inline void Cover(BlockAllocator& blocks, const std::vector<Sequence*>& seqs) {
  for (Sequence* seq : seqs) {
    if (absl::Status s = blocks.Cover(static_cast<int64_t>(seq->tokens.size()), seq->block_table); !s.ok()) {
      Die(s);
    }
  }
}

inline void Release(BlockAllocator& blocks, Sequence& seq) {
  blocks.Free(seq.block_table);
  seq.block_table.clear();
}

}  // namespace tessera::bench
