// Small-M matrix multiply with BF16 weights (decode): y[M, N] = x[M, K] @ w[N, K]^T, activations and
// accumulation in fp32. Each weight row is streamed from memory once for all M activation rows. One entry
// point per instruction set (each in its own translation unit, compiled with its own -m flags) and a run-time
// choice by CPUID.
#pragma once

#include <cstdint>

namespace tessera {

struct GemvArgs {
  const float* x = nullptr;     // [m, k], row stride k
  const uint16_t* w = nullptr;  // [n, k] bf16 bits, row stride k; any alignment; only read
  float* y = nullptr;           // [m, n], row stride n
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
};

// Computes the columns [n_begin, n_end) of y (all m rows). Disjoint column ranges may run concurrently.
using GemvFn = void (*)(const GemvArgs& args, int64_t n_begin, int64_t n_end);

enum class GemvIsa { kScalar, kAvx2, kAvx512 };

void GemvScalar(const GemvArgs& args, int64_t n_begin, int64_t n_end);
// Requires AVX2 + FMA + F16C (CHECK-free: the caller asks GemvIsaSupported first).
void GemvAvx2(const GemvArgs& args, int64_t n_begin, int64_t n_end);
// Requires AVX-512 F/BW/VL/DQ.
void GemvAvx512(const GemvArgs& args, int64_t n_begin, int64_t n_end);

// Whether this CPU can run the kernel for `isa`.
bool GemvIsaSupported(GemvIsa isa);
// The fastest supported kernel, and its name ("avx512", "avx2", "scalar").
GemvIsa BestGemvIsa();
GemvFn GemvForIsa(GemvIsa isa);
const char* GemvIsaName(GemvIsa isa);

// Activation conversion for the oneDNN path: hi[i] = bf16(x[i]) rounded to nearest even (NaN stays NaN);
// when lo is not null, lo[i] = bf16(x[i] - hi[i]), so hi + lo carries ~16 significant bits of x.
using SplitBf16Fn = void (*)(const float* x, int64_t count, uint16_t* hi, uint16_t* lo);
void SplitBf16Scalar(const float* x, int64_t count, uint16_t* hi, uint16_t* lo);
void SplitBf16Avx512(const float* x, int64_t count, uint16_t* hi, uint16_t* lo);
SplitBf16Fn SplitBf16ForIsa(GemvIsa isa);

// Weight rows handled together by the kernels; callers split n on multiples of this.
inline constexpr int64_t kGemvRowBlock = 4;

}  // namespace tessera
