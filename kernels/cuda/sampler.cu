// NOTE: CudaBackend::Sample now launches this kernel for greedy rows only (temperature 0); random rows are
// sampled on the host by kernels/sampler.h's SampleRow, whose definition changed (Exp32 weights, kept sets
// that are weight thresholds with ties kept, an id-order draw). The random path below implements the
// previous definition and must be ported (the radix selects carry over) before random rows return here.
//
// Sampling, one 1024-thread block per row, with the previous CPU sampler's semantics:
// greedy = first index of the maximum; otherwise p_i = exp((l_i - max) / T) in fp64, top-k (ties to the lower
// id), then top-p over the top-k set, then an inverse-CDF draw with the host's SampleUniform(seed, step).
//
// Nothing is sorted. "Most likely first, ties to the lower id" is the order of (logit desc, id asc) (exp is
// monotone), so each "first element of that order whose running weight reaches X" is found by a radix select
// over the logits' 32-bit order-preserving keys (4 passes of 8 bits, histograms of weight) and a final scan
// over the ids tied on the selected logit. Weights are fixed-point integers (p * 2^s, s = 62 - bits(vocab)),
// so every sum is exact and the result does not depend on thread timing: the same row gives the same token
// on every run and in every batch. It agrees with the CPU's fp64 walk except when the draw lands within
// ~1e-12 of a cumulative boundary.
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
constexpr uint32_t kNoDigit = kBins;

__device__ __forceinline__ uint32_t OrderedKey(float f) {
  if (f == 0.0f) f = 0.0f;  // -0 and +0 are the same logit
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float KeyToFloat(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// The element set a select works in: every id, or the prefix of the order ending at (key, id).
struct Bound {
  bool all;
  uint32_t key;
  int64_t id;
  __device__ bool Contains(uint32_t k, int64_t i) const { return all || k > key || (k == key && i <= id); }
};

struct RowContext {
  const float* logits;
  int64_t vocab;
  double max_logit;
  double inv_t;
  double scale;   // 2^s
  bool by_count;  // weight 1 (top-k) instead of the probability
  __device__ uint64_t Weight(float logit) const {
    if (by_count) return 1;
    return static_cast<uint64_t>(llrint(exp((static_cast<double>(logit) - max_logit) * inv_t) * scale));
  }
};

struct Shared {
  unsigned long long hist[kBins];
  unsigned long long warp_u64[kWarps];
  unsigned long long stage[kWarps][32];
  uint64_t scan_total;
  uint32_t digit;
  uint64_t above;
  int64_t found_id;
  float best_value[kWarps];
  int64_t best_index[kWarps];
};

// Exclusive prefix sum of one value per thread; also returns the block total. Deterministic.
__device__ uint64_t BlockExclusiveScan(Shared& sh, uint64_t v, uint64_t* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint64_t incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  __syncthreads();
  if (lane == 31) sh.warp_u64[warp] = incl;
  __syncthreads();
  uint64_t warp_offset = 0, sum = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) warp_offset += sh.warp_u64[w];
    sum += sh.warp_u64[w];
  }
  *total = sum;
  return warp_offset + incl - v;
}

// The first element of the order (logit desc, id asc) within `bound` whose running weight reaches x
// (1 <= x <= the set's total). Returns its id; *prefix = the running weight including it.
__device__ int64_t Select(Shared& sh, const RowContext& row, const Bound& bound, uint64_t x,
                          uint64_t* prefix) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t prefix_bits = 0, mask = 0;
  uint64_t above = 0;  // weight of the set's elements ordered before the current candidate range
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kBins; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    for (int64_t base = 0; base < row.vocab; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      uint32_t digit = kNoDigit;
      uint64_t w = 0;
      if (i < row.vocab) {
        const float logit = row.logits[i];
        const uint32_t key = OrderedKey(logit);
        if ((key & mask) == prefix_bits && bound.Contains(key, i)) {
          digit = (key >> shift) & 0xffu;
          w = row.Weight(logit);
        }
      }
      // Warp aggregation: one shared atomic per distinct digit in the warp (integer adds: order-free).
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      sh.stage[warp][lane] = w;
      __syncwarp();
      if (lane == __ffs(peers) - 1 && digit != kNoDigit) {
        uint64_t group_sum = 0;
        for (unsigned m = peers; m != 0; m &= m - 1) group_sum += sh.stage[warp][__ffs(m) - 1];
        if (group_sum != 0) atomicAdd(&sh.hist[digit], static_cast<unsigned long long>(group_sum));
      }
      __syncwarp();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t acc = above;
      uint32_t chosen = 0;
      for (int b = kBins - 1; b >= 0; --b) {
        if (acc + sh.hist[b] >= x) {
          chosen = static_cast<uint32_t>(b);
          break;
        }
        acc += sh.hist[b];
      }
      sh.digit = chosen;
      sh.above = acc;
    }
    __syncthreads();
    prefix_bits |= sh.digit << shift;
    mask |= 0xffu << shift;
    above = sh.above;
  }
  // Every element with key == prefix_bits has the same weight; the j-th of them in id order is the answer.
  const uint64_t w_tie = row.Weight(KeyToFloat(prefix_bits));
  const uint64_t j = (x - above + w_tie - 1) / w_tie;  // >= 1
  const int64_t chunk = (row.vocab + kThreads - 1) / kThreads;
  const int64_t begin = threadIdx.x * chunk, end = min(row.vocab, begin + chunk);
  uint64_t count = 0;
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t key = OrderedKey(row.logits[i]);
    if (key == prefix_bits && bound.Contains(key, i)) ++count;
  }
  uint64_t total;
  const uint64_t before = BlockExclusiveScan(sh, count, &total);
  if (before < j && j <= before + count) {
    uint64_t seen = before;
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t key = OrderedKey(row.logits[i]);
      if (key == prefix_bits && bound.Contains(key, i) && ++seen == j) {
        sh.found_id = i;
        break;
      }
    }
  }
  __syncthreads();
  *prefix = above + j * w_tie;
  const int64_t id = sh.found_id;
  __syncthreads();
  return id;
}

