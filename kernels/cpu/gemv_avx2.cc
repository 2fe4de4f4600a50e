// AVX2 + FMA GEMV kernel (compiled with -mavx2 -mfma): the AVX-512 kernel's scheme (four weight rows a
// quarter of the range apart, each a prefetched stream) at eight lanes. BF16 weights are widened to fp32 and
// multiplied with fp32 FMA; activations stay fp32. The k tail (k % 8) runs in scalar.
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

// How far ahead (weight elements) each weight stream prefetches.
constexpr int64_t kPrefetchAhead = kGemvPrefetchBytes / 2;

// y[m, r * ys] = x[m, :] . w[r * ws, :] for MR activation rows and NR weight rows ws elements apart (MR * NR
// <= 8 keeps the accumulators, weights and one activation vector within the 16 ymm registers). The NR rows
// are streams; with kPrefetch each prefetches kPrefetchAhead elements ahead (into the stream's next row past
// its end; prefetches never fault).
template <int MR, int NR, bool kPrefetch>
inline void Tile(const float* x, const uint16_t* w, int64_t ws, int64_t k, float* y, int64_t ys,
                 int64_t ldy) {
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 wv[NR];
    for (int r = 0; r < NR; ++r) {
      const uint16_t* p = w + r * ws + i;
      wv[r] = WidenBf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      // Once per 64-byte line (the loads are 16 bytes).
      if (kPrefetch && i % 32 == 0)
        _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchAhead), _MM_HINT_T0);
    }
    for (int m = 0; m < MR; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * k + i);
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < NR; ++r) {
      float s = 0;
      for (int64_t j = i; j < k; ++j) s += x[m * k + j] * WidenScalar(w[r * ws + j]);
      y[m * ldy + r * ys] = HorizontalSum(acc[m][r]) + s;
    }
  }
}

// Weight rows n + r * stride against every activation row; the first register chunk streams them from memory.
template <int NR>
inline void Rows(const GemvArgs& a, int64_t n, int64_t stride) {
  const uint16_t* w = a.w + n * a.k;
  const int64_t ws = stride * a.k;
  float* y = a.y + n;
  if (a.m == 1) return Tile<1, NR, true>(a.x, w, ws, a.k, y, stride, a.n);
  Tile<2, NR, true>(a.x, w, ws, a.k, y, stride, a.n);
  int64_t m = 2;
  for (; m + 2 <= a.m; m += 2) Tile<2, NR, false>(a.x + m * a.k, w, ws, a.k, y + m * a.n, stride, a.n);
  if (m < a.m) Tile<1, NR, false>(a.x + m * a.k, w, ws, a.k, y + m * a.n, stride, a.n);
}

}  // namespace

void GemvAvx2(const GemvArgs& a, int64_t n_begin, int64_t n_end) {
  ForEachRowStreams(
      n_begin, n_end, [&](int64_t n, int64_t stride) { Rows<4>(a, n, stride); },
      [&](int64_t n) { Rows<1>(a, n, 0); });
}

}  // namespace tessera
