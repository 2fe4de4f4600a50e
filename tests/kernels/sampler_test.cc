// Sampling: greedy ties, determinism in (seed, step), independence from other rows (for every parameter
// combination), top-k / top-p / min-p support and ties, penalties, logit bias, banned ids, logprobs, and the
// empirical distribution against softmax (chi-square with a generous bound: the 99.99th percentile of
// chi-square with 5 degrees of freedom is ~25.7; we allow 30). The exact definition is checked against the
// numpy reference by tests/reference/sampling_reference_test.py.
#include "kernels/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <string>

#include "tests/kernels/kernel_test_util.h"

namespace tessera {
namespace {

using ::tessera::testing::FreshSeed;
using ::tessera::testing::MakeBackend;
using ::tessera::testing::RandomFloats;
using ::tessera::testing::View;

TEST(SamplerTest, GreedyTakesFirstMaximum) {
  std::vector<float> logits = {0.5f, -1.0f, 3.0f, 2.0f, 3.0f, 3.0f};
  SampleScratch scratch;
  for (float t : {0.0f, -1.0f}) {
    SamplingRow row;
    row.temperature = t;
    row.seed = 7;
    EXPECT_EQ(SampleRow(logits.data(), 6, row, scratch), 2);
  }
}

TEST(SamplerTest, IsDeterministicForSeedAndStep) {
  std::mt19937 rng(FreshSeed());
  std::vector<float> logits = RandomFloats(rng, 1000, 2.0f);
  SampleScratch scratch;
  std::set<int32_t> seen;
  for (uint64_t step = 0; step < 50; ++step) {
    SamplingRow row{1.0f, 0, 1.0f, 1234, step};
    const int32_t a = SampleRow(logits.data(), 1000, row, scratch);
    EXPECT_EQ(a, SampleRow(logits.data(), 1000, row, scratch));
    seen.insert(a);
  }
  EXPECT_GT(seen.size(), 5u) << "steps should draw different uniforms";
  EXPECT_NE(SampleUniform(1, 2), SampleUniform(2, 1));
}

TEST(SamplerTest, RowsAreIndependentOfTheRestOfTheBatch) {
  std::mt19937 rng(FreshSeed());
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const int64_t vocab = 5003;
  std::vector<float> logits = RandomFloats(rng, 3 * vocab, 2.0f);
  std::vector<SamplingRow> rows = {{0.8f, 50, 0.9f, 1, 10}, {1.0f, 0, 0.95f, 99, 3}, {0.0f, 0, 1.0f, 5, 5}};
  std::vector<int32_t> ids(3, -1);
  Tensor lt = View(logits, {3, vocab});
  EXPECT_OK(backend->Sample(lt, rows.data(), ids.data()));
  // Row 1 alone, and with different neighbours: same token.
  std::vector<float> alone(logits.begin() + vocab, logits.begin() + 2 * vocab);
  std::vector<int32_t> id1(1, -1);
  Tensor at = View(alone, {1, vocab});
  EXPECT_OK(backend->Sample(at, rows.data() + 1, id1.data()));
  EXPECT_EQ(id1[0], ids[1]);
  std::vector<float> other = RandomFloats(rng, 3 * vocab);
  std::copy(alone.begin(), alone.end(), other.begin() + vocab);
  std::vector<SamplingRow> other_rows = {{2.0f, 0, 1.0f, 77, 1}, rows[1], {0.3f, 3, 1.0f, 8, 8}};
  std::vector<int32_t> ids2(3, -1);
  Tensor ot = View(other, {3, vocab});
  EXPECT_OK(backend->Sample(ot, other_rows.data(), ids2.data()));
  EXPECT_EQ(ids2[1], ids[1]);
}

TEST(SamplerTest, TopKOfOneIsArgmax) {
  std::mt19937 rng(FreshSeed());
  SampleScratch scratch;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits = RandomFloats(rng, 777);
    SamplingRow greedy;
    SamplingRow top1{1.5f, 1, 1.0f, rng(), static_cast<uint64_t>(trial)};
    EXPECT_EQ(SampleRow(logits.data(), 777, top1, scratch), SampleRow(logits.data(), 777, greedy, scratch));
  }
}

// Draws n samples of row (varying step) and returns the counts per token.
std::vector<int> Histogram(const std::vector<float>& logits, SamplingRow row, int n) {
  SampleScratch scratch;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i) {
    row.step = static_cast<uint64_t>(i);
    ++counts[SampleRow(logits.data(), static_cast<int64_t>(logits.size()), row, scratch)];
  }
  return counts;
}

