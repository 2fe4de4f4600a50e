// WriteKvCache + PagedAttention against a double reference: several sequences of different lengths mixing
// prefill (many new tokens, some already cached) and decode (one new token), shuffled non-contiguous block
// tables, unused cache slots poisoned with NaN, GQA ratios 1, 3, 4 and 12, head_dim 32 / 64 / 128.
// Tolerance: 2e-5 absolute on unit-normal q, k, v (fp32 scores and online softmax; outputs are convex
// combinations of v rows, so their scale is ~1).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "tests/kernels/kernel_test_util.h"

namespace tessera {
namespace {

using ::tessera::testing::FreshSeed;
using ::tessera::testing::MakeBackend;
using ::tessera::testing::Poisoned;
using ::tessera::testing::RandomFloats;
using ::tessera::testing::View;

struct SeqSpec {
  int context;  // seq_len after this step
  int new_tokens;
};

void RunCase(uint32_t seed, const std::vector<SeqSpec>& seqs, int num_kv_heads, int ratio, int hd) {
  SCOPED_TRACE("seed " + std::to_string(seed) + " nkv " + std::to_string(num_kv_heads) + " ratio " +
               std::to_string(ratio) + " head_dim " + std::to_string(hd));
  std::mt19937 rng(seed);
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const int nh = num_kv_heads * ratio;
  const int bs = 16;
  const int ns = static_cast<int>(seqs.size());
  int max_blocks = 0, total_blocks = 0, tokens = 0;
  for (const SeqSpec& s : seqs) {
    max_blocks = std::max(max_blocks, (s.context + bs - 1) / bs);
    total_blocks += (s.context + bs - 1) / bs;
    tokens += s.new_tokens;
  }
  const int num_blocks = total_blocks + 5;
  std::vector<int32_t> physical(num_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);

  const int64_t row = static_cast<int64_t>(num_kv_heads) * hd;
  std::vector<float> k_cache = Poisoned(num_blocks * bs * row), v_cache = Poisoned(num_blocks * bs * row);
  std::vector<int32_t> query_start(ns + 1, 0), seq_lens(ns), block_tables(ns * max_blocks, -1);
  std::vector<int32_t> slot_mapping, positions;
  std::vector<std::vector<float>> seq_k(ns), seq_v(ns);  // logical [context, nkv, hd]
  std::vector<float> new_k, new_v;
  int next_block = 0;
  for (int s = 0; s < ns; ++s) {
    const SeqSpec& spec = seqs[s];
    seq_lens[s] = spec.context;
    query_start[s + 1] = query_start[s] + spec.new_tokens;
    for (int b = 0; b < (spec.context + bs - 1) / bs; ++b)
      block_tables[s * max_blocks + b] = physical[next_block++];
    seq_k[s] = RandomFloats(rng, spec.context * row);
    seq_v[s] = RandomFloats(rng, spec.context * row);
    const int cached = spec.context - spec.new_tokens;
    for (int p = 0; p < spec.context; ++p) {
      const int64_t slot = static_cast<int64_t>(block_tables[s * max_blocks + p / bs]) * bs + p % bs;
      if (p < cached) {  // already in the cache from earlier steps
        std::copy_n(seq_k[s].begin() + p * row, row, k_cache.begin() + slot * row);
        std::copy_n(seq_v[s].begin() + p * row, row, v_cache.begin() + slot * row);
      } else {  // this step's token: written by WriteKvCache
        slot_mapping.push_back(static_cast<int32_t>(slot));
        positions.push_back(p);
        new_k.insert(new_k.end(), seq_k[s].begin() + p * row, seq_k[s].begin() + (p + 1) * row);
        new_v.insert(new_v.end(), seq_v[s].begin() + p * row, seq_v[s].begin() + (p + 1) * row);
      }
    }
  }
  AttentionMeta meta;
  meta.query_start = query_start.data();
  meta.seq_lens = seq_lens.data();
  meta.block_tables = block_tables.data();
  meta.slot_mapping = slot_mapping.data();
  meta.positions = positions.data();
  meta.num_seqs = ns;
  meta.num_tokens = tokens;
  meta.max_blocks_per_seq = max_blocks;
  meta.block_size = bs;
  for (const SeqSpec& s : seqs) {
    meta.max_query_len = std::max(meta.max_query_len, s.new_tokens);
    meta.max_seq_len = std::max(meta.max_seq_len, s.context);
  }

  Tensor kc = View(k_cache, {num_blocks, bs, num_kv_heads, hd});
  Tensor vc = View(v_cache, {num_blocks, bs, num_kv_heads, hd});
  Tensor kt = View(new_k, {tokens, row});
  Tensor vt = View(new_v, {tokens, row});
  backend->WriteKvCache(meta, kt, vt, kc, vc);

  std::vector<float> q = RandomFloats(rng, static_cast<int64_t>(tokens) * nh * hd);
  std::vector<float> out = Poisoned(q.size());
  Tensor qt = View(q, {tokens, nh * hd});
  Tensor ot = View(out, {tokens, nh * hd});
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  backend->PagedAttention(meta, qt, kc, vc, nh, num_kv_heads, hd, scale, ot);

  int t = 0;
  for (int s = 0; s < ns; ++s) {
    for (int j = 0; j < seqs[s].new_tokens; ++j, ++t) {
      const int p = positions[t];
      for (int h = 0; h < nh; ++h) {
        const int kvh = h / ratio;
        const float* qh = q.data() + (static_cast<int64_t>(t) * nh + h) * hd;
        std::vector<double> score(p + 1);
        double mx = -1e300;
        for (int c = 0; c <= p; ++c) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += static_cast<double>(qh[i]) * seq_k[s][c * row + kvh * hd + i];
          score[c] = d * scale;
          mx = std::max(mx, score[c]);
        }
        double denom = 0;
        for (double& x : score) denom += (x = std::exp(x - mx));
        for (int i = 0; i < hd; ++i) {
          double want = 0;
          for (int c = 0; c <= p; ++c) want += score[c] * seq_v[s][c * row + kvh * hd + i];
          want /= denom;
          const float got = out[(static_cast<int64_t>(t) * nh + h) * hd + i];
          ASSERT_NEAR(got, want, 2e-5)
              << "seq " << s << " token " << t << " (pos " << p << ") head " << h << " i " << i;
        }
      }
    }
  }
}

// Prefill from scratch, decode, chunked prefill over a cached prefix, a one-token sequence, a long decode.
const std::vector<SeqSpec> kMixedBatch = {{37, 37}, {100, 1}, {53, 20}, {1, 1}, {300, 1}, {16, 16}, {33, 2}};

TEST(PagedAttentionTest, MatchesReferenceWithoutGrouping) { RunCase(FreshSeed(), kMixedBatch, 3, 1, 64); }
TEST(PagedAttentionTest, MatchesReferenceWithGroupOfThree) { RunCase(FreshSeed(), kMixedBatch, 2, 3, 32); }
TEST(PagedAttentionTest, MatchesReferenceWithGroupOfFour) { RunCase(FreshSeed(), kMixedBatch, 2, 4, 128); }
TEST(PagedAttentionTest, MatchesReferenceWithGroupLargerThanAChunk) {
  RunCase(FreshSeed(), kMixedBatch, 1, 12, 64);
}
TEST(PagedAttentionTest, HandlesOddHeadDim) { RunCase(FreshSeed(), {{21, 5}, {40, 1}}, 2, 2, 36); }
TEST(PagedAttentionTest, DecodesALongContext) { RunCase(FreshSeed(), {{2049, 1}, {700, 1}}, 2, 4, 64); }

}  // namespace
}  // namespace tessera
