// Token sampling (see sampler.h).
#include "kernels/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace tessera {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int32_t Argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;  // strict: the first index wins ties
  }
  return static_cast<int32_t>(best);
}

}  // namespace

double SampleUniform(uint64_t seed, uint64_t step) {
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ SplitMix64(step ^ 0x5851f42d4c957f2dull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

int32_t SampleRow(const float* logits, int64_t vocab, const SamplingRow& row, SampleScratch& scratch) {
  TESSERA_CHECK(vocab > 0);
  if (row.temperature <= 0.0f) return Argmax(logits, vocab);
  if (static_cast<int64_t>(scratch.probs.size()) < vocab) {
    scratch.probs.resize(vocab);
    scratch.indices.resize(vocab);
  }
  double* p = scratch.probs.data();
  int32_t* idx = scratch.indices.data();
  const double inv_t = 1.0 / static_cast<double>(row.temperature);
  const double max_logit = logits[Argmax(logits, vocab)];
  for (int64_t i = 0; i < vocab; ++i) p[i] = std::exp((static_cast<double>(logits[i]) - max_logit) * inv_t);
  const double u = SampleUniform(row.seed, row.step);

  const bool use_top_k = row.top_k > 0 && row.top_k < vocab;
  const bool use_top_p = row.top_p < 1.0f;
  if (!use_top_k && !use_top_p) {  // plain softmax: walk the vocabulary in id order
    double total = 0;
    for (int64_t i = 0; i < vocab; ++i) total += p[i];
    const double target = u * total;
    double cum = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      cum += p[i];
      if (cum > target) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(vocab - 1);
  }

  // Most likely first; equal probabilities to the lower id, so the order (and the draw) is deterministic.
  auto more_likely = [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
  for (int64_t i = 0; i < vocab; ++i) idx[i] = static_cast<int32_t>(i);
  int64_t candidates = vocab;
  if (use_top_k) {
    std::nth_element(idx, idx + row.top_k - 1, idx + vocab, more_likely);
    candidates = row.top_k;
  }
  double total = 0;
  for (int64_t i = 0; i < candidates; ++i) total += p[idx[i]];

  int64_t kept = candidates;
  double kept_total = total;
  if (use_top_p) {
    // Sort a growing prefix until it holds top_p of the mass (nucleus sets are usually small).
    const double needed = static_cast<double>(row.top_p) * total;
    int64_t sorted = std::min<int64_t>(candidates, 256);
    while (true) {
      std::partial_sort(idx, idx + sorted, idx + candidates, more_likely);
      double cum = 0;
      int64_t i = 0;
      for (; i < sorted; ++i) {
        cum += p[idx[i]];
        if (cum >= needed) break;
      }
      if (i < sorted || sorted == candidates) {
        kept = std::min(i + 1, candidates);
        kept_total = cum;
        break;
      }
      sorted = std::min(candidates, sorted * 4);
    }
  } else {
    std::sort(idx, idx + candidates, more_likely);
  }
  const double target = u * kept_total;
  double cum = 0;
  for (int64_t i = 0; i < kept; ++i) {
    cum += p[idx[i]];
    if (cum > target) return idx[i];
  }
  return idx[kept - 1];
}

}  // namespace tessera
