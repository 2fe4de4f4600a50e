// Portable quantized GEMV kernel (no SIMD assumptions), row dequantization (portable, and to bf16 also with
// AVX-512 through a target attribute, so that this file builds for the baseline ISA), the block geometry and
// the run-time kernel choice. Built with -ffp-contract=off (sources.cmake): Q4_1 rounds q * d before adding
// m, as the GGUF reader's DequantizeRow does, in every version.
#include <cstring>
#include <vector>

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized flags once inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/cpu/gemv_quant.h"

namespace tessera {
namespace {

// x[0, 32) . dequant(block) as the SIMD kernels compute it: the fp32 dot with the integer quants, times d
// (Q4_1: plus m * sum(x)).
template <QuantType T>
inline float BlockDot(const float* x, const uint8_t* b) {
  const float d = BlockHalf(b);
  float dot = 0;
  if constexpr (T == QuantType::kQ8_0) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) dot += x[j] * static_cast<float>(qs[j]);
    return dot * d;
  } else if constexpr (T == QuantType::kQ4_0) {
    const uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) dot += x[j] * static_cast<float>((qs[j] & 0x0F) - 8);
    for (int j = 0; j < 16; ++j) dot += x[j + 16] * static_cast<float>((qs[j] >> 4) - 8);
    return dot * d;
  } else {
    const float m = BlockHalf(b + 2);
    const uint8_t* qs = b + 4;
    float sum = 0;
    for (int j = 0; j < 16; ++j) dot += x[j] * static_cast<float>(qs[j] & 0x0F);
    for (int j = 0; j < 16; ++j) dot += x[j + 16] * static_cast<float>(qs[j] >> 4);
    for (int j = 0; j < 32; ++j) sum += x[j];
    return dot * d + sum * m;
  }
}

template <QuantType T>
void Run(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  const int64_t row_bytes = QuantRowBytes(T, a.k);
  const int64_t block_bytes = QuantBlockBytes(T);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* w = a.w + n * row_bytes;
    for (int64_t m = 0; m < a.m; ++m) {
      const float* x = a.x + m * a.k;
      float acc = 0;
      for (int64_t b = 0; b < a.k / kQuantBlockSize; ++b) acc += BlockDot<T>(x + b * 32, w + b * block_bytes);
      a.y[m * a.n + n] = acc;
    }
  }
}

// One block to fp32 with DequantizeRow's arithmetic (the scale from HalfToFloatTable, which is F16ToF32).
// Plain loops over the 32 (or twice 16) weights, which the compiler vectorizes.
template <QuantType T>
inline void DequantBlock(const float* half_table, const uint8_t* b, float* out) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  const float d = half_table[h];
  if constexpr (T == QuantType::kQ8_0) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(qs[j]) * d;
  } else if constexpr (T == QuantType::kQ4_0) {
    const uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) out[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    for (int j = 0; j < 16; ++j) out[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  } else {
    std::memcpy(&h, b + 2, 2);
    const float m = half_table[h];
    const uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) out[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    for (int j = 0; j < 16; ++j) out[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

template <QuantType T>
void DequantRow(const uint8_t* w, int64_t k, float* out) {
  const float* half_table = HalfToFloatTable();
  const int64_t block_bytes = QuantBlockBytes(T);
  for (int64_t b = 0; b < k / kQuantBlockSize; ++b) {
    DequantBlock<T>(half_table, w + b * block_bytes, out + b * kQuantBlockSize);
  }
}

#if defined(__x86_64__)
#define TESSERA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// Round-to-nearest-even fp32 -> bf16 of 16 lanes, NaN -> quiet NaN (F32ToBf16), each in the low half of a
// 32-bit lane.
TESSERA_AVX512 inline __m512i RoundBf16Lanes(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
}

// The residual v - bf16(v) of lanes `v` whose bf16 rounding is `rounded` (RoundBf16Lanes(v)), rounded to
// bf16 in turn: the low half of a hi + lo split.
TESSERA_AVX512 inline __m512i ResidualBf16Lanes(__m512 v, __m512i rounded) {
  return RoundBf16Lanes(_mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(rounded, 16))));
}

// Stores lanes lo (weights 0..15) and hi (16..31), bf16 in the low halves, as 32 consecutive bf16 (one
// 64-byte store).
TESSERA_AVX512 inline void StoreBf16Block(__m512i lo, __m512i hi, uint16_t* out) {
  const __m512i packed =
      _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(lo)), _mm512_cvtepi32_epi16(hi), 1);
  _mm512_storeu_si512(out, packed);
}

