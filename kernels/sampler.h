// Token sampling for one row of logits (vLLM V1's sampler: penalties, logit bias, banned ids, temperature,
// min-p, top-k, top-p, a seeded draw, raw logprobs), defined exactly below so that every backend and the
// numpy reference (tests/reference/sampling_reference.py) choose the same token for the same uniform.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace tessera {

// Rows with a temperature below this are greedy (vLLM's _SAMPLING_EPS).
inline constexpr float kGreedyBelowTemperature = 1e-5f;

// Per-thread working memory of SampleRow; grows to the vocabulary size once.
struct SampleScratch {
  std::vector<float> logits;       // [V] the processed logits, when the row changes them
  std::vector<float> weights;      // [V + 16] w_i (below), or the fused pass's bracketed weights
  std::vector<int32_t> mid_ids;    // [V + 16] the ids of the fused pass's bracketed weights
  std::vector<float> values_a;     // [V + 16] candidate values of a threshold search
  std::vector<float> values_b;     // [V + 16]
  std::vector<double> chunk_sums;  // [V / 256 + 1] kept weight per chunk, for the draw
  std::vector<int32_t> ids;        // penalty bookkeeping
};

// The uniform in [0, 1) used for (seed, step): splitmix64 mixing of both, 53 random bits.
double SampleUniform(uint64_t seed, uint64_t step);

// Exp32(x): the float32 exponential every sampler uses, defined by its operations so that it can be
// reproduced bit for bit (every operation is one IEEE float32 operation, round to nearest even, never fused):
//   x < -80 (or NaN): 0.
//   n = rint(x * 1.44269504088896341f);  r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
//   y = 1.9875691500e-4f;  y = y * r + c  for c in (1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
//   1.6666665459e-1f, 5.0000001201e-1f);  y = y * (r * r) + r;  y = y + 1;  result = y * 2^n.
// Exp32(0) = 1 exactly.
float Exp32(float x);
// out[i] = Exp32(x[i]) for i < n, vectorised where the CPU allows (the same values: the samplers' fast path).
void Exp32Row(const float* x, int64_t n, float* out);

// SampleRow: chooses a token from logits[0, vocab), in these steps (vLLM V1's order):
//  1. Processed logits l, float32 (each line one float32 operation; ids outside [0, vocab) ignored):
//     banned ids: l = -inf. logit_bias: l += bias. Repetition penalty p (p > 0, p != 1), once for each
//     distinct id among tokens[0, num_tokens): l = l > 0 ? l / p : l * p. Then for each distinct id
//     generated (tokens[num_prompt_tokens, num_tokens)) c times: l = l - frequency_penalty * (float)c; then
//     l = l - presence_penalty.
//  2. temperature < 1e-5 (vLLM's epsilon; 0 and NaN too): the first index of the maximum of l (greedy).
//  3. Weights: m = max l, inv_t = 1.0f / temperature (float32), x_i = (l_i - m) * inv_t (float32), and
//     w_i = Exp32(x_i); the most likely token has w = 1. Every filter keeps an upper set {i : w_i >= θ} (so
//     all tokens tied at the threshold weight are kept); W(S) = the sum of w over S, in double.
//     min-p (min_p > 0): θ1 = min(min_p, 1) (keep w_i >= min_p: p_i >= min_p * p_max). S1 = {w >= θ1}.
//     top-k (0 < top_k < |S1|): θ2 = the top_k-th largest w in S1 (counting equal values). S2 = {w >= θ2}.
//     top-p (top_p < 1): θ3 = the largest w value v in S2 with W({i in S2 : w_i >= v}) >= top_p * W(S2)
//     (the smallest upper set holding top_p of S2's mass; top_p <= 0 keeps the maximum and its ties).
//     Kept set K = the last of S1, S2, {w >= θ3} that applies (all tokens when none).
//  4. The draw, in TOKEN ID ORDER (no sort): X = SampleUniform(seed, step) * W(K); the answer is the first
//     id i in K, in increasing id order, whose running sum of w (double) exceeds X.
// Sums are in double in an unspecified order: a different backend or the reference may disagree only when X
// or top_p * W(S2) falls within ~1e-13 relative of a running-sum boundary. When the largest processed logit
// is +inf, or every one is -inf or NaN, the answer is the greedy one (0 when every logit is NaN).
//
// Malformed inputs the caller should have refused are ignored, never trusted: ids outside [0, vocab) in
// tokens, logit_bias and banned_ids are skipped; top_logprobs > kMaxTopLogprobs is clamped. vocab must be
// > 0 and (for logprobs) < 2^31 (CHECKed).
//
// With logprobs (non-null) and row.top_logprobs >= 0, fills *logprobs for the chosen token (as
// ComputeTokenLogprobs). Thread-compatible: one scratch per thread.
int32_t SampleRow(const float* logits, int64_t vocab, const SamplingRow& row, SampleScratch& scratch,
                  SampleLogprobs* logprobs = nullptr);

// The raw logprobs of `token` (in [0, vocab): CHECKed) given logits[0, vocab): log_softmax in double,
// logprob_i = l_i - m - log(sum_j Exp32(l_j - m)) with m = max l (the sum in double; within ~1e-6 of the
// exact value), the token's rank, and the min(top_n, kMaxTopLogprobs) most likely ids (see SampleLogprobs).
// For sampled tokens and, later, prompt logprobs.
void ComputeTokenLogprobs(const float* logits, int64_t vocab, int32_t token, int top_n,
                          SampleScratch& scratch, SampleLogprobs& out);

}  // namespace tessera
