// AVX-512 quantized GEMV kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq). Each 32-weight
// block becomes two 16-lane fp32 vectors (int8 -> int32 -> fp32, or a 16-entry nibble -> fp32 lookup), which
// are multiplied with fp32 FMA against x into a per-block dot vector; one FMA by the broadcast block scale
// adds it to the row's accumulator (Q4_1 instead dequantizes, q * d + m, and FMAs x . w directly). Four
// weight rows at a time share each activation load; activation rows go in register chunks of up to four,
// re-reading the four weight rows from L1. GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which
// -Wuninitialized flags once inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

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

// y[m, r] = x[m, :] . dequant(w[r, :]) for MR activation rows and NR consecutive weight rows.
template <QuantType T, int MR, int NR>
inline void Tile(const float* half_table, const float* x, const uint8_t* w, int64_t k, int64_t row_bytes,
                 float* y, int64_t ldy) {
  constexpr int64_t kBlockBytes = T == QuantType::kQ8_0 ? 34 : T == QuantType::kQ4_0 ? 18 : 20;
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  const int64_t blocks = k / kQuantBlockSize;
  for (int64_t b = 0; b < blocks; ++b) {
    Block wb[NR];
    for (int r = 0; r < NR; ++r) {
      const uint8_t* p = w + r * row_bytes + b * kBlockBytes;
      wb[r] = Unpack<T>(half_table, p);
      // The same block in the next group of rows: a whole group ahead, so each new row's stream is already
      // in flight when it starts (hardware prefetchers restart on every short row). Never faults.
      if (MR == 1) _mm_prefetch(reinterpret_cast<const char*>(p + NR * row_bytes), _MM_HINT_T0);
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
    for (int r = 0; r < NR; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[m][r]);
}

template <QuantType T, int NR>
inline void Rows(const float* half_table, const GemvQuantArgs& a, int64_t row_bytes, int64_t n) {
  const uint8_t* w = a.w + n * row_bytes;
  int64_t m = 0;
  for (; m + 4 <= a.m; m += 4)
    Tile<T, 4, NR>(half_table, a.x + m * a.k, w, a.k, row_bytes, a.y + m * a.n + n, a.n);
  switch (a.m - m) {
    case 3:
      Tile<T, 3, NR>(half_table, a.x + m * a.k, w, a.k, row_bytes, a.y + m * a.n + n, a.n);
      break;
    case 2:
      Tile<T, 2, NR>(half_table, a.x + m * a.k, w, a.k, row_bytes, a.y + m * a.n + n, a.n);
      break;
    case 1:
      Tile<T, 1, NR>(half_table, a.x + m * a.k, w, a.k, row_bytes, a.y + m * a.n + n, a.n);
      break;
    default:
      break;
  }
}

template <QuantType T>
void Run(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  const int64_t row_bytes = QuantRowBytes(T, a.k);
  const float* half_table = HalfToFloatTable();
  int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) Rows<T, 4>(half_table, a, row_bytes, n);
  for (; n < n_end; ++n) Rows<T, 1>(half_table, a, row_bytes, n);
}

}  // namespace

void GemvQuantAvx512(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  TESSERA_CHECK(a.k % kQuantBlockSize == 0);
  switch (a.type) {
    case QuantType::kQ8_0:
      return Run<QuantType::kQ8_0>(a, n_begin, n_end);
    case QuantType::kQ4_0:
      return Run<QuantType::kQ4_0>(a, n_begin, n_end);
    case QuantType::kQ4_1:
      return Run<QuantType::kQ4_1>(a, n_begin, n_end);
    default:
      TESSERA_CHECK(IsQuantized(a.type));
  }
}

}  // namespace tessera
