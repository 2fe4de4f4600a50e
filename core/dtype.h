// Element types of tensors and the bf16 / f16 <-> f32 conversions used on the host.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace tessera {

// kQ8_0, kQ4_0 and kQ4_1 are llama.cpp's weight-only quantized block types (ggml-common.h): 32 consecutive
// weights of a row share one block, every scale an IEEE half, little-endian:
//   Q8_0  {fp16 d; int8 qs[32]}           34 bytes  w[j] = qs[j] * d
//   Q4_0  {fp16 d; uint8 qs[16]}          18 bytes  w[j] = ((qs[j] & 0xF) - 8) * d, w[j+16] = ((qs[j] >> 4) -
//   8) * d Q4_1  {fp16 d; fp16 m; uint8 qs[16]}  20 bytes  w[j] = (qs[j] & 0xF) * d + m,   w[j+16] = (qs[j]
//   >> 4) * d + m
// (j < 16). A tensor of a block type has its logical shape (a weight [n, k] is [n, k]); its last dimension is
// a multiple of the block size, and each row is k / 32 blocks.
enum class DType : uint8_t { kF32, kBF16, kF16, kI32, kI64, kQ8_0, kQ4_0, kQ4_1 };

// Whether `t` is a block-quantized type.
inline bool IsQuantized(DType t) { return t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_1; }

// Bytes per element of a plain type; 0 for a block type, which has no whole-byte element size (use
// DTypeBytes).
inline int64_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
      return 0;
  }
  return 0;
}

// Elements per block: 32 for the quantized types, 1 otherwise.
inline int64_t DTypeBlockElems(DType t) { return IsQuantized(t) ? 32 : 1; }

// Bytes per block: 34, 18, 20 for Q8_0, Q4_0, Q4_1; DTypeSize otherwise.
inline int64_t DTypeBlockBytes(DType t) {
  switch (t) {
    case DType::kQ8_0:
      return 34;
    case DType::kQ4_0:
      return 18;
    case DType::kQ4_1:
      return 20;
    default:
      break;
  }
  return DTypeSize(t);
}

// Bytes of `elems` consecutive elements (for a block type, a whole number of blocks; else -1).
inline int64_t DTypeBytes(DType t, int64_t elems) {
  const int64_t block = DTypeBlockElems(t);
  if (elems % block != 0) return -1;
  return elems / block * DTypeBlockBytes(t);
}

// The safetensors spelling ("F32", "BF16", ...); "Q8_0", "Q4_0", "Q4_1" for the block types (which
// safetensors files store as U8 rows, see worker/checkpoint/safetensors.h).
std::string_view DTypeName(DType t);

inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

}  // namespace tessera
