// Token sampling (see sampler.h for the definitions).
//
// Speed: a row is read from memory once (the max), then stays in L2 for the other passes, each vectorised
// (AVX-512 where the CPU has it, chosen at run time; the scalar path computes the same values). Nothing is
// sorted. A row with at most one filter (the usual request) takes one more pass (SampleFused): its weights
// are computed and summed per chunk of ids without being stored; a top-k or top-p threshold is bracketed
// beforehand by a strided sample, and only the weights inside the bracket are collected, then searched. Other
// rows (several filters, or a bracket that missed) store the weights and search each threshold the same way:
// a strided sample brackets the threshold, one pass sums the weight above the bracket and collects the
// values inside it, and the search repeats on that much smaller set until a weighted quickselect finishes
// it. A missed bracket only costs time: the search continues on the side that holds the threshold. The
// draw then walks per-chunk sums and, inside the chosen chunk, the weights themselves.
//
// The float32 exponential (Exp32, ~23 cycles per 16 lanes here) dominates: it is the floor of every random
// row.
#include "kernels/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "core/check.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized flags once inlined (the
// same as bench/roofline.cc); the warning points into the intrinsics header, so it is off for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define TESSERA_AVX512 __attribute__((target("avx512f,avx512dq")))
#endif

// Exp32 must not be contracted into fused multiply-adds (the numpy reference does separate operations).
#if defined(__clang__)
#define TESSERA_NO_FP_CONTRACT
#define TESSERA_NO_FP_CONTRACT_BODY _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define TESSERA_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#define TESSERA_NO_FP_CONTRACT_BODY
#else
#define TESSERA_NO_FP_CONTRACT
#define TESSERA_NO_FP_CONTRACT_BODY
#endif

namespace tessera {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kExpMin = -80.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kC0 = 1.9875691500e-4f;
constexpr float kC1 = 1.3981999507e-3f;
constexpr float kC2 = 8.3334519073e-3f;
constexpr float kC3 = 4.1665795894e-2f;
constexpr float kC4 = 1.6666665459e-1f;
constexpr float kC5 = 5.0000001201e-1f;
constexpr int64_t kChunk = 256;             // the draw's chunk of ids
constexpr int64_t kSelectDirect = 1024;     // candidate sets this small go straight to the quickselect
constexpr int64_t kSampleSize = 512;        // values sampled to bracket a threshold
constexpr int64_t kFusedSampleSize = 2048;  // the same for the fused pass (a tighter first bracket)

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

bool HaveAvx512() {
#if defined(__x86_64__)
  static const bool have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return have;
#else
  return false;
#endif
}

// ---- Scalar passes (the reference for the vector ones) ----

float MaxScalar(const float* l, int64_t n) {
  float m = -kInf;
  for (int64_t i = 0; i < n; ++i) m = l[i] > m ? l[i] : m;  // NaN never wins
  return m;
}

template <bool kStore>
double ExpWeightsScalar(const float* l, int64_t n, float m, float inv_t, float* w) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = Exp32((l[i] - m) * inv_t);
    if (kStore) w[i] = v;
    total += v;
  }
  return total;
}

// Weight of {v >= hi} into *w_hi; values in [lo, hi) appended to out (count returned); only v >= floor count.
template <bool kMass>
int64_t BracketScalar(const float* v, int64_t n, float floor, float lo, float hi, float* out, double* w_hi,
                      double* w_mid) {
  double a = 0, b = 0;
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = v[i];
    if (!(x >= floor)) continue;
    if (x >= hi) {
      a += kMass ? x : 1.0;
    } else if (x >= lo) {
      b += kMass ? x : 1.0;
      out[k++] = x;
    }
  }
  *w_hi = a;
  *w_mid = b;
  return k;
}

double ChunkSumsScalar(const float* w, int64_t n, float theta, double* sums) {
  double total = 0;
  for (int64_t c = 0; c * kChunk < n; ++c) {
    double s = 0;
    for (int64_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; ++i) s += w[i] >= theta ? w[i] : 0.0f;
    sums[c] = s;
    total += s;
  }
  return total;
}

// The fused pass of a row with at most one filter: w_i = Exp32((l_i - m) * inv_t) computed, not stored; the
// total weight into *total; per chunk of ids the weight of {w >= hi} into chunk_hi (and its sum and count
// into *w_hi / *count_hi); the weights in [lo, hi) and their ids appended to mid_w / mid_id (count returned).
struct FusedResult {
  double total = 0, w_hi = 0, count_hi = 0, w_mid = 0;
  int64_t num_mid = 0;
};

FusedResult FusedScalar(const float* l, int64_t n, float m, float inv_t, float lo, float hi, double* chunk_hi,
                        float* mid_w, int32_t* mid_id) {
  FusedResult res;
  for (int64_t c = 0; c * kChunk < n; ++c) {
    double h = 0;
    for (int64_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; ++i) {
      const float w = Exp32((l[i] - m) * inv_t);
      res.total += w;
      if (w >= hi) {
        h += w;
        res.count_hi += 1;
      } else if (w >= lo) {
        res.w_mid += w;
        mid_w[res.num_mid] = w;
        mid_id[res.num_mid++] = static_cast<int32_t>(i);
      }
    }
    chunk_hi[c] = h;
    res.w_hi += h;
  }
  return res;
}

