// AVX2 + FMA + F16C quantized GEMV kernel (compiled with -mavx2 -mfma -mf16c): the AVX-512 kernel's scheme
// at eight lanes. A 32-weight block is four 8-lane fp32 vectors, multiplied with fp32 FMA against x into a
// per-block dot vector, then one FMA by the broadcast block scale (Q4_1: and one by the broadcast min against
// sum(x over the block)). Four weight rows (a quarter of the range apart: four long streams) share each
// activation load. With 16 ymm registers there is room
// for one activation row at a time only, so m > 1 unpacks each (L1-resident) block once per activation row.
#include <immintrin.h>

#include <cstring>

#include "core/check.h"
#include "kernels/cpu/gemv_quant.h"

namespace tessera {
namespace {

inline __m256 BroadcastHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 32 quants of a block as four fp32 vectors (weights 0..7, 8..15, 16..23, 24..31; Q4_0 minus 8).
template <QuantType T>
inline void Unpack(const uint8_t* b, __m256 q[4]) {
  if constexpr (T == QuantType::kQ8_0) {
    for (int c = 0; c < 4; ++c) {
      q[c] = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * c))));
    }
  } else {
    constexpr int kQs = T == QuantType::kQ4_0 ? 2 : 4;
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQs));
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(v, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    if constexpr (T == QuantType::kQ4_0) {
      lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
      hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
      q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
      q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
      q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
      q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
    } else {
      q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
      q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
      q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
      q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    }
  }
}

// y[r * ys] = x . dequant(w[r * ws bytes, :]) for one activation row and NR weight rows ws bytes apart (NR
// streams; with `prefetch` each prefetches kGemvPrefetchBytes ahead, past its row's end into the stream's
// next row; prefetches never fault).
template <QuantType T, int NR>
inline void Tile(const float* x, const uint8_t* w, int64_t ws, int64_t k, bool prefetch, float* y,
                 int64_t ys) {
  constexpr int64_t kBlockBytes = T == QuantType::kQ8_0 ? 34 : T == QuantType::kQ4_0 ? 18 : 20;
  __m256 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t blocks = k / kQuantBlockSize;
  for (int64_t b = 0; b < blocks; ++b) {
    __m256 xv[4];
    for (int c = 0; c < 4; ++c) xv[c] = _mm256_loadu_ps(x + b * kQuantBlockSize + 8 * c);
    __m256 xsum;
    if constexpr (T == QuantType::kQ4_1)
      xsum = _mm256_add_ps(_mm256_add_ps(xv[0], xv[1]), _mm256_add_ps(xv[2], xv[3]));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* p = w + r * ws + b * kBlockBytes;
      if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(p + kGemvPrefetchBytes), _MM_HINT_T0);
      __m256 q[4];
      Unpack<T>(p, q);
      __m256 dot = _mm256_mul_ps(xv[0], q[0]);
      for (int c = 1; c < 4; ++c) dot = _mm256_fmadd_ps(xv[c], q[c], dot);
      acc[r] = _mm256_fmadd_ps(dot, BroadcastHalf(p), acc[r]);
      if constexpr (T == QuantType::kQ4_1) acc[r] = _mm256_fmadd_ps(xsum, BroadcastHalf(p + 2), acc[r]);
    }
  }
  for (int r = 0; r < NR; ++r) y[r * ys] = HorizontalSum(acc[r]);
}

// Weight rows n + r * stride against every activation row (the first streams them from memory).
template <QuantType T, int NR>
inline void Rows(const GemvQuantArgs& a, int64_t row_bytes, int64_t n, int64_t stride) {
  const uint8_t* w = a.w + n * row_bytes;
  for (int64_t m = 0; m < a.m; ++m)
    Tile<T, NR>(a.x + m * a.k, w, stride * row_bytes, a.k, m == 0, a.y + m * a.n + n, stride);
}

template <QuantType T>
void Run(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  const int64_t row_bytes = QuantRowBytes(T, a.k);
  ForEachRowStreams(
      n_begin, n_end, [&](int64_t n, int64_t stride) { Rows<T, 4>(a, row_bytes, n, stride); },
      [&](int64_t n) { Rows<T, 1>(a, row_bytes, n, 0); });
}

}  // namespace

void GemvQuantAvx2(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  TESSERA_CHECK(a.k % kQuantBlockSize == 0);
  DispatchQuantType(a.type, [&]<QuantType T>() { Run<T>(a, n_begin, n_end); });
}

}  // namespace tessera
