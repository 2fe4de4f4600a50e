// AVX2 + FMA GEMV kernel (compiled with -mavx2 -mfma): the AVX-512 kernel's scheme at eight lanes. BF16
// weights are widened to fp32 and multiplied with fp32 FMA; activations stay fp32. The k tail (k % 8) runs in
// scalar.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/gemv.h"

namespace tessera {
namespace {

inline __m256 WidenBf16(__m128i h) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float WidenScalar(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[m, r] = x[m, :] . w[r, :] for MR activation rows and NR consecutive weight rows (MR * NR <= 8 keeps the
// accumulators, weights and one activation vector within the 16 ymm registers).
template <int MR, int NR>
inline void Tile(const float* x, const uint16_t* w, int64_t k, float* y, int64_t ldy) {
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 wv[NR];
    for (int r = 0; r < NR; ++r) {
      wv[r] = WidenBf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * k + i)));
    }
    for (int m = 0; m < MR; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * k + i);
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < NR; ++r) {
      float s = 0;
      for (int64_t j = i; j < k; ++j) s += x[m * k + j] * WidenScalar(w[r * k + j]);
      y[m * ldy + r] = HorizontalSum(acc[m][r]) + s;
    }
  }
}

template <int NR>
inline void Rows(const GemvArgs& a, int64_t n) {
  const uint16_t* w = a.w + n * a.k;
  int64_t m = 0;
  for (; m + 2 <= a.m; m += 2) Tile<2, NR>(a.x + m * a.k, w, a.k, a.y + m * a.n + n, a.n);
  if (m < a.m) Tile<1, NR>(a.x + m * a.k, w, a.k, a.y + m * a.n + n, a.n);
}

}  // namespace

void GemvAvx2(const GemvArgs& a, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) Rows<4>(a, n);
  for (; n < n_end; ++n) Rows<1>(a, n);
}

}  // namespace tessera
