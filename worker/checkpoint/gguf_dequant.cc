// Dequantization of GGML blocks. Layouts (ggml-common.h): every scale is an IEEE half; Q4_0 / Q4_1 / Q8_0
// hold 32 weights per block, the K-quants 256 per super-block split into sub-blocks with 6-bit (Q4_K, Q5_K)
// or 8-bit (Q6_K) scales. Arithmetic follows gguf-py's quants.py operation by operation, so results are
// bit-identical.
#include "worker/checkpoint/gguf_dequant.h"

#include <cstring>

#include "core/check.h"
#include "core/dtype.h"

namespace tessera {
namespace {

constexpr int64_t kQK = 32;    // weights per Q4_0 / Q4_1 / Q8_0 block
constexpr int64_t kQKK = 256;  // weights per K-quant super-block

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// Q4_0: d, then 16 bytes whose low nibbles are weights 0..15 and high nibbles 16..31; w = d * (q - 8).
void DequantQ4_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + kQK / 2] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

// Q4_1: d, m, then nibbles as Q4_0; w = d * q + m.
void DequantQ4_1(const uint8_t* b, float* y) {
  const float d = Half(b), m = Half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    const float lo = d * static_cast<float>(qs[j] & 0x0F);
    const float hi = d * static_cast<float>(qs[j] >> 4);
    y[j] = lo + m;
    y[j + kQK / 2] = hi + m;
  }
}