TEST(SamplerTest, EmpiricalDistributionMatchesSoftmax) {
  std::mt19937 rng(FreshSeed());
  const std::vector<float> logits = RandomFloats(rng, 6);
  const float temperature = 0.7f;
  const int n = 20000;
  const std::vector<int> counts = Histogram(logits, {temperature, 0, 1.0f, rng(), 0}, n);
  double z = 0;
  for (float l : logits) z += std::exp(l / temperature);
  double chi2 = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double expected = n * std::exp(logits[i] / temperature) / z;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  EXPECT_LT(chi2, 30.0);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // p = [0.05, 0.5, 0.15, 0.3]: top_p 0.75 keeps {1, 3} (0.5 + 0.3 = 0.8 >= 0.75), renormalised to 5/8, 3/8.
  const std::vector<float> logits = {std::log(0.05f), std::log(0.5f), std::log(0.15f), std::log(0.3f)};
  const int n = 8000;
  const std::vector<int> counts = Histogram(logits, {1.0f, 0, 0.75f, FreshSeed(), 0}, n);
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[1] / static_cast<double>(n), 0.625, 0.03);
  // top_k 3 first (renormalised 0.526, 0.158, 0.316), then top_p 0.6 keeps {1, 3}.
  const std::vector<int> counts2 = Histogram(logits, {1.0f, 3, 0.6f, FreshSeed(), 0}, n);
  EXPECT_EQ(counts2[0] + counts2[2], 0);
  // top_p 0 keeps one token: the argmax.
  const std::vector<int> counts3 = Histogram(logits, {1.0f, 0, 0.0f, FreshSeed(), 0}, 100);
  EXPECT_EQ(counts3[1], 100);
}

TEST(SamplerTest, TopPOnALargeVocabularyStaysInTheNucleus) {
  std::mt19937 rng(FreshSeed());
  const int64_t vocab = 128256;
  std::vector<float> logits = RandomFloats(rng, vocab, 3.0f);
  // Reference nucleus by a full sort in double.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l) - logits[order[0]]);
  std::set<int32_t> nucleus;
  double cum = 0;
  for (int32_t id : order) {
    nucleus.insert(id);
    cum += std::exp(static_cast<double>(logits[id]) - logits[order[0]]) / z;
    if (cum >= 0.9) break;
  }
  ASSERT_GT(nucleus.size(), 256u) << "the case should exercise the threshold search";
  SampleScratch scratch;
  for (uint64_t step = 0; step < 20; ++step) {
    const int32_t id = SampleRow(logits.data(), vocab, {1.0f, 0, 0.9f, 42, step}, scratch);
    EXPECT_TRUE(nucleus.count(id)) << "token " << id << " outside the 0.9 nucleus";
  }
}

