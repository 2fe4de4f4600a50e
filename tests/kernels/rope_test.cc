// RoPE: the inverse-frequency table (plain and llama3-scaled) against known values and a double
// re-derivation, and the rotate_half rotation against a double reference. Tolerances: inv_freq 1e-6 relative
// (fp32 table); rotated values 8e-6 absolute on unit-normal inputs (a few fp32 roundings of
// values below ~5), with angles formed in fp32 as
// HF does (position * inv_freq in fp32).
#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "tests/kernels/kernel_test_util.h"

namespace tessera {
namespace {

using ::tessera::testing::FreshSeed;
using ::tessera::testing::MakeBackend;
using ::tessera::testing::RandomFloats;
using ::tessera::testing::View;

RopeParams Llama3Params() {  // Llama 3.1 / 3.2 config values
  RopeParams p;
  p.theta = 500000.0f;
  p.llama3_scaling = true;
  p.factor = 32.0f;
  p.low_freq_factor = 1.0f;
  p.high_freq_factor = 4.0f;
  p.original_max_position_embeddings = 8192;
  return p;
}

TEST(RopeInvFreqTest, MatchesKnownValues) {
  RopeParams plain;
  plain.theta = 10000.0f;
  const std::vector<float> a = RopeInvFreq(plain, 64);
  ASSERT_EQ(a.size(), 32u);
  EXPECT_FLOAT_EQ(a[0], 1.0f);
  EXPECT_NEAR(a[1], 0.7498942017555237, 1e-6 * 0.75);
  EXPECT_NEAR(a[31], 0.0001333521504420787, 1e-6 * 1.3e-4);

  // Llama 3.2 1B (head_dim 64, theta 500000, factor 32): [14] is high-frequency (kept), [15] is in the
  // smoothed band, [31] is low-frequency (divided by 32). Values from HF's formula evaluated in fp32.
  const std::vector<float> b = RopeInvFreq(Llama3Params(), 64);
  EXPECT_FLOAT_EQ(b[0], 1.0f);
  EXPECT_NEAR(b[14], 0.0032114461064338684, 1e-6 * 3.2e-3);
  EXPECT_NEAR(b[15], 0.0012905480107292533, 1e-6 * 1.3e-3);
  EXPECT_NEAR(b[31], 9.418306490260875e-08, 1e-6 * 9.4e-8);
}

TEST(RopeInvFreqTest, Llama3ScalingMatchesDoubleDerivation) {
  for (int head_dim : {32, 64, 128}) {
    const RopeParams p = Llama3Params();
    const std::vector<float> got = RopeInvFreq(p, head_dim);
    for (int i = 0; i < head_dim / 2; ++i) {
      const double base = 1.0 / std::pow(500000.0, 2.0 * i / head_dim);
      const double wavelen = 2 * std::numbers::pi / base;
      double want = base;
      if (wavelen > 8192.0 / 1.0) {
        want = base / 32.0;
      } else if (wavelen >= 8192.0 / 4.0) {
        const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
        want = (1 - smooth) * base / 32.0 + smooth * base;
      }
      EXPECT_NEAR(got[i], want, 2e-6 * want) << "head_dim " << head_dim << " i " << i;
    }
  }
}

// Double reference of HF apply_rotary_pos_emb (rotate_half) on x [T, heads * head_dim].
void RopeRef(const std::vector<float>& inv, const std::vector<int32_t>& pos, int heads, int hd,
             std::vector<double>& x) {
  const int half = hd / 2;
  for (size_t t = 0; t < pos.size(); ++t) {
    for (int h = 0; h < heads; ++h) {
      double* a = x.data() + (t * heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        const double angle = static_cast<float>(pos[t]) * inv[i];  // fp32 product, as HF
        const double x0 = a[i], x1 = a[i + half];
        a[i] = x0 * std::cos(angle) - x1 * std::sin(angle);
        a[i + half] = x1 * std::cos(angle) + x0 * std::sin(angle);
      }
    }
  }
}

TEST(RopeTest, RotatesQueriesAndKeysLikeReference) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  for (bool scaled : {false, true}) {
    for (int hd : {32, 64, 128}) {
      RopeParams p = scaled ? Llama3Params() : RopeParams{};
      const int tokens = 37, nq = 6, nk = 2;
      std::vector<int32_t> pos(tokens);
      for (int32_t& v : pos) v = static_cast<int32_t>(rng() % 131072);
      pos[0] = 0;
      pos[1] = 1;
      std::vector<float> q = RandomFloats(rng, tokens * nq * hd);
      std::vector<float> k = RandomFloats(rng, tokens * nk * hd);
      std::vector<double> q_ref(q.begin(), q.end()), k_ref(k.begin(), k.end());
      const std::vector<float> inv = RopeInvFreq(p, hd);
      RopeRef(inv, pos, nq, hd, q_ref);
      RopeRef(inv, pos, nk, hd, k_ref);
      AttentionMeta meta;
      meta.num_tokens = tokens;
      meta.positions = pos.data();
      Tensor qt = View(q, {tokens, nq * hd});
      Tensor kt = View(k, {tokens, nk * hd});
      backend->Rope(meta, p, hd, qt, kt);
      for (size_t i = 0; i < q.size(); ++i) {
        ASSERT_NEAR(q[i], q_ref[i], 8e-6)
            << "seed " << seed << " scaled " << scaled << " hd " << hd << " q " << i;
      }
      for (size_t i = 0; i < k.size(); ++i) {
        ASSERT_NEAR(k[i], k_ref[i], 8e-6)
            << "seed " << seed << " scaled " << scaled << " hd " << hd << " k " << i;
      }
      // Position 0 is the identity.
      EXPECT_FLOAT_EQ(q[0], static_cast<float>(q_ref[0]));
    }
  }
}

// The fused QKV form: RopeQkvToCache over [q | k | v] rows must equal copying the parts out, Rope, then
// WriteKvCache, bit for bit (the same arithmetic); padding tokens (slot -1) write no cache row.
TEST(RopeTest, RopeQkvToCacheEqualsRopeThenWriteKvCache) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const int tokens = 9, nq = 4, nkv = 2, hd = 64, block_size = 16, blocks = 3;
  const int q_width = nq * hd, kv_width = nkv * hd, width = q_width + 2 * kv_width;
  std::vector<float> qkv = RandomFloats(rng, tokens * width);
  std::vector<int32_t> pos(tokens), slots(tokens);
  for (int t = 0; t < tokens; ++t) {
    pos[t] = static_cast<int32_t>(rng() % 8192);
    slots[t] = t == 3 ? -1 : (t * 5 + 1) % (blocks * block_size);  // token 3 is padding
  }
  AttentionMeta meta;
  meta.num_tokens = tokens;
  meta.positions = pos.data();
  meta.slot_mapping = slots.data();
  meta.block_size = block_size;
  const RopeParams rope = Llama3Params();
  const size_t cache_elems = static_cast<size_t>(blocks) * block_size * kv_width;