// Q8_0: d, then 32 signed bytes; w = q * d.
void DequantQ8_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// The 6-bit scale and min of sub-block j (0..7) packed in Q4_K / Q5_K's 12 scale bytes: bytes 0..3 hold the
// scales of sub-blocks 0..3 (low 6 bits) and the top 2 bits of scales 4..7, bytes 4..7 the same for the mins,
// bytes 8..11 the low 4 bits of scale (low nibble) and min (high nibble) of sub-blocks 4..7.
inline void ScaleMinK4(const uint8_t* s, int j, float& scale, float& min) {
  if (j < 4) {
    scale = static_cast<float>(s[j] & 63);
    min = static_cast<float>(s[j + 4] & 63);
  } else {
    scale = static_cast<float>((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
    min = static_cast<float>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Q4_K: d, dmin, 12 scale bytes, 128 bytes of nibbles: byte c*32 + l holds weight l of sub-block 2c (low
// nibble) and of sub-block 2c + 1 (high nibble). w = (d * scale) * q - (dmin * min).
void DequantQ4_K(const uint8_t* b, float* y) {
  const float d = Half(b), dmin = Half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    float sc, m;
    ScaleMinK4(scales, j, sc, m);
    const float dl = d * sc, ml = dmin * m;
    const uint8_t* q = qs + (j / 2) * 32;
    const int shift = (j % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const float p = dl * static_cast<float>((q[l] >> shift) & 0x0F);
      y[j * 32 + l] = p - ml;
    }
  }
}

// Q5_K: d, dmin, 12 scale bytes, 32 bytes of high bits (bit j of byte l: weight l of sub-block j), then the
// low nibbles as Q4_K. w = (d * scale) * q - (dmin * min), q in 0..31.
void DequantQ5_K(const uint8_t* b, float* y) {
  const float d = Half(b), dmin = Half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    float sc, m;
    ScaleMinK4(scales, j, sc, m);
    const float dl = d * sc, ml = dmin * m;
    const uint8_t* q = qs + (j / 2) * 32;
    const int shift = (j % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
      const float p = dl * static_cast<float>(v);
      y[j * 32 + l] = p - ml;
    }
  }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed 8-bit scales (one per 16 weights), d.
// Each half (128 weights) has 64 low bytes and 32 high bytes: weight 32s + l of the half (s in 0..3) takes
// nibble s / 2 of low byte 32 (s % 2) + l and bits 2s, 2s + 1 of high byte l. w = (d * scale) * (q - 32).
void DequantQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = Half(b + 208);
  for (int half = 0; half < 2; ++half) {
    for (int s = 0; s < 4; ++s) {  // four runs of 32 weights
      const uint8_t* low = ql + half * 64 + (s % 2) * 32;
      const int low_shift = (s / 2) * 4;
      for (int l = 0; l < 32; ++l) {
        const int i = half * 128 + s * 32 + l;
        const int q = (((low[l] >> low_shift) & 0x0F) | (((qh[half * 32 + l] >> (2 * s)) & 3) << 4)) - 32;
        const float dl = d * static_cast<float>(scales[i / 16]);
        y[i] = dl * static_cast<float>(q);
      }
    }
  }
}

// Each supported type's block geometry and, for the block-quantized ones, its block dequantizer: the one
// table BlockLayout and DequantizeRow read.
struct TypeInfo {
  GgmlType type;
  GgmlBlockLayout layout;
  void (*dequant_block)(const uint8_t*, float*);  // null for F32 / F16 / BF16 (element by element)
};

constexpr TypeInfo kTypes[] = {
    {GgmlType::kF32, {1, 4}, nullptr},
    {GgmlType::kF16, {1, 2}, nullptr},
    {GgmlType::kBF16, {1, 2}, nullptr},
    {GgmlType::kQ4_0, {kQK, 2 + kQK / 2}, DequantQ4_0},
    {GgmlType::kQ4_1, {kQK, 4 + kQK / 2}, DequantQ4_1},
    {GgmlType::kQ8_0, {kQK, 2 + kQK}, DequantQ8_0},
    {GgmlType::kQ4_K, {kQKK, 4 + 12 + kQKK / 2}, DequantQ4_K},
    {GgmlType::kQ5_K, {kQKK, 4 + 12 + kQKK / 8 + kQKK / 2}, DequantQ5_K},
    {GgmlType::kQ6_K, {kQKK, kQKK / 2 + kQKK / 4 + kQKK / 16 + 2}, DequantQ6_K},
};

const TypeInfo& Info(GgmlType type) {
  for (const TypeInfo& info : kTypes) {
    if (info.type == type) return info;
  }
  TESSERA_CHECK(!"unhandled GgmlType");
  return kTypes[0];
}

}  // namespace

std::optional<GgmlType> GgmlTypeFromCode(uint32_t code) {
  switch (code) {
    case 0:
    case 1:
    case 2:
    case 3:
    case 8:
    case 12:
    case 13:
    case 14:
    case 30:
      return static_cast<GgmlType>(code);
    default:
      return std::nullopt;
  }
}

GgmlBlockLayout BlockLayout(GgmlType type) { return Info(type).layout; }

std::optional<DType> BlockDTypeOfGgml(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return DType::kQ8_0;
    case GgmlType::kQ4_0:
      return DType::kQ4_0;
    case GgmlType::kQ4_1:
      return DType::kQ4_1;
    default:
      return std::nullopt;
  }
}

GgmlType GgmlTypeOfBlockDType(DType dtype) {
  TESSERA_CHECK(IsQuantized(dtype));
  return dtype == DType::kQ8_0 ? GgmlType::kQ8_0 : dtype == DType::kQ4_0 ? GgmlType::kQ4_0 : GgmlType::kQ4_1;
}

std::string_view GgmlTypeName(uint32_t code) {
  static constexpr std::string_view kNames[] = {
      "F32",   "F16",        "Q4_0",       "Q4_1",       "Q4_2",     "Q4_3",     "Q5_0",
      "Q5_1",  "Q8_0",       "Q8_1",       "Q2_K",       "Q3_K",     "Q4_K",     "Q5_K",
      "Q6_K",  "Q8_K",       "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",  "IQ1_S",    "IQ4_NL",
      "IQ3_S", "IQ2_S",      "IQ4_XS",     "I8",         "I16",      "I32",      "I64",
      "F64",   "IQ1_M",      "BF16",       "Q4_0_4_4",   "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
      "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",    "NVFP4",    "Q1_0"};
  if (code < std::size(kNames)) return kNames[code];
  return "unknown";
}

std::string_view SupportedGgmlTypeNames() { return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K"; }

void DequantizeRow(GgmlType type, const char* data, int64_t n, float* out) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(data);
  const GgmlBlockLayout layout = BlockLayout(type);
  TESSERA_CHECK(n % layout.block_size == 0);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(out, data, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) out[i] = Half(p + 2 * i);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = Bf16ToF32(h);
      }
      return;
    default:
      break;
  }
  void (*block_fn)(const uint8_t*, float*) = Info(type).dequant_block;
  for (int64_t blk = 0; blk < n / layout.block_size; ++blk) {
    block_fn(p + blk * layout.type_size, out + blk * layout.block_size);
  }
}

}  // namespace tessera
