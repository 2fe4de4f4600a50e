// Memory-bound kernels of the CUDA backend: row copies (embedding, gather, KV-cache writes), RMSNorm,
// residual-add RMSNorm, RoPE (alone, and fused with the KV-cache write of a fused QKV output), SiLU-mul of a
// fused gate/up output, and add. bf16 storage, fp32 math. Simple and correct: one pass over
// the data with 16-byte accesses where sizes and alignment allow.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace tessera::cuda {
namespace {

__device__ __forceinline__ float Bf(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}
__device__ __forceinline__ uint16_t ToBf(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename Unit>
__global__ void CopyRowsKernel(const Unit* src, const int32_t* src_index, Unit* dst, const int32_t* dst_index,
                               int64_t row_units) {
  const int64_t i = blockIdx.x;
  const int64_t s = src_index ? src_index[i] : i;
  const int64_t d = dst_index ? dst_index[i] : i;
  if (s < 0 || d < 0) return;
  const Unit* from = src + s * row_units;
  Unit* to = dst + d * row_units;
  for (int64_t u = threadIdx.x; u < row_units; u += blockDim.x) to[u] = from[u];
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float BlockSum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += warp_sums[w];
  return total;
}

__global__ void RmsNormKernel(const uint16_t* x, const uint16_t* w, uint16_t* out, int64_t h, float eps) {
  const uint16_t* xr = x + blockIdx.x * h;
  uint16_t* outr = out + blockIdx.x * h;
  float sum = 0;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
    const float v = Bf(xr[i]);
    sum += v * v;
  }
  const float inv = rsqrtf(BlockSum(sum) / static_cast<float>(h) + eps);
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) outr[i] = ToBf(Bf(xr[i]) * inv * Bf(w[i]));
}

__global__ void AddRmsNormKernel(uint16_t* hidden, uint16_t* residual, const uint16_t* w, int64_t h,
                                 float eps) {
  uint16_t* hr = hidden + blockIdx.x * h;
  uint16_t* rr = residual + blockIdx.x * h;
  float sum = 0;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
    const uint16_t r = ToBf(Bf(rr[i]) + Bf(hr[i]));  // the residual stream is bf16, as in HF's bf16 forward
    rr[i] = r;
    const float v = Bf(r);
    sum += v * v;
  }
  const float inv = rsqrtf(BlockSum(sum) / static_cast<float>(h) + eps);
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) hr[i] = ToBf(Bf(rr[i]) * inv * Bf(w[i]));
}

// One block per token; thread i owns the pair (i, i + half) of every head of q and k.
__global__ void RopeKernel(const int32_t* positions, const float* inv_freq, int head_dim, int nq, int nk,
                           uint16_t* q, uint16_t* k) {
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = pos * inv_freq[i];  // fp32 product, as HF and the CPU backend
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);  // the CPU backend's std::cos/std::sin in double
    const float cf = static_cast<float>(c), sf = static_cast<float>(s);
    for (int h = 0; h < nq + nk; ++h) {
      uint16_t* base = h < nq ? q + (t * nq + h) * head_dim : k + (t * nk + (h - nq)) * head_dim;
      const float x0 = Bf(base[i]), x1 = Bf(base[i + half]);
      base[i] = ToBf(x0 * cf - x1 * sf);
      base[i + half] = ToBf(x1 * cf + x0 * sf);
    }
  }
}

// One block per token of qkv [T, (nq + 2 nkv) * head_dim]; thread i owns the pair (i, i + half) of every query
// and key head: the rotated query heads go to q [T, nq * head_dim], the rotated key heads and the value heads
// to the caches at the token's slot (none for a slot < 0). The same arithmetic as RopeKernel.
__global__ void RopeQkvToCacheKernel(const int32_t* positions, const int32_t* slots, const float* inv_freq,
                                     int head_dim, int nq, int nkv, const uint16_t* qkv, uint16_t* q,
                                     uint16_t* k_cache, uint16_t* v_cache) {
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const int64_t kv_width = static_cast<int64_t>(nkv) * head_dim;
  const uint16_t* row = qkv + t * (static_cast<int64_t>(nq) * head_dim + 2 * kv_width);
  const int64_t slot = slots[t];
  const int heads = slot < 0 ? nq : nq + nkv;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = pos * inv_freq[i];
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    const float cf = static_cast<float>(c), sf = static_cast<float>(s);
    for (int h = 0; h < heads; ++h) {
      const uint16_t* from = row + static_cast<int64_t>(h) * head_dim;
      uint16_t* to = h < nq ? q + (t * nq + h) * head_dim : k_cache + slot * kv_width + (h - nq) * head_dim;
      const float x0 = Bf(from[i]), x1 = Bf(from[i + half]);
      to[i] = ToBf(x0 * cf - x1 * sf);
      to[i + half] = ToBf(x1 * cf + x0 * sf);
    }
  }
  if (slot < 0) return;
  const uint16_t* v = row + static_cast<int64_t>(nq + nkv) * head_dim;
  for (int64_t e = threadIdx.x; e < kv_width; e += blockDim.x) v_cache[slot * kv_width + e] = v[e];
}

