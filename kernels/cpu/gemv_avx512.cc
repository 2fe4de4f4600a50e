// AVX-512 GEMV kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq). BF16 weights are widened to
// fp32 (zero-extend, shift left 16) and multiplied with fp32 FMA, so activations keep full fp32 precision
// (unlike _mm512_dpbf16_ps, which rounds them to bf16). Four weight rows at a time share each activation
// load; activation rows go in register chunks of up to four, re-reading the four weight rows from L1/L2. The
// four rows are a quarter of the range apart, so that the weights stream as four long runs (ForEachRowStreams
// in gemv.h). GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized flags once
// inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/cpu/gemv.h"

namespace tessera {
namespace {

inline __m512 WidenBf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// How far ahead (weight elements) each weight stream prefetches.
constexpr int64_t kPrefetchAhead = kGemvPrefetchBytes / 2;

// y[m, r * ys] = x[m, :] . w[r * ws, :] for MR activation rows and NR weight rows ws elements apart. The
// weight rows are NR independent streams; with kPrefetch each one prefetches kPrefetchAhead elements ahead,
// past the end of its row into the next row of the same stream (prefetches never fault).
template <int MR, int NR, bool kPrefetch>
inline void Tile(const float* x, const uint16_t* w, int64_t ws, int64_t k, float* y, int64_t ys,
                 int64_t ldy) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 wv[NR];
    for (int r = 0; r < NR; ++r) {
      const uint16_t* p = w + r * ws + i;
      wv[r] = WidenBf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchAhead), _MM_HINT_T0);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * k + i);
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  if (i < k) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (k - i)) - 1);
    __m512 wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = WidenBf16(_mm256_maskz_loadu_epi16(mask, w + r * ws + i));
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * k + i);
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) y[m * ldy + r * ys] = _mm512_reduce_add_ps(acc[m][r]);
}

// Weight rows n + r * stride (r < NR) against every activation row. The first register chunk of activation
// rows streams the weights from memory (and prefetches); later chunks re-read them from L1/L2.
template <int NR>
inline void Rows(const GemvArgs& a, int64_t n, int64_t stride) {
  const uint16_t* w = a.w + n * a.k;
  const int64_t ws = stride * a.k;
  float* y = a.y + n;
  int64_t m = 0;
  if (a.m >= 4) {
    Tile<4, NR, true>(a.x, w, ws, a.k, y, stride, a.n);
    for (m = 4; m + 4 <= a.m; m += 4) Tile<4, NR, false>(a.x + m * a.k, w, ws, a.k, y + m * a.n, stride, a.n);
  }
  const float* x = a.x + m * a.k;
  y += m * a.n;
  const bool first = m == 0;
  switch (a.m - m) {
    case 3:
      first ? Tile<3, NR, true>(x, w, ws, a.k, y, stride, a.n)
            : Tile<3, NR, false>(x, w, ws, a.k, y, stride, a.n);
      break;
    case 2:
      first ? Tile<2, NR, true>(x, w, ws, a.k, y, stride, a.n)
            : Tile<2, NR, false>(x, w, ws, a.k, y, stride, a.n);
      break;
    case 1:
      first ? Tile<1, NR, true>(x, w, ws, a.k, y, stride, a.n)
            : Tile<1, NR, false>(x, w, ws, a.k, y, stride, a.n);
      break;
    default:
      break;
  }
}

// Round-to-nearest-even fp32 -> bf16 of 16 lanes (NaN -> quiet NaN), and the widened result.
inline __m256i RoundBf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

}  // namespace

void SplitBf16Avx512(const float* x, int64_t count, uint16_t* hi, uint16_t* lo) {
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 mask =
        count - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + i);
    const __m256i h = RoundBf16(v);
    _mm256_mask_storeu_epi16(hi + i, mask, h);
    if (lo != nullptr) _mm256_mask_storeu_epi16(lo + i, mask, RoundBf16(_mm512_sub_ps(v, WidenBf16(h))));
  }
}

void GemvAvx512(const GemvArgs& a, int64_t n_begin, int64_t n_end) {
  ForEachRowStreams(
      n_begin, n_end, [&](int64_t n, int64_t stride) { Rows<4>(a, n, stride); },
      [&](int64_t n) { Rows<1>(a, n, 0); });
}

}  // namespace tessera
