// Rotary position embedding on the CPU: the rotate_half rotation of one token's heads (the inverse-frequency
// table is kernels/rope_inv_freq.h's RopeInvFreq).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/rope_inv_freq.h"

namespace tessera {

// Rotates num_heads heads of head_dim at x (one token) by `position`: for each head, pairs (i, i +
// head_dim/2) with angle = position * inv_freq[i] in fp32: x_i' = x_i cos - x_j sin, x_j' = x_j cos + x_i
// sin. cos_sin: scratch of head_dim floats.
void RopeToken(const float* inv_freq, int head_dim, int32_t position, int num_heads, float* x,
               float* cos_sin);

}  // namespace tessera
