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

// How far ahead (bytes) each weight stream of the SIMD kernels prefetches. Measured on the 8192x2048 and
// 2048x8192 shapes (2 threads, Sapphire Rapids VM): 1 KiB and 4 KiB ahead were 2-10% slower.
inline constexpr int64_t kGemvPrefetchBytes = 2048;

// The SIMD kernels' row order: [n_begin, n_end) as four streams of q = (n_end - n_begin) / 4 consecutive
// rows, read side by side: group(n, q) for n in [n_begin, n_begin + q) takes rows n, n + q, n + 2q and n +
// 3q; then single(n) takes each of the rows left over. Each stream runs through contiguous memory across row
// ends, which the prefetchers follow; four adjacent rows instead restarted four short streams every four
// rows, which cost 8-14% of the read bandwidth at m = 1 on BF16 weights and 15-19% on quantized ones.
template <typename Group, typename Single>
inline void ForEachRowStreams(int64_t n_begin, int64_t n_end, Group group, Single single) {
  const int64_t q = (n_end - n_begin) / 4;
  for (int64_t n = n_begin; n < n_begin + q; ++n) group(n, q);
  for (int64_t n = n_begin + 4 * q; n < n_end; ++n) single(n);
}

}  // namespace tessera
