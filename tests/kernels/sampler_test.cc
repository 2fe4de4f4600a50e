// Sampling: greedy ties, determinism in (seed, step), independence from other rows, top-k / top-p support,
// and the empirical distribution against softmax (chi-square with a generous bound: the 99.99th percentile
// of chi-square with 5 degrees of freedom is ~25.7; we allow 30).
#include "kernels/sampler.h"

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
  backend->Sample(lt, rows.data(), ids.data());
  // Row 1 alone, and with different neighbours: same token.
  std::vector<float> alone(logits.begin() + vocab, logits.begin() + 2 * vocab);
  std::vector<int32_t> id1(1, -1);
  Tensor at = View(alone, {1, vocab});
  backend->Sample(at, rows.data() + 1, id1.data());
  EXPECT_EQ(id1[0], ids[1]);
  std::vector<float> other = RandomFloats(rng, 3 * vocab);
  std::copy(alone.begin(), alone.end(), other.begin() + vocab);
  std::vector<SamplingRow> other_rows = {{2.0f, 0, 1.0f, 77, 1}, rows[1], {0.3f, 3, 1.0f, 8, 8}};
  std::vector<int32_t> ids2(3, -1);
  Tensor ot = View(other, {3, vocab});
  backend->Sample(ot, other_rows.data(), ids2.data());
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
  ASSERT_GT(nucleus.size(), 256u) << "the case should exercise the growing sort";
  SampleScratch scratch;
  for (uint64_t step = 0; step < 20; ++step) {
    const int32_t id = SampleRow(logits.data(), vocab, {1.0f, 0, 0.9f, 42, step}, scratch);
    EXPECT_TRUE(nucleus.count(id)) << "token " << id << " outside the 0.9 nucleus";
  }
}

}  // namespace
}  // namespace tessera