struct SiluMulOp {
  __device__ float operator()(float g, float u) const { return g / (1.0f + __expf(-g)) * u; }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// Vec elements per thread step: 8 (16-byte accesses) when every pointer is aligned and n % 8 == 0, else 1.
template <typename Op, int Vec>
__global__ void BinaryKernel(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n_vec, Op op) {
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < n_vec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (Vec == 8) {
      const uint4 av = reinterpret_cast<const uint4*>(a)[v];
      const uint4 bv = reinterpret_cast<const uint4*>(b)[v];
      const uint16_t* ae = reinterpret_cast<const uint16_t*>(&av);
      const uint16_t* be = reinterpret_cast<const uint16_t*>(&bv);
      uint4 ov;
      uint16_t* oe = reinterpret_cast<uint16_t*>(&ov);
#pragma unroll
      for (int e = 0; e < 8; ++e) oe[e] = ToBf(op(Bf(ae[e]), Bf(be[e])));
      reinterpret_cast<uint4*>(out)[v] = ov;
    } else {
      out[v] = ToBf(op(Bf(a[v]), Bf(b[v])));
    }
  }
}

// out[r, c] = silu(gate_up[r, c]) * gate_up[r, width + c] over `width_vec` units of Vec elements per row.
template <int Vec>
__global__ void SiluMulFusedKernel(const uint16_t* gate_up, uint16_t* out, int64_t width_vec, int64_t n_vec) {
  const SiluMulOp op;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < n_vec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = v / width_vec, c = v - r * width_vec;
    const int64_t g = r * 2 * width_vec + c, u = g + width_vec;
    if constexpr (Vec == 8) {
      const uint4 gv = reinterpret_cast<const uint4*>(gate_up)[g];
      const uint4 uv = reinterpret_cast<const uint4*>(gate_up)[u];
      const uint16_t* ge = reinterpret_cast<const uint16_t*>(&gv);
      const uint16_t* ue = reinterpret_cast<const uint16_t*>(&uv);
      uint4 ov;
      uint16_t* oe = reinterpret_cast<uint16_t*>(&ov);
#pragma unroll
      for (int e = 0; e < 8; ++e) oe[e] = ToBf(op(Bf(ge[e]), Bf(ue[e])));
      reinterpret_cast<uint4*>(out)[v] = ov;
    } else {
      out[v] = ToBf(op(Bf(gate_up[g]), Bf(gate_up[u])));
    }
  }
}

template <typename Op>
void LaunchBinary(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n, Op op,
                  cudaStream_t stream) {
  if (n <= 0) return;
  const bool aligned =
      ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) | reinterpret_cast<uintptr_t>(out)) %
       16) == 0;
  constexpr int kThreads = 256;
  if (aligned && n % 8 == 0) {
    const int64_t n_vec = n / 8;
    const int blocks = static_cast<int>(std::min<int64_t>(CeilDiv(n_vec, kThreads), 65536));
    BinaryKernel<Op, 8><<<blocks, kThreads, 0, stream>>>(a, b, out, n_vec, op);
  } else {
    const int blocks = static_cast<int>(std::min<int64_t>(CeilDiv(n, kThreads), 65536));
    BinaryKernel<Op, 1><<<blocks, kThreads, 0, stream>>>(a, b, out, n, op);
  }
}

int NormThreads(int64_t h) { return h >= 4096 ? 1024 : h >= 1024 ? 256 : 128; }

}  // namespace

