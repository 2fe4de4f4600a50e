// Portable GEMV kernel (no SIMD assumptions) and the run-time ISA choice.
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/gemv.h"

namespace tessera {
namespace {

inline float Widen(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

void GemvScalar(const GemvArgs& a, int64_t n_begin, int64_t n_end) {
  const int64_t k = a.k;
  int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) {
    const uint16_t* w0 = a.w + n * k;
    const uint16_t* w1 = w0 + k;
    const uint16_t* w2 = w1 + k;
    const uint16_t* w3 = w2 + k;
    for (int64_t m = 0; m < a.m; ++m) {
      const float* x = a.x + m * k;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = 0; i < k; ++i) {
        s0 += x[i] * Widen(w0[i]);
        s1 += x[i] * Widen(w1[i]);
        s2 += x[i] * Widen(w2[i]);
        s3 += x[i] * Widen(w3[i]);
      }
      float* y = a.y + m * a.n + n;
      y[0] = s0;
      y[1] = s1;
      y[2] = s2;
      y[3] = s3;
    }
  }
  for (; n < n_end; ++n) {
    const uint16_t* w0 = a.w + n * k;
    for (int64_t m = 0; m < a.m; ++m) {
      const float* x = a.x + m * k;
      float s = 0;
      for (int64_t i = 0; i < k; ++i) s += x[i] * Widen(w0[i]);
      a.y[m * a.n + n] = s;
    }
  }
}

void SplitBf16Scalar(const float* x, int64_t count, uint16_t* hi, uint16_t* lo) {
  for (int64_t i = 0; i < count; ++i) {
    const uint16_t h = F32ToBf16(x[i]);
    hi[i] = h;
    if (lo != nullptr) lo[i] = F32ToBf16(x[i] - Bf16ToF32(h));
  }
}

SplitBf16Fn SplitBf16ForIsa(GemvIsa isa) {
  return isa == GemvIsa::kAvx512 ? &SplitBf16Avx512 : &SplitBf16Scalar;
}

bool GemvIsaSupported(GemvIsa isa) {
  switch (isa) {
    case GemvIsa::kScalar:
      return true;
    case GemvIsa::kAvx2:
#if defined(__x86_64__)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
    case GemvIsa::kAvx512:
#if defined(__x86_64__)
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
      return false;
#endif
  }
  return false;
}

GemvIsa BestGemvIsa() {
  if (GemvIsaSupported(GemvIsa::kAvx512)) return GemvIsa::kAvx512;
  if (GemvIsaSupported(GemvIsa::kAvx2)) return GemvIsa::kAvx2;
  return GemvIsa::kScalar;
}

GemvFn GemvForIsa(GemvIsa isa) {
  switch (isa) {
    case GemvIsa::kAvx512:
      return &GemvAvx512;
    case GemvIsa::kAvx2:
      return &GemvAvx2;
    case GemvIsa::kScalar:
      return &GemvScalar;
  }
  return &GemvScalar;
}

const char* GemvIsaName(GemvIsa isa) {
  switch (isa) {
    case GemvIsa::kAvx512:
      return "avx512";
    case GemvIsa::kAvx2:
      return "avx2";
    case GemvIsa::kScalar:
      return "scalar";
  }
  return "?";
}

}  // namespace tessera
