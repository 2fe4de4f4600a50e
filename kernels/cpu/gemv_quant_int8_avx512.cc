// AVX-512 VNNI int8-activation GEMV kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq
// -mavx512vnni), on 256-bit vectors: one 32-weight block is one ymm of 32 bytes, and vpdpbusd (unsigned x
// signed bytes, four products per int32 lane) gives its exact integer dot with the activation quants in eight
// lanes. vpdpbusd wants unsigned weights, so Q8_0 quants get +128 (xor 0x80) and Q4_0 nibbles stay 0..15;
// each lane starts from minus the offset times its four activations' sum (computed once per activation block
// for all weight rows), so that every lane holds its exact share of the signed dot and no large terms cancel
// in fp32 later. The lanes then become fp32 and are scaled by dw * dx into the row's accumulator (Q4_1: plus
// mw * dx * sum in a second accumulator). Four weight rows a quarter of the range apart (four long streams,
// prefetched 2 KiB ahead, as the fp32 kernels) share each activation block; activation rows go in chunks of
// two.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/cpu/gemv_quant_int8.h"

namespace tessera {
namespace {

inline float HalfBits(const float* half_table, const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_table[h];
}

// The block's 32 weight quants as unsigned bytes in activation order (Q4: low nibbles are weights 0..15).
template <QuantType T>
inline __m256i WeightBytes(const uint8_t* b) {
  if constexpr (T == QuantType::kQ8_0) {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2)),
                            _mm256_set1_epi8(-128));
  } else {
    constexpr int kQs = T == QuantType::kQ4_0 ? 2 : 4;
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQs));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  }
}

// y[m, r * ys] for MR activation rows (from m0) and NR weight rows ws bytes apart.
template <QuantType T, int MR, int NR, bool kPrefetch>
inline void Tile(const float* half_table, const GemvQuantInt8Args& a, int64_t m0, const uint8_t* w,
                 int64_t ws, float* y, int64_t ys) {
  constexpr int64_t kBlockBytes = T == QuantType::kQ8_0 ? 34 : T == QuantType::kQ4_0 ? 18 : 20;
  constexpr int32_t kOffset = T == QuantType::kQ8_0 ? 128 : T == QuantType::kQ4_0 ? 8 : 0;
  const int64_t blocks = a.k / kQuantBlockSize;
  __m256 acc[MR][NR], acc_min[MR][NR];
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < NR; ++r) {
      acc[m][r] = _mm256_setzero_ps();
      acc_min[m][r] = _mm256_setzero_ps();
    }
  }
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i xq[MR], start[MR];
    __m256 dx[MR], dx_sum[MR];
    for (int m = 0; m < MR; ++m) {
      const int64_t row = (m0 + m) * blocks + b;
      xq[m] =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (m0 + m) * a.k + b * kQuantBlockSize));
      if constexpr (kOffset != 0) {
        // -kOffset * (the sum of each lane's four activation quants), the offset's share of each lane.
        start[m] = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(static_cast<char>(kOffset)), xq[m]));
      } else {
        start[m] = _mm256_setzero_si256();
      }
      dx[m] = _mm256_set1_ps(a.xd[row]);
      if constexpr (T == QuantType::kQ4_1) {
        dx_sum[m] = _mm256_zextps128_ps256(_mm_set_ss(a.xd[row] * static_cast<float>(a.xsum[row])));
      }
    }
    for (int r = 0; r < NR; ++r) {
      const uint8_t* p = w + r * ws + b * kBlockBytes;
      if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(p + kGemvPrefetchBytes), _MM_HINT_T0);
      const __m256i wq = WeightBytes<T>(p);
      const __m256 dw = _mm256_set1_ps(HalfBits(half_table, p));
      for (int m = 0; m < MR; ++m) {
        const __m256i dot = _mm256_dpbusd_epi32(start[m], wq, xq[m]);
        acc[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx[m]), acc[m][r]);
        if constexpr (T == QuantType::kQ4_1) {
          acc_min[m][r] =
              _mm256_fmadd_ps(_mm256_set1_ps(HalfBits(half_table, p + 2)), dx_sum[m], acc_min[m][r]);
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < NR; ++r) {
      __m256 total = acc[m][r];
      if constexpr (T == QuantType::kQ4_1) total = _mm256_add_ps(total, acc_min[m][r]);
      y[(m0 + m) * a.n + r * ys] = _mm512_reduce_add_ps(_mm512_zextps256_ps512(total));
    }
  }
}

// Weight rows n + r * stride against every activation row; the first chunk streams the weights from memory.
template <QuantType T, int NR>
inline void Rows(const float* half_table, const GemvQuantInt8Args& a, int64_t row_bytes, int64_t n,
                 int64_t stride) {
  const uint8_t* w = a.w + n * row_bytes;
  const int64_t ws = stride * row_bytes;
  float* y = a.y + n;
  for (int64_t m = 0; m < a.m; m += 2) {
    const bool pair = a.m - m >= 2;
    if (m == 0) {
      pair ? Tile<T, 2, NR, true>(half_table, a, m, w, ws, y, stride)
           : Tile<T, 1, NR, true>(half_table, a, m, w, ws, y, stride);
    } else {
      pair ? Tile<T, 2, NR, false>(half_table, a, m, w, ws, y, stride)
           : Tile<T, 1, NR, false>(half_table, a, m, w, ws, y, stride);
    }
  }
}

template <QuantType T>
void Run(const GemvQuantInt8Args& a, int64_t n_begin, int64_t n_end) {
  const int64_t row_bytes = QuantRowBytes(T, a.k);
  const float* half_table = HalfToFloatTable();
  ForEachRowStreams(
      n_begin, n_end, [&](int64_t n, int64_t stride) { Rows<T, 4>(half_table, a, row_bytes, n, stride); },
      [&](int64_t n) { Rows<T, 1>(half_table, a, row_bytes, n, 0); });
}

}  // namespace

void GemvQuantInt8Avx512Vnni(const GemvQuantInt8Args& a, int64_t n_begin, int64_t n_end) {
  TESSERA_CHECK(a.k % kQuantBlockSize == 0);
  DispatchQuantType(a.type, [&]<QuantType T>() { Run<T>(a, n_begin, n_end); });
}

}  // namespace tessera
