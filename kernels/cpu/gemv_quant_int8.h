// Quantized GEMV with int8 activations: llama.cpp's arithmetic for Q8_0 / Q4_0 / Q4_1 weights, an opt-in
// alternative (--quant-activations int8) to the fp32-activation kernels of gemv_quant.h. Each 32-value block
// of an activation row is quantized to int8 with its own scale (llama.cpp's quantize_row_q8_0), the block's
// dot product with the weight quants is exact in int32 (VNNI vpdpbusd), and only the per-block scaling and
// the sum over blocks run in fp32. That is about half the vector instructions per block of the fp32 kernels,
// which are compute-bound on 4-bit weights; the price is the activations' rounding (relative error up to
// 1/254 per value, about 1e-3 to 1e-2 of max |y| on random data, measured in linear_quant_test).
#pragma once

#include <cstdint>

#include "kernels/cpu/gemv_quant.h"

namespace tessera {

// Quantizes x[m, k] (k a multiple of kQuantBlockSize, CHECKed) block by block: d = max|x| / 127, q = x / d
// rounded half away from zero (0 when d is 0), sum = the block's sum of q. As llama.cpp's quantize_row_q8_0
// (and q8_1's sum), except that d stays fp32 where llama.cpp rounds it to fp16. q: [m, k]; d, sum: [m, k /
// 32].
void QuantizeActivationsInt8(const float* x, int64_t m, int64_t k, int8_t* q, float* d, int32_t* sum);

struct GemvQuantInt8Args {
  const int8_t* xq = nullptr;     // [m, k] activation quants (QuantizeActivationsInt8)
  const float* xd = nullptr;      // [m, k / 32] their block scales
  const int32_t* xsum = nullptr;  // [m, k / 32] their block sums of q
  const uint8_t* w =
      nullptr;         // [n, k / 32] blocks of `type`, row stride QuantRowBytes(type, k), any alignment
  float* y = nullptr;  // [m, n], row stride n
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;  // a multiple of kQuantBlockSize (CHECKed)
  QuantType type = QuantType::kQ8_0;
};

// Computes the columns [n_begin, n_end) of y (all m rows). Per weight row and block: the exact integer dot
// s = sum_i qw_i * qx_i (qw: Q8_0's int8, Q4_0's nibble - 8, Q4_1's nibble), then in fp32 y += s * (dw * dx)
// (Q4_1: also + mw * (dx * sum)). The kernels differ only in the order of the fp32 sums. Disjoint column
// ranges may run concurrently. Only reads the inputs.
using GemvQuantInt8Fn = void (*)(const GemvQuantInt8Args& args, int64_t n_begin, int64_t n_end);

void GemvQuantInt8Scalar(const GemvQuantInt8Args& args, int64_t n_begin, int64_t n_end);
// Requires AVX-512 F/BW/VL/DQ and VNNI (Int8VnniSupported()).
void GemvQuantInt8Avx512Vnni(const GemvQuantInt8Args& args, int64_t n_begin, int64_t n_end);

// Whether this CPU can run GemvQuantInt8Avx512Vnni.
bool Int8VnniSupported();

}  // namespace tessera