// A row with every optional input set (penalties over `history`, bias, banned ids, logprobs) as `mask` says.
SamplingRow Combination(int mask, const std::vector<int32_t>& history, const std::vector<LogitBias>& bias,
                        const std::vector<int32_t>& banned, uint64_t seed) {
  SamplingRow row;
  row.seed = seed;
  row.step = seed % 1000;
  row.temperature = (mask & 1) ? 0.7f : 0.0f;
  row.top_k = (mask & 2) ? 40 : 0;
  row.top_p = (mask & 4) ? 0.9f : 1.0f;
  row.min_p = (mask & 8) ? 0.05f : 0.0f;
  if (mask & 16) {
    row.repetition_penalty = 1.3f;
    row.presence_penalty = 0.4f;
    row.frequency_penalty = 0.2f;
    row.tokens = history.data();
    row.num_tokens = static_cast<int64_t>(history.size());
    row.num_prompt_tokens = row.num_tokens / 2;
  }
  if (mask & 32) {
    row.logit_bias = bias.data();
    row.num_logit_bias = static_cast<int64_t>(bias.size());
    row.banned_ids = banned.data();
    row.num_banned_ids = static_cast<int64_t>(banned.size());
  }
  row.top_logprobs = (mask & 64) ? 5 : -1;
  return row;
}

TEST(SamplerTest, RowSampledAloneMatchesItInABatchOf64ForEveryParameterCombination) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const int64_t vocab = 5003, batch = 64;
  std::vector<int32_t> history(300);
  for (int32_t& t : history) t = static_cast<int32_t>(rng() % vocab);
  const std::vector<LogitBias> bias = {{3, 4.0f}, {100, -2.0f}, {4000, 1.0f}};
  const std::vector<int32_t> banned = {7, 8, 9};
  for (int mask = 0; mask < 128; ++mask) {
    std::vector<float> logits = RandomFloats(rng, batch * vocab, 2.0f);
    std::vector<SamplingRow> rows(batch);
    for (int64_t r = 0; r < batch; ++r)
      rows[r] = Combination(static_cast<int>(rng() % 128), history, bias, banned, rng());
    const int64_t at = rng() % batch;
    rows[at] = Combination(mask, history, bias, banned, rng());
    std::vector<int32_t> ids(batch, -1);
    std::vector<SampleLogprobs> lps(batch);
    EXPECT_OK(backend->Sample(View(logits, {batch, vocab}), rows.data(), ids.data(), lps.data()));
    std::vector<float> alone(logits.begin() + at * vocab, logits.begin() + (at + 1) * vocab);
    int32_t id = -1;
    SampleLogprobs lp;
    EXPECT_OK(backend->Sample(View(alone, {1, vocab}), &rows[at], &id, &lp));
    EXPECT_EQ(id, ids[at]) << "mask " << mask << " seed " << seed;
    if (rows[at].top_logprobs >= 0) {
      EXPECT_EQ(lp.token, id);
      EXPECT_EQ(lp.logprob, lps[at].logprob);
      EXPECT_EQ(lp.rank, lps[at].rank);
      ASSERT_EQ(lp.num_top, 5);
      for (int j = 0; j < 5; ++j) EXPECT_EQ(lp.top_ids[j], lps[at].top_ids[j]);
    }
  }
}

// A row with one filter takes the fused pass; adding min_p 1e-37 (below every nonzero weight, Exp32(-80)
// ~ 1.8e-35) sends it down the general path: the tokens must agree, on flat and on peaked rows.
TEST(SamplerTest, FusedAndGeneralPathsAgree) {
  const uint32_t seed = FreshSeed();
  std::mt19937 rng(seed);
  SampleScratch scratch;
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t vocab = trial % 3 == 0 ? 128256 : 5000 + trial * 37;
    std::vector<float> logits = RandomFloats(rng, vocab, trial % 2 ? 1.0f : 3.0f);
    if (trial % 4 == 1) {
      for (int j = 0; j < 5; ++j) logits[rng() % vocab] += 12.0f;  // peaked
    }
    SamplingRow row{0.6f, 0, 1.0f, rng(), static_cast<uint64_t>(trial)};
    switch (trial % 3) {
      case 0:
        row.top_p = 0.9f;
        break;
      case 1:
        row.top_k = 1 + static_cast<int>(rng() % 200);
        break;
      default:
        row.top_p = 0.3f + 0.7f * static_cast<float>(rng() % 1000) / 1000.0f;
        break;
    }
    SamplingRow general = row;
    general.min_p = 1e-37f;
    EXPECT_EQ(SampleRow(logits.data(), vocab, row, scratch),
              SampleRow(logits.data(), vocab, general, scratch))
        << "trial " << trial << " seed " << seed;
  }
}

