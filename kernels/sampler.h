// Token sampling for one row of logits: greedy argmax, or temperature softmax with top-k then top-p (nucleus)
// filtering and an inverse-CDF draw whose uniform depends only on (seed, step).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace tessera {

// Per-thread working memory of SampleRow; grows to the vocabulary size once.
struct SampleScratch {
  std::vector<double> probs;     // [V] unnormalised probabilities
  std::vector<int32_t> indices;  // [V] candidate token ids
};

// The uniform in [0, 1) used for (seed, step): splitmix64 mixing of both, 53 random bits.
double SampleUniform(uint64_t seed, uint64_t step);

// Chooses a token from logits[0, vocab). temperature <= 0: the first index of the maximum. Otherwise p_i ∝
// exp(logit_i / temperature) in fp64; top_k > 0 keeps the k most likely (ties to the lower id); top_p < 1
// then keeps the smallest most-likely-first prefix whose probability (renormalised over the top-k set) is
// >= top_p, at least one token; the draw walks the kept set with SampleUniform(seed, step).
int32_t SampleRow(const float* logits, int64_t vocab, const SamplingRow& row, SampleScratch& scratch);

}  // namespace tessera
