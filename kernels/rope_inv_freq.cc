// RopeInvFreq (see rope_inv_freq.h).
#include "kernels/rope_inv_freq.h"

#include <cmath>
#include <numbers>

#include "core/check.h"

namespace tessera {

std::vector<float> RopeInvFreq(const RopeParams& rope, int head_dim) {
  TESSERA_CHECK(head_dim > 0 && head_dim % 2 == 0);
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    // HF: torch.arange(0, dim, 2).float() / dim in fp32, base ** that in fp32, 1.0 / that in fp32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power =
        static_cast<float>(std::pow(static_cast<double>(rope.theta), static_cast<double>(exponent)));
    inv[i] = 1.0f / power;
  }
  if (!rope.llama3_scaling) return inv;
  const float old_context = static_cast<float>(rope.original_max_position_embeddings);
  const float low_freq_wavelen = old_context / rope.low_freq_factor;
  const float high_freq_wavelen = old_context / rope.high_freq_factor;
  constexpr float kTwoPi = static_cast<float>(2.0 * std::numbers::pi);
  for (int i = 0; i < half; ++i) {
    const float wavelen = kTwoPi / inv[i];
    if (wavelen > low_freq_wavelen) {
      inv[i] = inv[i] / rope.factor;
    } else if (!(wavelen < high_freq_wavelen)) {
      const float smooth =
          (old_context / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
      inv[i] = (1.0f - smooth) * inv[i] / rope.factor + smooth * inv[i];
    }
  }
  return inv;
}

}  // namespace tessera