TEST(SamplerTest, BannedIdsAreNeverDrawn) {
  std::mt19937 rng(FreshSeed());
  std::vector<float> logits = RandomFloats(rng, 300);
  const std::vector<int32_t> banned = {5, 6};
  logits[5] = 50.0f;  // the argmax, by far
  logits[6] = 49.0f;
  SampleScratch scratch;
  for (float t : {0.0f, 1.0f, 3.0f}) {
    for (uint64_t step = 0; step < 200; ++step) {
      SamplingRow row{t, 0, 1.0f, 11, step};
      row.banned_ids = banned.data();
      row.num_banned_ids = 2;
      const int32_t id = SampleRow(logits.data(), 300, row, scratch);
      EXPECT_TRUE(id != 5 && id != 6) << "temperature " << t << " drew banned " << id;
    }
  }
}

TEST(SamplerTest, PenaltiesAndBiasFollowVllmDefinitions) {
  SampleScratch scratch;
  // Repetition penalty 2 over prompt token 0 (logit 3 -> 1.5) and generated token 2 (logit -1 -> -2).
  {
    const std::vector<float> logits = {3.0f, 2.0f, -1.0f};
    const std::vector<int32_t> tokens = {0, 2, 2};
    SamplingRow row;
    row.repetition_penalty = 2.0f;
    row.tokens = tokens.data();
    row.num_tokens = 3;
    row.num_prompt_tokens = 1;
    EXPECT_EQ(SampleRow(logits.data(), 3, row, scratch), 1);  // 1.5 < 2
  }
  // Frequency 1.0 x 2 occurrences + presence 0.5 over generated tokens only: 3 - 2.5 = 0.5 < 1.
  {
    const std::vector<float> logits = {3.0f, 1.0f};
    const std::vector<int32_t> tokens = {1, 0, 0};  // prompt {1}, generated {0, 0}
    SamplingRow row;
    row.frequency_penalty = 1.0f;
    row.presence_penalty = 0.5f;
    row.tokens = tokens.data();
    row.num_tokens = 3;
    row.num_prompt_tokens = 1;
    EXPECT_EQ(SampleRow(logits.data(), 2, row, scratch), 1);
    row.frequency_penalty = 0.5f;  // 3 - 1.5 = 1.5 > 1
    EXPECT_EQ(SampleRow(logits.data(), 2, row, scratch), 0);
  }
  // Logit bias moves the argmax; ids out of range are ignored.
  {
    const std::vector<float> logits = {3.0f, 1.0f, 2.0f};
    const std::vector<LogitBias> bias = {{2, 1.5f}, {-1, 100.0f}, {3, 100.0f}};
    SamplingRow row;
    row.logit_bias = bias.data();
    row.num_logit_bias = 3;
    EXPECT_EQ(SampleRow(logits.data(), 3, row, scratch), 2);
  }
}

TEST(SamplerTest, MinPKeepsOnlyTokensWithinTheRatioOfTheMostLikely) {
  // p ∝ [1, 0.5, 0.09, 0.3]: min_p 0.1 drops token 2 (0.09 < 0.1 * 1).
  const std::vector<float> logits = {0.0f, std::log(0.5f), std::log(0.09f), std::log(0.3f)};
  SamplingRow row{1.0f, 0, 1.0f, FreshSeed(), 0};
  row.min_p = 0.1f;
  SampleScratch scratch;
  std::vector<int> counts(4, 0);
  for (uint64_t step = 0; step < 4000; ++step) {
    row.step = step;
    ++counts[SampleRow(logits.data(), 4, row, scratch)];
  }
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 4000.0, 1.0 / 1.8, 0.03);
}