// The logprobs' pass over raw logits: the sum of Exp32(l_i - m), the number of l_i >= lt, and the ids with
// l_i >= lo appended to ids.
struct LogprobPass {
  double sum = 0;
  int64_t at_least = 0;
  int64_t num_above = 0;
};

LogprobPass LogprobsScalar(const float* l, int64_t n, float m, float lt, float lo, int32_t* ids) {
  LogprobPass res;
  for (int64_t i = 0; i < n; ++i) {
    res.sum += Exp32(l[i] - m);
    res.at_least += l[i] >= lt;
    if (l[i] >= lo) ids[res.num_above++] = static_cast<int32_t>(i);
  }
  return res;
}

// ---- AVX-512 passes ----
#if defined(__x86_64__)

// The lanes of a vector with `left` elements left (none when left <= 0).
TESSERA_AVX512 inline __mmask16 TailMask(int64_t left) {
  if (left <= 0) return 0;
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

// Both halves of x (lanes where mask is set, else 0) added into two double accumulators.
TESSERA_AVX512 inline void AddAsDouble(__m512 x, __mmask16 mask, __m512d& a0, __m512d& a1) {
  const __m512 y = _mm512_maskz_mov_ps(mask, x);
  a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(y)));
  a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(y), 1))));
}

TESSERA_AVX512 float MaxAvx512(const float* l, int64_t n) {
  __m512 m0 = _mm512_set1_ps(-kInf), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  // max(x, acc) returns acc when x is NaN (the second operand wins on NaN).
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_ps(_mm512_loadu_ps(l + i), m0);
    m1 = _mm512_max_ps(_mm512_loadu_ps(l + i + 16), m1);
    m2 = _mm512_max_ps(_mm512_loadu_ps(l + i + 32), m2);
    m3 = _mm512_max_ps(_mm512_loadu_ps(l + i + 48), m3);
  }
  for (; i < n; i += 16) {
    m0 = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), TailMask(n - i), l + i), m0);
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}

// Exp32 on 16 lanes, with the same float32 operations (the _round_ forms are never contracted).
TESSERA_AVX512 inline __m512 Exp32x16(__m512 x) {
  constexpr int kR = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __mmask16 ok = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMin), _CMP_GE_OQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_round_ps(x, _mm512_set1_ps(kLog2e), kR), kR);
  __m512 r = _mm512_sub_round_ps(x, _mm512_mul_round_ps(n, _mm512_set1_ps(kLn2Hi), kR), kR);
  r = _mm512_sub_round_ps(r, _mm512_mul_round_ps(n, _mm512_set1_ps(kLn2Lo), kR), kR);
  __m512 y = _mm512_set1_ps(kC0);
  y = _mm512_add_round_ps(_mm512_mul_round_ps(y, r, kR), _mm512_set1_ps(kC1), kR);
  y = _mm512_add_round_ps(_mm512_mul_round_ps(y, r, kR), _mm512_set1_ps(kC2), kR);
  y = _mm512_add_round_ps(_mm512_mul_round_ps(y, r, kR), _mm512_set1_ps(kC3), kR);
  y = _mm512_add_round_ps(_mm512_mul_round_ps(y, r, kR), _mm512_set1_ps(kC4), kR);
  y = _mm512_add_round_ps(_mm512_mul_round_ps(y, r, kR), _mm512_set1_ps(kC5), kR);
  y = _mm512_add_round_ps(_mm512_mul_round_ps(y, _mm512_mul_round_ps(r, r, kR), kR), r, kR);
  y = _mm512_add_round_ps(y, _mm512_set1_ps(1.0f), kR);
  // y * 2^n, exact for n in [-116, 0] (the lanes that pass `ok`; the others are zeroed).
  return _mm512_maskz_scalef_round_ps(ok, y, n, kR);
}

template <bool kStore>
TESSERA_AVX512 double ExpWeightsAvx512(const float* l, int64_t n, float m, float inv_t, float* w) {
  constexpr int kR = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  constexpr int kU = 4;  // vectors in flight
  const __m512 vm = _mm512_set1_ps(m), vt = _mm512_set1_ps(inv_t);
  __m512d a[kU][2];
  for (int j = 0; j < kU; ++j) a[j][0] = a[j][1] = _mm512_setzero_pd();
  for (int64_t i = 0; i < n; i += 16 * kU) {
#pragma GCC unroll 4
    for (int j = 0; j < kU; ++j) {
      const __mmask16 mask = TailMask(n - i - 16 * j);
      const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), mask, l + i + 16 * j);
      const __m512 y = Exp32x16(_mm512_mul_round_ps(_mm512_sub_round_ps(x, vm, kR), vt, kR));
      if (kStore) _mm512_mask_storeu_ps(w + i + 16 * j, mask, y);
      AddAsDouble(y, mask, a[j][0], a[j][1]);
    }
  }
  return _mm512_reduce_add_pd(
      _mm512_add_pd(_mm512_add_pd(_mm512_add_pd(a[0][0], a[0][1]), _mm512_add_pd(a[1][0], a[1][1])),
                    _mm512_add_pd(_mm512_add_pd(a[2][0], a[2][1]), _mm512_add_pd(a[3][0], a[3][1]))));
}

