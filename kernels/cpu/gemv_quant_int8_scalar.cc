// Portable parts of the int8-activation GEMV: the activation quantizer, the scalar kernel and the CPU check.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/cpu/gemv_quant_int8.h"

namespace tessera {
namespace {

// The exact integer dot of one weight block with one activation block.
template <QuantType T>
inline int32_t BlockDot(const uint8_t* b, const int8_t* xq) {
  int32_t s = 0;
  if constexpr (T == QuantType::kQ8_0) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) s += int32_t{qs[j]} * xq[j];
  } else {
    constexpr int kQs = T == QuantType::kQ4_0 ? 2 : 4;
    constexpr int kOffset = T == QuantType::kQ4_0 ? 8 : 0;
    const uint8_t* qs = b + kQs;
    for (int j = 0; j < 16; ++j) s += ((qs[j] & 0x0F) - kOffset) * int32_t{xq[j]};
    for (int j = 0; j < 16; ++j) s += ((qs[j] >> 4) - kOffset) * int32_t{xq[j + 16]};
  }
  return s;
}

template <QuantType T>
void Run(const GemvQuantInt8Args& a, int64_t n_begin, int64_t n_end) {
  const int64_t row_bytes = QuantRowBytes(T, a.k);
  const int64_t block_bytes = QuantBlockBytes(T);
  const int64_t blocks = a.k / kQuantBlockSize;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* w = a.w + n * row_bytes;
    for (int64_t m = 0; m < a.m; ++m) {
      const int8_t* xq = a.xq + m * a.k;
      const float* xd = a.xd + m * blocks;
      const int32_t* xsum = a.xsum + m * blocks;
      float acc = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* block = w + b * block_bytes;
        const float s = static_cast<float>(BlockDot<T>(block, xq + b * kQuantBlockSize));
        acc += s * (BlockHalf(block) * xd[b]);
        if constexpr (T == QuantType::kQ4_1)
          acc += BlockHalf(block + 2) * (xd[b] * static_cast<float>(xsum[b]));
      }
      a.y[m * a.n + n] = acc;
    }
  }
}

}  // namespace

void QuantizeActivationsInt8(const float* x, int64_t m, int64_t k, int8_t* q, float* d, int32_t* sum) {
  TESSERA_CHECK(k % kQuantBlockSize == 0);
  const int64_t blocks = m * (k / kQuantBlockSize);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kQuantBlockSize;
    float amax = 0;
    for (int j = 0; j < kQuantBlockSize; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    const float scale = amax / 127.0f;
    const float inverse = scale != 0 ? 1.0f / scale : 0.0f;
    int32_t s = 0;
    for (int j = 0; j < kQuantBlockSize; ++j) {
      const int8_t v = static_cast<int8_t>(std::roundf(xb[j] * inverse));
      q[b * kQuantBlockSize + j] = v;
      s += v;
    }
    d[b] = scale;
    sum[b] = s;
  }
}

void GemvQuantInt8Scalar(const GemvQuantInt8Args& a, int64_t n_begin, int64_t n_end) {
  TESSERA_CHECK(a.k % kQuantBlockSize == 0);
  DispatchQuantType(a.type, [&]<QuantType T>() { Run<T>(a, n_begin, n_end); });
}

bool Int8VnniSupported() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

}  // namespace tessera