TEST(SamplerTest, TopKKeepsEveryTokenTiedAtTheThreshold) {
  // Logits [1, 2, 2, 2, 0]: top_k 2 keeps all three 2s (ties at the k-th weight are kept).
  const std::vector<float> logits = {1.0f, 2.0f, 2.0f, 2.0f, 0.0f};
  SampleScratch scratch;
  std::set<int32_t> seen;
  for (uint64_t step = 0; step < 300; ++step)
    seen.insert(SampleRow(logits.data(), 5, {1.0f, 2, 1.0f, 3, step}, scratch));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 2, 3}));
}

// log_softmax in double, as the reference for the logprobs.
std::vector<double> LogSoftmax(const std::vector<float>& logits) {
  const double m = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float l : logits) z += std::exp(l - m);
  std::vector<double> out;
  for (float l : logits) out.push_back(l - m - std::log(z));
  return out;
}

TEST(SamplerTest, LogprobsComeFromTheRawLogits) {
  std::mt19937 rng(FreshSeed());
  const int64_t vocab = 32011;
  std::vector<float> logits = RandomFloats(rng, vocab, 3.0f);
  logits[100] = logits[200] = 30.0f;  // a tie at the top: the lower id first
  const std::vector<double> want = LogSoftmax(logits);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const std::vector<LogitBias> bias = {{5, 50.0f}};  // changes the draw, not the logprobs
  SampleScratch scratch;
  for (int top : {0, 1, 7, 20, 25}) {
    SamplingRow row{0.8f, 0, 0.95f, rng(), 3};
    row.logit_bias = bias.data();
    row.num_logit_bias = 1;
    row.top_logprobs = top;
    SampleLogprobs lp;
    const int32_t id = SampleRow(logits.data(), vocab, row, scratch, &lp);
    EXPECT_EQ(id, 5);
    EXPECT_EQ(lp.token, 5);
    EXPECT_NEAR(lp.logprob, want[5], 1e-5);
    EXPECT_EQ(lp.rank, std::count_if(logits.begin(), logits.end(), [&](float l) { return l >= logits[5]; }));
    ASSERT_EQ(lp.num_top, std::min(top, kMaxTopLogprobs)) << "top_logprobs > 20 is clamped";
    for (int j = 0; j < lp.num_top; ++j) {
      EXPECT_EQ(lp.top_ids[j], order[j]);
      EXPECT_NEAR(lp.top_logprobs[j], want[order[j]], 1e-5);
    }
  }
  // The host function, for a given token (prompt logprobs).
  SampleLogprobs lp;
  ComputeTokenLogprobs(logits.data(), vocab, 200, 2, scratch, lp);
  EXPECT_EQ(lp.rank, 2);  // 100 and 200 tie at the top: both count
  EXPECT_NEAR(lp.logprob, want[200], 1e-5);
  EXPECT_EQ(lp.top_ids[0], 100);
  EXPECT_EQ(lp.top_ids[1], 200);
}

TEST(SamplerTest, BackendWritesLogprobsOnlyForRowsThatAsk) {
  std::mt19937 rng(FreshSeed());
  auto backend = MakeBackend();
  ASSERT_NE(backend, nullptr);
  const int64_t vocab = 1001;
  std::vector<float> logits = RandomFloats(rng, 3 * vocab);
  std::vector<SamplingRow> rows(3);
  rows[1].top_logprobs = 3;
  std::vector<SampleLogprobs> lps(3);
  lps[0].token = lps[2].token = -7;  // poison
  std::vector<int32_t> ids(3, -1);
  EXPECT_OK(backend->Sample(View(logits, {3, vocab}), rows.data(), ids.data(), lps.data()));
  EXPECT_EQ(lps[0].token, -7);
  EXPECT_EQ(lps[2].token, -7);
  EXPECT_EQ(lps[1].token, ids[1]);
  EXPECT_EQ(lps[1].rank, 1);  // greedy: the most likely
  EXPECT_EQ(lps[1].num_top, 3);
}

}  // namespace
}  // namespace tessera