template <bool kMass>
TESSERA_AVX512 int64_t BracketAvx512(const float* v, int64_t n, float floor, float lo, float hi, float* out,
                                     double* w_hi, double* w_mid) {
  const __m512 vf = _mm512_set1_ps(floor), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  __m512d h0 = _mm512_setzero_pd(), h1 = h0, m0 = h0, m1 = h0;
  int64_t count_hi = 0, k = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(std::nanf("")), TailMask(n - i), v + i);
    const __mmask16 ok = _mm512_cmp_ps_mask(x, vf, _CMP_GE_OQ);
    const __mmask16 in_hi = _mm512_mask_cmp_ps_mask(ok, x, vhi, _CMP_GE_OQ);
    const __mmask16 in_mid = _mm512_mask_cmp_ps_mask(ok & ~in_hi, x, vlo, _CMP_GE_OQ);
    if (kMass) {
      AddAsDouble(x, in_hi, h0, h1);
      AddAsDouble(x, in_mid, m0, m1);
    } else {
      count_hi += __builtin_popcount(in_hi);
    }
    _mm512_storeu_ps(out + k, _mm512_maskz_compress_ps(in_mid, x));  // out has 16 floats of slack
    k += __builtin_popcount(in_mid);
  }
  if (kMass) {
    *w_hi = _mm512_reduce_add_pd(_mm512_add_pd(h0, h1));
    *w_mid = _mm512_reduce_add_pd(_mm512_add_pd(m0, m1));
  } else {
    *w_hi = static_cast<double>(count_hi);
    *w_mid = static_cast<double>(k);
  }
  return k;
}

TESSERA_AVX512 double ChunkSumsAvx512(const float* w, int64_t n, float theta, double* sums) {
  const __m512 vt = _mm512_set1_ps(theta);
  double total = 0;
  for (int64_t c = 0; c * kChunk < n; ++c) {
    __m512d a0 = _mm512_setzero_pd(), a1 = a0;
    for (int64_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; i += 16) {
      const __mmask16 mask = TailMask(e - i);
      const __m512 x = _mm512_maskz_loadu_ps(mask, w + i);
      AddAsDouble(x, mask & _mm512_cmp_ps_mask(x, vt, _CMP_GE_OQ), a0, a1);
    }
    sums[c] = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    total += sums[c];
  }
  return total;
}

TESSERA_AVX512 FusedResult FusedAvx512(const float* l, int64_t n, float m, float inv_t, float lo, float hi,
                                       double* chunk_hi, float* mid_w, int32_t* mid_id) {
  constexpr int kR = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  constexpr int kU = 4;  // vectors in flight: Exp32 is one long dependency chain per vector
  const __m512 vm = _mm512_set1_ps(m), vt = _mm512_set1_ps(inv_t);
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512d t[kU][2], b[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
  for (int j = 0; j < kU; ++j) t[j][0] = t[j][1] = _mm512_setzero_pd();
  FusedResult res;
  int64_t count_hi = 0, k = 0;
  for (int64_t c = 0; c * kChunk < n; ++c) {
    __m512d a[kU][2];
    for (int j = 0; j < kU; ++j) a[j][0] = a[j][1] = _mm512_setzero_pd();
    for (int64_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; i += 16 * kU) {
      __m512 w[kU];
      __mmask16 mask[kU];
#pragma GCC unroll 4
      for (int j = 0; j < kU; ++j) {
        mask[j] = TailMask(e - i - 16 * j);
        const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), mask[j], l + i + 16 * j);
        w[j] = Exp32x16(_mm512_mul_round_ps(_mm512_sub_round_ps(x, vm, kR), vt, kR));  // 0 off the mask
      }
#pragma GCC unroll 4
      for (int j = 0; j < kU; ++j) {
        AddAsDouble(w[j], mask[j], t[j][0], t[j][1]);
        const __mmask16 in_hi = _mm512_mask_cmp_ps_mask(mask[j], w[j], vhi, _CMP_GE_OQ);
        const __mmask16 in_mid = _mm512_mask_cmp_ps_mask(mask[j] & ~in_hi, w[j], vlo, _CMP_GE_OQ);
        AddAsDouble(w[j], in_hi, a[j][0], a[j][1]);
        count_hi += __builtin_popcount(in_hi);
        if (in_mid != 0) {
          AddAsDouble(w[j], in_mid, b[0], b[1]);
          const __m512i ids = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(i + 16 * j)));
          _mm512_storeu_ps(mid_w + k, _mm512_maskz_compress_ps(in_mid, w[j]));  // 16 floats of slack
          _mm512_storeu_si512(mid_id + k, _mm512_maskz_compress_epi32(in_mid, ids));
          k += __builtin_popcount(in_mid);
        }
      }
    }
    chunk_hi[c] = _mm512_reduce_add_pd(
        _mm512_add_pd(_mm512_add_pd(_mm512_add_pd(a[0][0], a[0][1]), _mm512_add_pd(a[1][0], a[1][1])),
                      _mm512_add_pd(_mm512_add_pd(a[2][0], a[2][1]), _mm512_add_pd(a[3][0], a[3][1]))));
    res.w_hi += chunk_hi[c];
  }
  res.total = _mm512_reduce_add_pd(
      _mm512_add_pd(_mm512_add_pd(_mm512_add_pd(t[0][0], t[0][1]), _mm512_add_pd(t[1][0], t[1][1])),
                    _mm512_add_pd(_mm512_add_pd(t[2][0], t[2][1]), _mm512_add_pd(t[3][0], t[3][1]))));
  res.count_hi = static_cast<double>(count_hi);
  res.w_mid = _mm512_reduce_add_pd(_mm512_add_pd(b[0], b[1]));
  res.num_mid = k;
  return res;
}

