// The rotary embedding's inverse-frequency table exactly as Hugging Face computes it, shared by every backend
// (the CPU backend rotates with it on the host; the CUDA backend uploads it once per (RopeParams, head_dim)).
#pragma once

#include <vector>

#include "kernels/backend.h"

namespace tessera {

// inv_freq[i] for i in [0, head_dim / 2): theta^(-2i / head_dim) in fp32 (HF: 1 / base ** (arange(0, d, 2) /
// d)), then llama3 scaling: wavelen = 2π / inv_freq; wavelen > original_max / low_freq_factor -> inv_freq /
// factor; wavelen < original_max / high_freq_factor -> unchanged; otherwise smooth = (original_max / wavelen
// - low_freq_factor) / (high_freq_factor - low_freq_factor), inv_freq = (1 - smooth) * inv_freq / factor +
// smooth * inv_freq. head_dim must be even (CHECKed).
std::vector<float> RopeInvFreq(const RopeParams& rope, int head_dim);

}  // namespace tessera