void LaunchCopyRows(const void* src, const int32_t* src_index, void* dst, const int32_t* dst_index,
                    int64_t num_rows, int64_t row_bytes, cudaStream_t stream) {
  if (num_rows <= 0 || row_bytes <= 0) return;
  const uintptr_t bits =
      reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) | static_cast<uintptr_t>(row_bytes);
  const int grid = static_cast<int>(num_rows);
  if (bits % 16 == 0) {
    const int64_t units = row_bytes / 16;
    CopyRowsKernel<uint4>
        <<<grid, static_cast<int>(std::min<int64_t>(256, CeilDiv(units, 32) * 32)), 0, stream>>>(
            static_cast<const uint4*>(src), src_index, static_cast<uint4*>(dst), dst_index, units);
  } else if (bits % 4 == 0) {
    const int64_t units = row_bytes / 4;
    CopyRowsKernel<uint32_t>
        <<<grid, static_cast<int>(std::min<int64_t>(256, CeilDiv(units, 32) * 32)), 0, stream>>>(
            static_cast<const uint32_t*>(src), src_index, static_cast<uint32_t*>(dst), dst_index, units);
  } else {
    CopyRowsKernel<uint8_t><<<grid, 256, 0, stream>>>(static_cast<const uint8_t*>(src), src_index,
                                                      static_cast<uint8_t*>(dst), dst_index, row_bytes);
  }
}

void LaunchRmsNorm(const uint16_t* x, const uint16_t* w, uint16_t* out, int64_t rows, int64_t h, float eps,
                   cudaStream_t stream) {
  if (rows <= 0) return;
  RmsNormKernel<<<static_cast<unsigned>(rows), NormThreads(h), 0, stream>>>(x, w, out, h, eps);
}

void LaunchAddRmsNorm(uint16_t* hidden, uint16_t* residual, const uint16_t* w, int64_t rows, int64_t h,
                      float eps, cudaStream_t stream) {
  if (rows <= 0) return;
  AddRmsNormKernel<<<static_cast<unsigned>(rows), NormThreads(h), 0, stream>>>(hidden, residual, w, h, eps);
}

void LaunchRope(const int32_t* positions, const float* inv_freq, int64_t num_tokens, int head_dim, int nq,
                int nk, uint16_t* q, uint16_t* k, cudaStream_t stream) {
  if (num_tokens <= 0) return;
  const int threads = std::min(256, std::max(32, (head_dim / 2 + 31) / 32 * 32));
  RopeKernel<<<static_cast<unsigned>(num_tokens), threads, 0, stream>>>(positions, inv_freq, head_dim, nq, nk,
                                                                        q, k);
}

void LaunchRopeQkvToCache(const int32_t* positions, const int32_t* slot_mapping, const float* inv_freq,
                          int64_t num_tokens, int head_dim, int nq, int nkv, const uint16_t* qkv, uint16_t* q,
                          uint16_t* k_cache, uint16_t* v_cache, cudaStream_t stream) {
  if (num_tokens <= 0) return;
  const int threads = std::min(256, std::max(32, (head_dim / 2 + 31) / 32 * 32));
  RopeQkvToCacheKernel<<<static_cast<unsigned>(num_tokens), threads, 0, stream>>>(
      positions, slot_mapping, inv_freq, head_dim, nq, nkv, qkv, q, k_cache, v_cache);
}

void LaunchSiluMulFused(const uint16_t* gate_up, uint16_t* out, int64_t rows, int64_t width, cudaStream_t stream) {
  if (rows <= 0 || width <= 0) return;
  const bool aligned = ((reinterpret_cast<uintptr_t>(gate_up) | reinterpret_cast<uintptr_t>(out)) % 16) == 0;
  constexpr int kThreads = 256;
  if (aligned && width % 8 == 0) {
    const int64_t width_vec = width / 8, n_vec = rows * width_vec;
    const int blocks = static_cast<int>(std::min<int64_t>(CeilDiv(n_vec, kThreads), 65536));
    SiluMulFusedKernel<8><<<blocks, kThreads, 0, stream>>>(gate_up, out, width_vec, n_vec);
  } else {
    const int64_t n = rows * width;
    const int blocks = static_cast<int>(std::min<int64_t>(CeilDiv(n, kThreads), 65536));
    SiluMulFusedKernel<1><<<blocks, kThreads, 0, stream>>>(gate_up, out, width, n);
  }
}

void LaunchAdd(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n, cudaStream_t stream) {
  LaunchBinary(a, b, out, n, AddOp{}, stream);
}

}  // namespace tessera::cuda