TESSERA_AVX512 LogprobPass LogprobsAvx512(const float* l, int64_t n, float m, float lt, float lo,
                                          int32_t* ids) {
  constexpr int kR = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 vm = _mm512_set1_ps(m), vlt = _mm512_set1_ps(lt), vlo = _mm512_set1_ps(lo);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512d t0 = _mm512_setzero_pd(), t1 = t0;
  LogprobPass res;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = TailMask(n - i);
    const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), mask, l + i);
    AddAsDouble(Exp32x16(_mm512_sub_round_ps(x, vm, kR)), mask, t0, t1);
    res.at_least += __builtin_popcount(_mm512_mask_cmp_ps_mask(mask, x, vlt, _CMP_GE_OQ));
    const __mmask16 above = _mm512_mask_cmp_ps_mask(mask, x, vlo, _CMP_GE_OQ);
    if (above != 0) {
      const __m512i id = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(i)));
      _mm512_storeu_si512(ids + res.num_above, _mm512_maskz_compress_epi32(above, id));  // 16 of slack
      res.num_above += __builtin_popcount(above);
    }
  }
  res.sum = _mm512_reduce_add_pd(_mm512_add_pd(t0, t1));
  return res;
}

#endif  // __x86_64__

// ---- Dispatch ----

LogprobPass LogprobsPass(const float* l, int64_t n, float m, float lt, float lo, int32_t* ids) {
#if defined(__x86_64__)
  if (HaveAvx512()) return LogprobsAvx512(l, n, m, lt, lo, ids);
#endif
  return LogprobsScalar(l, n, m, lt, lo, ids);
}

FusedResult Fused(const float* l, int64_t n, float m, float inv_t, float lo, float hi, double* chunk_hi,
                  float* mid_w, int32_t* mid_id) {
#if defined(__x86_64__)
  if (HaveAvx512()) return FusedAvx512(l, n, m, inv_t, lo, hi, chunk_hi, mid_w, mid_id);
#endif
  return FusedScalar(l, n, m, inv_t, lo, hi, chunk_hi, mid_w, mid_id);
}

float MaxOf(const float* l, int64_t n) {
#if defined(__x86_64__)
  if (HaveAvx512()) return MaxAvx512(l, n);
#endif
  return MaxScalar(l, n);
}

// Sum of Exp32((l_i - m) * inv_t), and the values into w when kStore.
template <bool kStore>
double ExpWeights(const float* l, int64_t n, float m, float inv_t, float* w) {
#if defined(__x86_64__)
  if (HaveAvx512()) return ExpWeightsAvx512<kStore>(l, n, m, inv_t, w);
#endif
  return ExpWeightsScalar<kStore>(l, n, m, inv_t, w);
}

template <bool kMass>
int64_t Bracket(const float* v, int64_t n, float floor, float lo, float hi, float* out, double* w_hi,
                double* w_mid) {
#if defined(__x86_64__)
  if (HaveAvx512()) return BracketAvx512<kMass>(v, n, floor, lo, hi, out, w_hi, w_mid);
#endif
  return BracketScalar<kMass>(v, n, floor, lo, hi, out, w_hi, w_mid);
}

double ChunkSums(const float* w, int64_t n, float theta, double* sums) {
#if defined(__x86_64__)
  if (HaveAvx512()) return ChunkSumsAvx512(w, n, theta, sums);
#endif
  return ChunkSumsScalar(w, n, theta, sums);
}

// ---- Threshold search ----

template <bool kMass>
inline double WeightOf(float x) {
  return kMass ? static_cast<double>(x) : 1.0;
}