__device__ uint64_t Clamp(uint64_t v, uint64_t lo, uint64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, int64_t vocab, const SampleParams* params, int32_t* out_ids) {
  __shared__ Shared sh;
  const int64_t r = blockIdx.x;
  const float* l = logits + r * vocab;
  const SampleParams sp = params[r];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  // Argmax, first index of the maximum.
  float best = -INFINITY;
  int64_t best_i = -1;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    if (best_i < 0 || l[i] > best) {  // strict: the first index wins ties
      best = l[i];
      best_i = i;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (oi >= 0 && (best_i < 0 || ov > best || (ov == best && oi < best_i))) {
      best = ov;
      best_i = oi;
    }
  }
  if (lane == 0) {
    sh.best_value[warp] = best;
    sh.best_index[warp] = best_i;
  }
  __syncthreads();
  best = sh.best_value[0];
  best_i = sh.best_index[0];
  for (int w = 1; w < kWarps; ++w) {
    const float ov = sh.best_value[w];
    const int64_t oi = sh.best_index[w];
    if (oi >= 0 && (best_i < 0 || ov > best || (ov == best && oi < best_i))) {
      best = ov;
      best_i = oi;
    }
  }
  if (best_i < 0) best_i = 0;
  if (sp.temperature <= 0.0f) {
    if (threadIdx.x == 0) out_ids[r] = static_cast<int32_t>(best_i);
    return;
  }

  int bits = 0;
  for (int64_t v = vocab; v > 0; v >>= 1) ++bits;
  RowContext row{l,
                 vocab,
                 static_cast<double>(best),
                 1.0 / static_cast<double>(sp.temperature),
                 ldexp(1.0, 62 - bits),
                 false};
  const bool use_top_k = sp.top_k > 0 && sp.top_k < vocab;
  const bool use_top_p = sp.top_p < 1.0f;

  if (!use_top_k && !use_top_p) {  // plain softmax: the running weight in id order
    const int64_t chunk = (vocab + kThreads - 1) / kThreads;
    const int64_t begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
    uint64_t local = 0;
    for (int64_t i = begin; i < end; ++i) local += row.Weight(l[i]);
    uint64_t total;
    const uint64_t before = BlockExclusiveScan(sh, local, &total);
    const uint64_t x = Clamp(static_cast<uint64_t>(sp.uniform * static_cast<double>(total)) + 1, 1, total);
    if (before < x && x <= before + local) {
      uint64_t cum = before;
      for (int64_t i = begin; i < end; ++i) {
        cum += row.Weight(l[i]);
        if (cum >= x) {
          out_ids[r] = static_cast<int32_t>(i);
          break;
        }
      }
    }
    return;
  }

  Bound kept{true, 0, 0};
  uint64_t kept_total = 0;
  if (use_top_k) {
    row.by_count = true;
    uint64_t unused;
    kept.id = Select(sh, row, kept, static_cast<uint64_t>(sp.top_k), &unused);
    kept.key = OrderedKey(l[kept.id]);
    kept.all = false;
    row.by_count = false;
  }
  {  // total weight of the kept set
    uint64_t local = 0;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      if (kept.Contains(OrderedKey(l[i]), i)) local += row.Weight(l[i]);
    }
    BlockExclusiveScan(sh, local, &kept_total);
  }
  if (use_top_p) {
    const double needed = static_cast<double>(sp.top_p) * static_cast<double>(kept_total);
    const uint64_t x = Clamp(static_cast<uint64_t>(ceil(needed > 0 ? needed : 0)), 1, kept_total);
    uint64_t prefix;
    const int64_t id = Select(sh, row, kept, x, &prefix);
    kept = Bound{false, OrderedKey(l[id]), id};
    kept_total = prefix;
  }
  const uint64_t x =
      Clamp(static_cast<uint64_t>(sp.uniform * static_cast<double>(kept_total)) + 1, 1, kept_total);
  uint64_t prefix;
  const int64_t id = Select(sh, row, kept, x, &prefix);
  if (threadIdx.x == 0) out_ids[r] = static_cast<int32_t>(id);
}

}  // namespace

void LaunchSample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params,
                  int32_t* out_ids, cudaStream_t stream) {
  if (rows <= 0) return;
  SampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, params, out_ids);
}

}  // namespace tessera::cuda
