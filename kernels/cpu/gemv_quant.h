// Small-M matrix multiply with weights in llama.cpp's 32-weight quantized blocks (decode):
// y[M, N] = x[M, K] @ dequant(w)[N, K]^T, activations and accumulation in fp32. The blocks are read as GGUF
// files store them (no repacking), each weight row streamed from memory once for all M activation rows. One
// entry point per instruction set, as for the bf16 kernels in gemv.h, whose GemvIsa choice this reuses.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/cpu/gemv.h"

namespace tessera {

// The block formats are DType's kQ8_0, kQ4_0 and kQ4_1 (core/dtype.h); worker/checkpoint/gguf_dequant.h has
// ggml's type codes for them.
using QuantType = DType;

// Weights per block (every quantized type).
inline constexpr int64_t kQuantBlockSize = 32;

// Bytes per block: 34, 18 or 20 (CHECKs that `type` is quantized).
int64_t QuantBlockBytes(QuantType type);
// Bytes of one weight row of k weights; k must be a multiple of kQuantBlockSize (CHECKed).
int64_t QuantRowBytes(QuantType type, int64_t k);
// "q8_0", "q4_0", "q4_1".
const char* QuantTypeName(QuantType type);

struct GemvQuantArgs {
  const float* x = nullptr;  // [m, k] fp32, row stride k
  const uint8_t* w =
      nullptr;         // [n, k / 32] blocks of `type`, row stride QuantRowBytes(type, k); any alignment
  float* y = nullptr;  // [m, n], row stride n
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;  // a multiple of kQuantBlockSize (CHECKed by every kernel; there is no tail)
  QuantType type = QuantType::kQ8_0;
};

// Computes the columns [n_begin, n_end) of y (all m rows); 0 <= n_begin <= n_end <= n. Per weight row and
// block, the fp32 partial dot of x with the block's integer quants is multiplied by the block scale d and
// added to an fp32 accumulator (Q4_1: plus m * sum(x over the block); the AVX-512 kernel instead dequantizes
// each weight as fma(q, d, m) and accumulates x * w): llama.cpp's dequantize-then-dot up to fp32 rounding.
// Each output element's arithmetic does not depend on the column range or on m, so disjoint column ranges may
// run concurrently and give the same bits as one call. Only reads x and w.
using GemvQuantFn = void (*)(const GemvQuantArgs& args, int64_t n_begin, int64_t n_end);

void GemvQuantScalar(const GemvQuantArgs& args, int64_t n_begin, int64_t n_end);
// Requires AVX2 + FMA + F16C (the caller asks GemvIsaSupported(GemvIsa::kAvx2) first).
void GemvQuantAvx2(const GemvQuantArgs& args, int64_t n_begin, int64_t n_end);
// Requires AVX-512 F/BW/VL/DQ.
void GemvQuantAvx512(const GemvQuantArgs& args, int64_t n_begin, int64_t n_end);

// The fp16 scale at p (a block's d or m, any alignment) as fp32.
inline float BlockHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// Calls fn.template operator()<T>() with T the block type `type` (kQ8_0, kQ4_0 or kQ4_1; CHECKed): each
// kernel's one step from the run-time type to its templates.
template <typename Fn>
inline void DispatchQuantType(QuantType type, Fn&& fn) {
  switch (type) {
    case QuantType::kQ8_0:
      return fn.template operator()<QuantType::kQ8_0>();
    case QuantType::kQ4_0:
      return fn.template operator()<QuantType::kQ4_0>();
    case QuantType::kQ4_1:
      return fn.template operator()<QuantType::kQ4_1>();
    default:
      TESSERA_CHECK(IsQuantized(type));
  }
}

// The kernel for `isa` (which the caller has checked with GemvIsaSupported).
GemvQuantFn GemvQuantForIsa(GemvIsa isa);

// Dequantizes one row of k weights of `type` (k a multiple of kQuantBlockSize, CHECKed) to fp32: w = q * d
// (Q4_1: q * d + m, the product rounded before the sum), bit-identical to worker/checkpoint/gguf_dequant.cc's
// DequantizeRow for these three types. w: k / 32 blocks at any alignment; out: k floats. Thread-safe.
void DequantizeQuantRow(QuantType type, const uint8_t* w, int64_t k, float* out);

// DequantizeQuantRow's values v rounded to bf16 (to nearest even, NaN stays NaN: F32ToBf16) into out, and,
// when `residual` is not null, F32ToBf16(v - out) into it: out + residual carry 16 significant bits, within
// 2^-17 of v (a Q8_0 value needs 19 bits, a Q4 one up to 15 plus Q4_1's minimum), for the oneDNN path of
// CpuLinear::ForwardQuant. out, residual: k bf16 values, any alignment. Thread-safe.
using DequantRowBf16Fn = void (*)(QuantType type, const uint8_t* w, int64_t k, uint16_t* out,
                                  uint16_t* residual);
void DequantizeQuantRowBf16Scalar(QuantType type, const uint8_t* w, int64_t k, uint16_t* out,
                                  uint16_t* residual);
// Requires AVX-512 F/BW/VL/DQ (GemvIsaSupported(GemvIsa::kAvx512)); built with a target attribute.
void DequantizeQuantRowBf16Avx512(QuantType type, const uint8_t* w, int64_t k, uint16_t* out,
                                  uint16_t* residual);
// The AVX-512 version for kAvx512, else the scalar one.
DequantRowBf16Fn DequantizeQuantRowBf16ForIsa(GemvIsa isa);

// For the kernels: the fp32 value of every fp16 bit pattern (65,536 floats, built on first use; thread-safe).
// A block scale then costs the SIMD kernels two loads (the fp16 bits, then an FMA's broadcast operand) and no
// vector instruction, which keeps the 4-bit kernels within reach of memory bandwidth.
const float* HalfToFloatTable();

}  // namespace tessera