// The largest value t among a[0, m) with weight({a >= t}) >= need (the smallest value when the set's whole
// weight falls short, by rounding). Permutes a. m >= 1.
template <bool kMass>
float WeightedQuickselect(float* a, int64_t m, double need) {
  while (true) {
    if (m <= 32) {
      std::sort(a, a + m, [](float x, float y) { return x > y; });
      double acc = 0;
      for (int64_t i = 0; i < m; ++i) {
        acc += WeightOf<kMass>(a[i]);
        // Equal values enter together: the threshold is a value, every tie of it is kept.
        if (acc >= need && (i + 1 == m || a[i + 1] != a[i])) return a[i];
      }
      return a[m - 1];
    }
    float p0 = a[0], p1 = a[m / 2], p2 = a[m - 1];
    if (p0 > p1) std::swap(p0, p1);
    if (p1 > p2) std::swap(p1, p2);
    if (p0 > p1) std::swap(p0, p1);
    const float pivot = p1;
    // Three-way partition: [0, gt) > pivot, [gt, lt) == pivot, [lt, m) < pivot.
    int64_t gt = 0, i = 0, lt = m;
    double w_gt = 0, w_eq = 0;
    while (i < lt) {
      const float x = a[i];
      if (x > pivot) {
        w_gt += WeightOf<kMass>(x);
        std::swap(a[gt++], a[i++]);
      } else if (x < pivot) {
        std::swap(a[i], a[--lt]);
      } else {
        w_eq += WeightOf<kMass>(x);
        ++i;
      }
    }
    if (w_gt >= need && gt > 0) {
      m = gt;
    } else if (w_gt + w_eq >= need || lt == m) {
      return pivot;
    } else {
      need -= w_gt + w_eq;
      a += lt;  // a stays a permutation of the input (BracketFromSample selects twice)
      m -= lt;
    }
  }
}

// A bracket [*lo, *hi) expected to hold the threshold of a set whose fraction f of the weight lies above it,
// from a sample: values[0, ns) (reordered) each standing for `count` elements of the set, and, when
// head_count > 0, `head` (>= every value) standing for head_count elements. Leaves *lo / *hi alone where the
// bracket is open on that side. No sort: two weighted quickselects.
template <bool kMass>
void BracketFromSample(float* values, int64_t ns, double count, float head, double head_count, double f,
                       float* lo, float* hi) {
  if (ns == 0) return;
  f = std::clamp(f, 0.0, 1.0);
  double values_total = 0;
  for (int64_t j = 0; j < ns; ++j) values_total += WeightOf<kMass>(values[j]);
  const double head_weight = head_count > 0 ? WeightOf<kMass>(head) * head_count : 0.0;
  const double total = values_total * count + head_weight;
  const double delta =
      4.0 * std::sqrt(f * (1.0 - f) / static_cast<double>(ns)) + 2.0 / static_cast<double>(ns);
  // The largest sampled value with at least `need` of the sample's weight at or above it.
  auto at = [&](double need) {
    if (head_count > 0 && head_weight >= need) return head;
    return WeightedQuickselect<kMass>(values, ns, (need - head_weight) / count);
  };
  if (f - delta > 0) *hi = at((f - delta) * total);
  if (f + delta < 1) *lo = at((f + delta) * total);
  if (*lo > *hi) *lo = *hi;
}

// The largest value t among {v_i >= floor} (i < n) with weight({v >= t, v >= floor}) >= need, where the
// weight is the value itself (kMass; values must be >= 0) or 1 (count). `total` = the weight of
// {v >= floor} (a hint for the sample: only the speed depends on it). v may be the scratch's values_a or
// values_b. The smallest eligible value when need exceeds the total; floor when nothing is eligible.
template <bool kMass>
float SelectThreshold(const float* v, int64_t n, float floor, double need, double total, SampleScratch& s) {
  TESSERA_CHECK(need > 0);
  float* const buf_a = s.values_a.data();
  float* const buf_b = s.values_b.data();
  float fallback = floor;  // the smallest value known eligible
  while (true) {
    float* out = v == buf_a ? buf_b : buf_a;
    if (n <= kSelectDirect) {
      int64_t m = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (v[i] >= floor) out[m++] = v[i];
      }
      return m == 0 ? fallback : WeightedQuickselect<kMass>(out, m, need);
    }
    // Bracket the threshold with a strided sample: hi should have less than `need` above it, lo more.
    float sample[kSampleSize];
    int64_t ns = 0;
    const int64_t stride = n / kSampleSize;
    for (int64_t j = 0; j < kSampleSize; ++j) {
      const float x = v[j * stride + stride / 2];
      if (x >= floor) sample[ns++] = x;
    }
    float lo = floor, hi = kInf;
    BracketFromSample<kMass>(sample, ns, 1.0, 0.0f, 0.0, total > 0 ? need / total : 1.0, &lo, &hi);
    double w_hi = 0, w_mid = 0;
    int64_t m = Bracket<kMass>(v, n, floor, lo, hi, out, &w_hi, &w_mid);
    if (w_hi >= need && w_hi > 0) {  // the threshold is >= hi: continue on {v >= hi}
      // hi = NaN: no value compares >= it, so everything >= lo is collected.
      m = Bracket<kMass>(v, n, floor, hi, std::nanf(""), out, &w_hi, &w_mid);
      total = w_mid;
      fallback = hi;
    } else if (w_hi + w_mid >= need) {  // inside the bracket
      need -= w_hi;
      total = w_mid;
      fallback = lo;
    } else {  // below lo: continue on {floor <= v < lo}
      need -= w_hi + w_mid;
      m = Bracket<kMass>(v, n, floor, floor, lo, out, &w_hi, &w_mid);
      if (m == 0) return lo;  // rounding: the whole set falls short
      total = w_mid;
    }
    if (m == 0) return fallback;
    if (m == n) return WeightedQuickselect<kMass>(out, m, need);  // no progress (many equal values)
    v = out;
    n = m;
    floor = -kInf;  // every collected value is eligible
  }
}