// One block to bf16 (and, when `residual` is not null, the bf16 of what that rounding lost). Q8_0: int8 ->
// fp32, times d, rounded. Q4_x: the 16 possible values d * (q - 8) (Q4_1: d * q + m, two roundings) are
// computed and rounded once, then looked up by nibble (vpermd reads only the low four bits of each index
// lane).
template <QuantType T>
TESSERA_AVX512 inline void DequantBlockBf16Avx512(const float* half_table, const uint8_t* b, uint16_t* out,
                                                  uint16_t* residual) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  const __m512 d = _mm512_set1_ps(half_table[h]);
  if constexpr (T == QuantType::kQ8_0) {
    const __m512 lo =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))));
    const __m512 hi =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18))));
    const __m512 v_lo = _mm512_mul_ps(lo, d), v_hi = _mm512_mul_ps(hi, d);
    const __m512i r_lo = RoundBf16Lanes(v_lo), r_hi = RoundBf16Lanes(v_hi);
    StoreBf16Block(r_lo, r_hi, out);
    if (residual != nullptr) {
      StoreBf16Block(ResidualBf16Lanes(v_lo, r_lo), ResidualBf16Lanes(v_hi, r_hi), residual);
    }
  } else {
    constexpr int kQs = T == QuantType::kQ4_0 ? 2 : 4;
    __m512 values;
    if constexpr (T == QuantType::kQ4_0) {
      values = _mm512_mul_ps(d, _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7));
    } else {
      std::memcpy(&h, b + 2, 2);
      values = _mm512_add_ps(
          _mm512_mul_ps(d, _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
          _mm512_set1_ps(half_table[h]));
    }
    const __m512i table = RoundBf16Lanes(values);
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQs)));
    const __m512i q_hi = _mm512_srli_epi32(q, 4);
    StoreBf16Block(_mm512_permutexvar_epi32(q, table), _mm512_permutexvar_epi32(q_hi, table), out);
    if (residual != nullptr) {
      const __m512i rest = ResidualBf16Lanes(values, table);
      StoreBf16Block(_mm512_permutexvar_epi32(q, rest), _mm512_permutexvar_epi32(q_hi, rest), residual);
    }
  }
}

template <QuantType T>
TESSERA_AVX512 void DequantRowBf16Avx512(const uint8_t* w, int64_t k, uint16_t* out, uint16_t* residual) {
  const float* half_table = HalfToFloatTable();
  const int64_t block_bytes = QuantBlockBytes(T);
  for (int64_t b = 0; b < k / kQuantBlockSize; ++b) {
    // 64 blocks ahead (1-2 KiB): twice the single-thread speed of the hardware prefetchers alone, measured on
    // a Sapphire Rapids VM. Prefetches never fault, past the end of the weights included.
    _mm_prefetch(reinterpret_cast<const char*>(w + (b + 64) * block_bytes), _MM_HINT_T0);
    DequantBlockBf16Avx512<T>(half_table, w + b * block_bytes, out + b * kQuantBlockSize,
                              residual == nullptr ? nullptr : residual + b * kQuantBlockSize);
  }
}
#undef TESSERA_AVX512
#endif  // __x86_64__

}  // namespace

