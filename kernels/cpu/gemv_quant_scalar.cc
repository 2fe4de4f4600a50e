// Portable quantized GEMV kernel (no SIMD assumptions), row dequantization, the block geometry and the
// run-time kernel choice. Built with -ffp-contract=off (sources.cmake): DequantizeQuantRow's Q4_1 rounds
// q * d before adding m, as DequantizeRow does.
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/cpu/gemv_quant.h"

namespace tessera {
namespace {

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// x[0, 32) . dequant(block) as the SIMD kernels compute it: the fp32 dot with the integer quants, times d
// (Q4_1: plus m * sum(x)).
template <QuantType T>
inline float BlockDot(const float* x, const uint8_t* b) {
  const float d = Half(b);
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
    const float m = Half(b + 2);
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

}  // namespace

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
