// Rotary position embedding helpers: the inverse-frequency table exactly as Hugging Face computes it (with
// rope_type "llama3" scaling when RopeParams says so) and the rotate_half rotation of one token's heads.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace tessera {

// inv_freq[i] for i in [0, head_dim / 2): theta^(-2i / head_dim) in fp32 (HF: 1 / base ** (arange(0, d, 2) /
// d)), then llama3 scaling: wavelen = 2π / inv_freq; wavelen > original_max / low_freq_factor -> inv_freq /
// factor; wavelen < original_max / high_freq_factor -> unchanged; otherwise smooth = (original_max / wavelen
// - low_freq_factor) / (high_freq_factor - low_freq_factor), inv_freq = (1 - smooth) * inv_freq / factor +
// smooth * inv_freq. head_dim must be even (CHECKed).
std::vector<float> RopeInvFreq(const RopeParams& rope, int head_dim);

// Rotates num_heads heads of head_dim at x (one token) by `position`: for each head, pairs (i, i +
// head_dim/2) with angle = position * inv_freq[i] in fp32: x_i' = x_i cos - x_j sin, x_j' = x_j cos + x_i
// sin. cos_sin: scratch of head_dim floats.
void RopeToken(const float* inv_freq, int head_dim, int32_t position, int num_heads, float* x,
               float* cos_sin);

}  // namespace tessera
