// Roofline ceilings (see roofline.h).
#include "bench/roofline.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu/onednn_matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

// Sums n floats (n a multiple of 64) read as four concurrent streams, one per quarter of the range: several
// streams per core keep more misses in flight, as the GEMV kernels' four weight rows do.
__attribute__((target("avx512f"))) double SumAvx512(const float* p, int64_t n) {
  const int64_t q = n / 4 / 16 * 16;
  const float* s0 = p;
  const float* s1 = p + q;
  const float* s2 = p + 2 * q;
  const float* s3 = p + 3 * q;
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
         a3 = _mm512_setzero_ps();
  for (int64_t i = 0; i < q; i += 16) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(s0 + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(s1 + i));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(s2 + i));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(s3 + i));
  }
  double rest = 0;
  for (int64_t i = 4 * q; i < n; ++i) rest += p[i];
  return rest + _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

double SumPortable(const float* p, int64_t n) {
  float acc[16] = {};
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) acc[l] += p[i + l];
  }
  double s = 0;
  for (float a : acc) s += a;
  return s;
}

}  // namespace

double MeasureReadBandwidthGBps(int num_threads) {
  const int64_t bytes = int64_t{1} << 30;
  const int64_t floats = bytes / 4;
  float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (buf == nullptr) return 0.0;
  ThreadPool pool(num_threads);
  // First touch from the threads that will read (and fault every page in before timing).
  pool.ParallelForStatic(floats, 1024, [&](int64_t b, int64_t e) { std::memset(buf + b, 0, (e - b) * 4); });
  const bool avx512 = __builtin_cpu_supports("avx512f");
  std::vector<double> sums(num_threads);
  double best = 0;
  for (int run = 0; run < 10; ++run) {
    const auto start = Clock::now();
    pool.ParallelForStatic(floats, 1024, [&](int64_t b, int64_t e) {
      const double s = avx512 ? SumAvx512(buf + b, e - b) : SumPortable(buf + b, e - b);
      sums[b * num_threads / floats] = s;  // keeps the sums alive
    });
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, bytes / seconds / 1e9);
  }
  static volatile double sink = 0;  // keeps the sums (and so the loads) alive
  for (double s : sums) sink = sink + s;
  std::free(buf);
  return best;
}

double MeasureBf16GemmPeakGflops(int num_threads) {
  auto matmul = OneDnnMatmul::Create(num_threads);
  if (!matmul.ok()) return 0.0;
  struct Shape {
    int64_t m, n, k;
  };
  double best = 0;
  for (const Shape s : {Shape{2048, 2048, 2048}, Shape{1024, 4096, 4096}, Shape{512, 8192, 2048}}) {
    std::vector<uint16_t> src(s.m * s.k, 0x3f80);  // 1.0
    std::vector<uint16_t> w(s.n * s.k, 0x3c00);    // 2^-7
    std::vector<float> dst(s.m * s.n);
    for (int run = 0; run < 4; ++run) {
      const auto start = Clock::now();
      if (!(*matmul)->Run(src.data(), w.data(), dst.data(), s.m, s.n, s.k, false).ok()) return 0.0;
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (run > 0)
        best = std::max(best, 2.0 * s.m * s.n * s.k / seconds / 1e9);  // run 0 creates the primitive
    }
  }
  return best;
}

}  // namespace tessera