// The weight of {v >= floor}.
template <bool kMass>
double WeightAtLeast(const float* v, int64_t n, float floor, SampleScratch& s) {
  double w_hi, w_mid;
  Bracket<kMass>(v, n, floor, -kInf, -kInf, s.values_a.data(), &w_hi, &w_mid);
  return w_hi;
}

// ---- Steps of SampleRow ----

bool ChangesLogits(const SamplingRow& row) {
  const bool repetition = row.repetition_penalty > 0.0f && row.repetition_penalty != 1.0f;
  const bool generated = row.num_tokens > row.num_prompt_tokens;
  return row.num_banned_ids > 0 || row.num_logit_bias > 0 ||
         (row.num_tokens > 0 &&
          (repetition || (generated && (row.presence_penalty != 0.0f || row.frequency_penalty != 0.0f))));
}

// Step 1 of sampler.h into s.logits; returns it.
const float* ProcessLogits(const float* logits, int64_t vocab, const SamplingRow& row, SampleScratch& s) {
  s.logits.assign(logits, logits + vocab);
  float* l = s.logits.data();
  auto in_range = [vocab](int64_t id) { return id >= 0 && id < vocab; };
  for (int64_t i = 0; i < row.num_banned_ids; ++i) {
    if (in_range(row.banned_ids[i])) l[row.banned_ids[i]] = -kInf;
  }
  for (int64_t i = 0; i < row.num_logit_bias; ++i) {
    if (in_range(row.logit_bias[i].token)) l[row.logit_bias[i].token] += row.logit_bias[i].bias;
  }
  if (row.num_tokens <= 0 || row.tokens == nullptr) return l;
  const int64_t num_prompt = std::clamp<int64_t>(row.num_prompt_tokens, 0, row.num_tokens);
  const float p = row.repetition_penalty;
  if (p > 0.0f && p != 1.0f) {
    s.ids.assign(row.tokens, row.tokens + row.num_tokens);
    std::sort(s.ids.begin(), s.ids.end());
    const auto end = std::unique(s.ids.begin(), s.ids.end());
    for (auto it = s.ids.begin(); it != end; ++it) {
      if (!in_range(*it)) continue;
      float& x = l[*it];
      x = x > 0.0f ? x / p : x * p;
    }
  }
  if (row.presence_penalty != 0.0f || row.frequency_penalty != 0.0f) {
    s.ids.assign(row.tokens + num_prompt, row.tokens + row.num_tokens);
    std::sort(s.ids.begin(), s.ids.end());
    for (size_t i = 0; i < s.ids.size();) {
      size_t j = i;
      while (j < s.ids.size() && s.ids[j] == s.ids[i]) ++j;
      if (in_range(s.ids[i])) {
        float& x = l[s.ids[i]];
        x = x - row.frequency_penalty * static_cast<float>(j - i);
        x = x - row.presence_penalty;
      }
      i = j;
    }
  }
  return l;
}

// The first index of the maximum (m = MaxOf(l)); 0 when every value is NaN.
int32_t FirstIndexOf(const float* l, int64_t vocab, float m) {
  for (int64_t i = 0; i < vocab; ++i) {
    if (l[i] == m) return static_cast<int32_t>(i);
  }
  return 0;
}

// Step 4: the draw over K = {w >= theta} in id order.
int32_t Draw(const float* w, int64_t vocab, float theta, double u, SampleScratch& s) {
  double* sums = s.chunk_sums.data();
  const double total = ChunkSums(w, vocab, theta, sums);
  const double x = u * total;
  double acc = 0;
  int64_t last_kept = -1;
  for (int64_t c = 0; c * kChunk < vocab; ++c) {
    if (acc + sums[c] > x) {
      for (int64_t i = c * kChunk, e = std::min(vocab, i + kChunk); i < e; ++i) {
        if (w[i] >= theta && w[i] > 0.0f) {
          acc += w[i];
          last_kept = i;
          if (acc > x) return static_cast<int32_t>(i);
        }
      }
      // Only rounding (the chunk's vector sum against the walk's) leads here: take the chunk's last.
      if (last_kept >= 0) return static_cast<int32_t>(last_kept);
    }
    acc += sums[c];
  }
  // x >= total (u * total rounded up): the last kept token with weight.
  for (int64_t i = vocab - 1; i >= 0; --i) {
    if (w[i] >= theta && w[i] > 0.0f) return static_cast<int32_t>(i);
  }
  return 0;
}