  std::vector<float> q(tokens * q_width), k_cache(cache_elems, 7.0f), v_cache(cache_elems, 7.0f);
  Tensor qkv_t = View(qkv, {tokens, width}), q_t = View(q, {tokens, q_width});
  Tensor kc = View(k_cache, {blocks, block_size, nkv, hd}), vc = View(v_cache, {blocks, block_size, nkv, hd});
  backend->RopeQkvToCache(meta, rope, hd, qkv_t, q_t, kc, vc);

  std::vector<float> q2(tokens * q_width), k2(tokens * kv_width), v2(tokens * kv_width);
  for (int t = 0; t < tokens; ++t) {
    std::copy_n(&qkv[t * width], q_width, &q2[t * q_width]);
    std::copy_n(&qkv[t * width + q_width], kv_width, &k2[t * kv_width]);
    std::copy_n(&qkv[t * width + q_width + kv_width], kv_width, &v2[t * kv_width]);
  }
  std::vector<float> k_cache2(cache_elems, 7.0f), v_cache2(cache_elems, 7.0f);
  Tensor q2t = View(q2, {tokens, q_width}), k2t = View(k2, {tokens, kv_width}), v2t = View(v2, {tokens, kv_width});
  Tensor kc2 = View(k_cache2, {blocks, block_size, nkv, hd}), vc2 = View(v_cache2, {blocks, block_size, nkv, hd});
  backend->Rope(meta, rope, hd, q2t, k2t);
  backend->WriteKvCache(meta, k2t, v2t, kc2, vc2);

  EXPECT_EQ(q, q2) << "seed " << seed;
  EXPECT_EQ(k_cache, k_cache2) << "seed " << seed;
  EXPECT_EQ(v_cache, v_cache2) << "seed " << seed;
  EXPECT_EQ(k_cache[0], 7.0f);  // slot 0 was never written (no token maps to it)
}

}  // namespace
}  // namespace tessera
