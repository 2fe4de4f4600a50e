// Rotary position embedding helpers.
#include "kernels/cpu/rope.h"

#include <cmath>

#include "core/check.h"

namespace tessera {

void RopeToken(const float* inv_freq, int head_dim, int32_t position, int num_heads, float* x,
               float* cos_sin) {
  const int half = head_dim / 2;
  float* cos_v = cos_sin;
  float* sin_v = cos_sin + half;
  const float pos = static_cast<float>(position);
  for (int i = 0; i < half; ++i) {
    const float angle = pos * inv_freq[i];  // fp32, as HF's inv_freq @ position_ids
    cos_v[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
    sin_v[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
  }
  for (int h = 0; h < num_heads; ++h) {
    float* a = x + static_cast<int64_t>(h) * head_dim;
    float* b = a + half;
    for (int i = 0; i < half; ++i) {
      const float x0 = a[i];
      const float x1 = b[i];
      a[i] = x0 * cos_v[i] - x1 * sin_v[i];
      b[i] = x1 * cos_v[i] + x0 * sin_v[i];
    }
  }
}

}  // namespace tessera