// Step 4 when the weights are not stored: the kept weight per chunk is in s.chunk_sums; the walk inside the
// chosen chunk recomputes its weights (bit-identical to the fused pass's).
int32_t DrawRecomputing(const float* l, int64_t vocab, float m, float inv_t, float theta, double u,
                        const SampleScratch& s) {
  const double* sums = s.chunk_sums.data();
  const int64_t chunks = (vocab + kChunk - 1) / kChunk;
  double total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += sums[c];
  const double x = u * total;
  double acc = 0;
  int64_t last_kept = -1;
  for (int64_t c = 0; c < chunks; ++c) {
    if (acc + sums[c] > x || c + 1 == chunks) {
      for (int64_t i = c * kChunk, e = std::min(vocab, i + kChunk); i < e; ++i) {
        const float w = Exp32((l[i] - m) * inv_t);
        if (w >= theta && w > 0.0f) {
          acc += w;
          last_kept = i;
          if (acc > x) return static_cast<int32_t>(i);
        }
      }
      if (last_kept >= 0) return static_cast<int32_t>(last_kept);  // rounding only
    } else {
      acc += sums[c];
    }
  }
  return static_cast<int32_t>(std::max<int64_t>(last_kept, 0));
}

void EnsureScratch(int64_t vocab, SampleScratch& s) {
  if (static_cast<int64_t>(s.weights.size()) < vocab + 16) {
    s.weights.resize(vocab + 16);
    s.mid_ids.resize(vocab + 16);
    s.values_a.resize(vocab + 16);
    s.values_b.resize(vocab + 16);
    s.chunk_sums.resize(vocab / kChunk + 1);
  }
}

// Steps 3 and 4 in one pass over the logits for a row with at most one filter (min-p, top-k or top-p), the
// usual request: the filter's threshold is known (min-p) or bracketed by a sample beforehand (top-k, top-p),
// and the pass collects only the weights inside the bracket. nullopt when the row has more filters or the
// bracket missed (then the general path runs; same answer).
std::optional<int32_t> SampleFused(const float* l, int64_t vocab, float m, const SamplingRow& row,
                                   SampleScratch& s) {
  const bool min_p = row.min_p > 0.0f;
  const bool top_k = row.top_k > 0 && row.top_k < vocab;
  const bool top_p = row.top_p < 1.0f;
  if (min_p + top_k + top_p > 1) return std::nullopt;
  EnsureScratch(vocab, s);
  const float inv_t = 1.0f / row.temperature;
  float lo = 0.0f, hi = 0.0f;  // no filter: every weight is "high" (kept)
  if (min_p) lo = hi = std::min(row.min_p, 1.0f);
  if (top_p && row.top_p <= 0.0f) lo = hi = 1.0f;  // the most likely token and its ties
  const bool search = top_k || (top_p && row.top_p > 0.0f);
  if (search) {
    // The sample: strided weights (each standing for `stride` ids, exp vectorised) and the maximum (w = 1,
    // itself only), which keeps peaked distributions bracketed.
    float picked[kFusedSampleSize];
    float sample[kFusedSampleSize];
    int64_t ns = 0;
    const int64_t stride = std::max<int64_t>(1, vocab / kFusedSampleSize);
    for (int64_t i = stride / 2; i < vocab && ns < kFusedSampleSize; i += stride) picked[ns++] = l[i];
    ExpWeights<true>(picked, ns, m, inv_t, sample);
    lo = 0.0f;
    hi = kInf;
    const double count = static_cast<double>(stride);
    if (top_k) {
      const double f = static_cast<double>(row.top_k) / static_cast<double>(vocab);
      BracketFromSample<false>(sample, ns, count, 1.0f, 1.0, f, &lo, &hi);
    } else {
      BracketFromSample<true>(sample, ns, count, 1.0f, 1.0, row.top_p, &lo, &hi);
    }
  }
  float* mid_w = s.weights.data();
  int32_t* mid_id = s.mid_ids.data();
  const FusedResult r = Fused(l, vocab, m, inv_t, lo, hi, s.chunk_sums.data(), mid_w, mid_id);
  float theta = hi;
  if (search) {
    const double w_mid = top_k ? static_cast<double>(r.num_mid) : r.w_mid;
    const double above = top_k ? r.count_hi : r.w_hi;
    const double need = top_k ? static_cast<double>(row.top_k) : static_cast<double>(row.top_p) * r.total;
    if ((above >= need && above > 0) || above + w_mid < need || r.num_mid == 0) return std::nullopt;
    theta = top_k ? SelectThreshold<false>(mid_w, r.num_mid, -kInf, need - above, w_mid, s)
                  : SelectThreshold<true>(mid_w, r.num_mid, -kInf, need - above, w_mid, s);
    double* sums = s.chunk_sums.data();
    for (int64_t j = 0; j < r.num_mid; ++j) {
      if (mid_w[j] >= theta) sums[mid_id[j] / kChunk] += mid_w[j];
    }
  }
  return DrawRecomputing(l, vocab, m, inv_t, theta, SampleUniform(row.seed, row.step), s);
}

}  // namespace