void DequantizeQuantRowBf16Scalar(QuantType type, const uint8_t* w, int64_t k, uint16_t* out,
                                  uint16_t* residual) {
  TESSERA_CHECK(k % kQuantBlockSize == 0);
  const int64_t block_bytes = QuantBlockBytes(type);
  float block[kQuantBlockSize];
  for (int64_t b = 0; b < k / kQuantBlockSize; ++b) {
    DequantizeQuantRow(type, w + b * block_bytes, kQuantBlockSize, block);
    for (int64_t j = 0; j < kQuantBlockSize; ++j) {
      const uint16_t hi = F32ToBf16(block[j]);
      out[b * kQuantBlockSize + j] = hi;
      if (residual != nullptr) residual[b * kQuantBlockSize + j] = F32ToBf16(block[j] - Bf16ToF32(hi));
    }
  }
}

void DequantizeQuantRowBf16Avx512(QuantType type, const uint8_t* w, int64_t k, uint16_t* out,
                                  uint16_t* residual) {
  TESSERA_CHECK(k % kQuantBlockSize == 0);
#if defined(__x86_64__)
  switch (type) {
    case QuantType::kQ8_0:
      return DequantRowBf16Avx512<QuantType::kQ8_0>(w, k, out, residual);
    case QuantType::kQ4_0:
      return DequantRowBf16Avx512<QuantType::kQ4_0>(w, k, out, residual);
    case QuantType::kQ4_1:
      return DequantRowBf16Avx512<QuantType::kQ4_1>(w, k, out, residual);
    default:
      TESSERA_CHECK(IsQuantized(type));
  }
#else
  DequantizeQuantRowBf16Scalar(type, w, k, out, residual);
#endif
}

DequantRowBf16Fn DequantizeQuantRowBf16ForIsa(GemvIsa isa) {
  return isa == GemvIsa::kAvx512 ? &DequantizeQuantRowBf16Avx512 : &DequantizeQuantRowBf16Scalar;
}

void DequantizeQuantRow(QuantType type, const uint8_t* w, int64_t k, float* out) {
  TESSERA_CHECK(k % kQuantBlockSize == 0);
  switch (type) {
    case QuantType::kQ8_0:
      return DequantRow<QuantType::kQ8_0>(w, k, out);
    case QuantType::kQ4_0:
      return DequantRow<QuantType::kQ4_0>(w, k, out);
    case QuantType::kQ4_1:
      return DequantRow<QuantType::kQ4_1>(w, k, out);
    default:
      TESSERA_CHECK(IsQuantized(type));
  }
}

int64_t QuantBlockBytes(QuantType type) {
  TESSERA_CHECK(IsQuantized(type));
  return DTypeBlockBytes(type);
}

int64_t QuantRowBytes(QuantType type, int64_t k) {
  TESSERA_CHECK(k % kQuantBlockSize == 0);
  return k / kQuantBlockSize * QuantBlockBytes(type);
}

const char* QuantTypeName(QuantType type) {
  switch (type) {
    case QuantType::kQ8_0:
      return "q8_0";
    case QuantType::kQ4_0:
      return "q4_0";
    case QuantType::kQ4_1:
      return "q4_1";
    default:
      break;
  }
  return "?";
}

void GemvQuantScalar(const GemvQuantArgs& a, int64_t n_begin, int64_t n_end) {
  TESSERA_CHECK(a.k % kQuantBlockSize == 0);
  DispatchQuantType(a.type, [&]<QuantType T>() { Run<T>(a, n_begin, n_end); });
}

const float* HalfToFloatTable() {
  static const std::vector<float>* const table = [] {
    auto* t = new std::vector<float>(65536);
    for (uint32_t h = 0; h < 65536; ++h) (*t)[h] = F16ToF32(static_cast<uint16_t>(h));
    return t;
  }();
  return table->data();
}

GemvQuantFn GemvQuantForIsa(GemvIsa isa) {
  switch (isa) {
    case GemvIsa::kAvx512:
      return &GemvQuantAvx512;
    case GemvIsa::kAvx2:
      return &GemvQuantAvx2;
    case GemvIsa::kScalar:
      return &GemvQuantScalar;
  }
  return &GemvQuantScalar;
}

}  // namespace tessera
