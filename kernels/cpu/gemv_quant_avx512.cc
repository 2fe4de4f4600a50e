// AVX-512 quantized GEMV kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq). Each 32-weight
// block becomes two 16-lane fp32 vectors (int8 -> int32 -> fp32, or a 16-entry nibble -> fp32 lookup), which
// are multiplied with fp32 FMA against x into a per-block dot vector; one FMA by the broadcast block scale
// adds it to the row's accumulator (Q4_1 instead dequantizes, q * d + m, and FMAs x . w directly). Four
// weight rows (a quarter of the range apart: four long streams) share each activation load; activation rows
// go in register chunks of up to four, re-reading the four weight rows from L1. GCC 12's AVX-512 intrinsics
// start from _mm512_undefined_*(), which -Wuninitialized flags once inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/cpu/gemv_quant.h"

namespace tessera {
namespace {

// The fp16 at p (any alignment) as fp32 in all 16 lanes, through HalfToFloatTable (the broadcast becomes an
// FMA's memory operand).
inline __m512 BroadcastHalf(const float* half_table, const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm512_set1_ps(half_table[h]);
}

// One block of one weight row: its 32 quants as fp32 (lo = weights 0..15, hi = 16..31; Q4_0 already minus 8)
// and its scale d, broadcast. Q4_1 differs: lo and hi are the dequantized weights q * d + m, rounded once.
struct Block {
  __m512 lo, hi, d;
};

template <QuantType T>
inline Block Unpack(const float* half_table, const uint8_t* b) {
  Block r;
  r.d = BroadcastHalf(half_table, b);
  if constexpr (T == QuantType::kQ8_0) {
    r.lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))));
    r.hi =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18))));
  } else {
    constexpr int kQs = T == QuantType::kQ4_0 ? 2 : 4;
    // Nibble -> fp32 by a 16-entry table lookup (vpermps reads only the low four bits of each index lane, so
    // the low nibble needs no mask): one instruction instead of mask, subtract and convert.
    const __m512 values = T == QuantType::kQ4_0
                              ? _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7)
                              : _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQs)));
    if constexpr (T == QuantType::kQ4_0) {
      r.lo = _mm512_permutexvar_ps(q, values);
      r.hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), values);
    } else {
      // Q4_1 looks up the dequantized weights q * d + m (one FMA builds the table), which saves the separate
      // m * sum(x) term: Tile then accumulates x . w with no scale.
      const __m512 table = _mm512_fmadd_ps(values, r.d, BroadcastHalf(half_table, b + 2));
      r.lo = _mm512_permutexvar_ps(q, table);
      r.hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    }
  }
  return r;
}

// y[m, r * ys] = x[m, :] . dequant(w[r * ws bytes, :]) for MR activation rows and NR weight rows ws bytes
// apart: NR independent streams, each prefetching kGemvPrefetchBytes ahead with kPrefetch (past its row's
// end into the next row of the same stream; prefetches never fault).
template <QuantType T, int MR, int NR, bool kPrefetch>
inline void Tile(const float* half_table, const float* x, const uint8_t* w, int64_t ws, int64_t k, float* y,
                 int64_t ys, int64_t ldy) {
  constexpr int64_t kBlockBytes = T == QuantType::kQ8_0 ? 34 : T == QuantType::kQ4_0 ? 18 : 20;
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  const int64_t blocks = k / kQuantBlockSize;
  for (int64_t b = 0; b < blocks; ++b) {
    Block wb[NR];
    for (int r = 0; r < NR; ++r) {
      const uint8_t* p = w + r * ws + b * kBlockBytes;
      wb[r] = Unpack<T>(half_table, p);
      if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(p + kGemvPrefetchBytes), _MM_HINT_T0);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 xlo = _mm512_loadu_ps(x + m * k + b * kQuantBlockSize);
      const __m512 xhi = _mm512_loadu_ps(x + m * k + b * kQuantBlockSize + 16);
      for (int r = 0; r < NR; ++r) {
        if constexpr (T == QuantType::kQ4_1) {
          acc[m][r] = _mm512_fmadd_ps(xhi, wb[r].hi, _mm512_fmadd_ps(xlo, wb[r].lo, acc[m][r]));
        } else {
          const __m512 dot = _mm512_fmadd_ps(xhi, wb[r].hi, _mm512_mul_ps(xlo, wb[r].lo));
          acc[m][r] = _mm512_fmadd_ps(dot, wb[r].d, acc[m][r]);
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) y[m * ldy + r * ys] = _mm512_reduce_add_ps(acc[m][r]);
}

// One register chunk of `mr` activation rows (1..4) against weight rows n + r * stride; the first chunk
// (kPrefetch) streams the weights from memory, later ones re-read them from L1/L2.
template <QuantType T, int NR, bool kPrefetch>
inline void Chunk(const float* half_table, const GemvQuantArgs& a, int64_t mr, const float* x,
                  const uint8_t* w, int64_t ws, float* y, int64_t stride) {
  switch (mr) {
    case 4:
      return Tile<T, 4, NR, kPrefetch>(half_table, x, w, ws, a.k, y, stride, a.n);
    case 3:
      return Tile<T, 3, NR, kPrefetch>(half_table, x, w, ws, a.k, y, stride, a.n);
    case 2:
      return Tile<T, 2, NR, kPrefetch>(half_table, x, w, ws, a.k, y, stride, a.n);
    default:
      return Tile<T, 1, NR, kPrefetch>(half_table, x, w, ws, a.k, y, stride, a.n);
  }
}

template <QuantType T, int NR>
inline void Rows(const float* half_table, const GemvQuantArgs& a, int64_t row_bytes, int64_t n,
                 int64_t stride) {
  const uint8_t* w = a.w + n * row_bytes;
  const int64_t ws = stride * row_bytes;
  for (int64_t m = 0; m < a.m; m += 4) {
    const int64_t mr = std::min<int64_t>(4, a.m - m);
    if (m == 0) {
      Chunk<T, NR, true>(half_table, a, mr, a.x, w, ws, a.y + n, stride);
    } else {
      Chunk<T, NR, false>(half_table, a, mr, a.x + m * a.k, w, ws, a.y + m * a.n + n, stride);
    }
  }
}

template <QuantType T>
void Run(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  const int64_t row_bytes = QuantRowBytes(T, a.k);
  const float* half_table = HalfToFloatTable();
  ForEachRowStreams(
      n_begin, n_end, [&](int64_t n, int64_t stride) { Rows<T, 4>(half_table, a, row_bytes, n, stride); },
      [&](int64_t n) { Rows<T, 1>(half_table, a, row_bytes, n, 0); });
}

}  // namespace

void GemvQuantAvx512(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  TESSERA_CHECK(a.k % kQuantBlockSize == 0);
  DispatchQuantType(a.type, [&]<QuantType T>() { Run<T>(a, n_begin, n_end); });
}

}  // namespace tessera