TESSERA_NO_FP_CONTRACT float Exp32(float x) {
  TESSERA_NO_FP_CONTRACT_BODY
  if (!(x >= kExpMin)) return 0.0f;
  // rint (to nearest, ties to even) by the 1.5 * 2^23 trick: exact for |x * log2e| < 2^22 (here <= 116).
  const float n = (x * kLog2e + 0x1.8p23f) - 0x1.8p23f;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float y = kC0;
  y = y * r + kC1;
  y = y * r + kC2;
  y = y * r + kC3;
  y = y * r + kC4;
  y = y * r + kC5;
  const float r2 = r * r;
  y = y * r2 + r;
  y = y + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-116, 0]
  float pow2;
  std::memcpy(&pow2, &bits, sizeof(pow2));
  return y * pow2;
}

void Exp32Row(const float* x, int64_t n, float* out) {
  ExpWeights<true>(x, n, 0.0f, 1.0f, out);  // (x - 0) * 1 = x exactly
}

double SampleUniform(uint64_t seed, uint64_t step) {
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ SplitMix64(step ^ 0x5851f42d4c957f2dull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

int32_t SampleRow(const float* logits, int64_t vocab, const SamplingRow& row, SampleScratch& scratch,
                  SampleLogprobs* logprobs) {
  TESSERA_CHECK(vocab > 0);
  const float* l = ChangesLogits(row) ? ProcessLogits(logits, vocab, row, scratch) : logits;
  const float m = MaxOf(l, vocab);
  int32_t token;
  if (!(row.temperature >= kGreedyBelowTemperature) || !(m > -kInf) || m == kInf) {
    token = FirstIndexOf(l, vocab, m);
  } else if (std::optional<int32_t> fast = SampleFused(l, vocab, m, row, scratch)) {
    token = *fast;
  } else {
    EnsureScratch(vocab, scratch);
    float* w = scratch.weights.data();
    const double total = ExpWeights<true>(l, vocab, m, 1.0f / row.temperature, w);
    float theta = 0.0f;  // every token (weights are >= 0)
    double kept_total = total;
    if (row.min_p > 0.0f) {
      theta = std::min(row.min_p, 1.0f);
      kept_total = WeightAtLeast<true>(w, vocab, theta, scratch);
    }
    if (row.top_k > 0 && row.top_k < vocab) {
      const double count = WeightAtLeast<false>(w, vocab, theta, scratch);
      if (row.top_k < count) {
        theta = SelectThreshold<false>(w, vocab, theta, row.top_k, count, scratch);
        kept_total = WeightAtLeast<true>(w, vocab, theta, scratch);
      }
    }
    if (row.top_p < 1.0f) {
      const double need = static_cast<double>(row.top_p) * kept_total;
      // need <= 0 (top_p <= 0): the most likely token and its ties (w = 1, the largest weight).
      theta = need > 0 ? SelectThreshold<true>(w, vocab, theta, need, kept_total, scratch) : 1.0f;
    }
    token = Draw(w, vocab, theta, SampleUniform(row.seed, row.step), scratch);
  }
  if (logprobs != nullptr && row.top_logprobs >= 0) {
    ComputeTokenLogprobs(logits, vocab, token, row.top_logprobs, scratch, *logprobs);
  }
  return token;
}

void ComputeTokenLogprobs(const float* logits, int64_t vocab, int32_t token, int top_n,
                          SampleScratch& scratch, SampleLogprobs& out) {
  TESSERA_CHECK(vocab > 0 && vocab < (int64_t{1} << 31));
  TESSERA_CHECK(token >= 0 && token < vocab);
  EnsureScratch(vocab, scratch);
  const float m = MaxOf(logits, vocab);
  const float lt = logits[token];
  const int n = std::clamp(top_n, 0, kMaxTopLogprobs);
  // The top n are among the ids with a logit >= lo: a bracket from a strided sample (all ids when small).
  float lo = -kInf;
  if (n > 0 && vocab > kSelectDirect) {
    float sample[kSampleSize];
    const int64_t stride = vocab / kSampleSize;
    int64_t ns = 0;
    for (int64_t j = 0; j < kSampleSize; ++j) {
      const float x = logits[j * stride + stride / 2];
      if (x == x) sample[ns++] = x;  // NaN never counts
    }
    float hi = kInf;
    const double f = static_cast<double>(n) / static_cast<double>(vocab);
    BracketFromSample<false>(sample, ns, static_cast<double>(stride), 0.0f, 0.0, f, &lo, &hi);
  }
  int32_t* ids = scratch.mid_ids.data();
  LogprobPass pass = LogprobsPass(logits, vocab, m, lt, n > 0 ? lo : kInf, ids);
  if (pass.num_above < n && lo > -kInf) pass = LogprobsPass(logits, vocab, m, lt, -kInf, ids);  // missed
  const double lse = static_cast<double>(m) + std::log(pass.sum);
  out.token = token;
  out.logprob = static_cast<double>(lt) - lse;
  out.rank = std::max<int64_t>(1, pass.at_least);  // itself included
  const int64_t k = std::min<int64_t>(n, pass.num_above);
  std::partial_sort(ids, ids + k, ids + pass.num_above, [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int64_t i = 0; i < k; ++i) {
    out.top_ids[i] = ids[i];
    out.top_logprobs[i] = static_cast<double>(logits[ids[i]]) - lse;
  }
  out.num_top = static_cast<int>(k);
}

}  // namespace tessera
