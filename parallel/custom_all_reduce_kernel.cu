#include <cuda_bf16.h>

#include "parallel/custom_all_reduce_kernel.h"

namespace tessera {
namespace {

// Signals between GPUs: a release store publishes this block's writes to every GPU; an acquire load makes
// the peer's writes that came before its signal visible here.
__device__ __forceinline__ uint32_t LoadAcquireSystem(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void StoreReleaseSystem(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// signals[block][sender] in a rank's region: the last epoch `sender` finished writing for this block.
__device__ __forceinline__ uint32_t* Signal(char* region, int block, int sender) {
  return reinterpret_cast<uint32_t*>(region) + block * kOneShotMaxWorld + sender;
}

__device__ __forceinline__ void Accumulate(const uint4& v, bool bf16, float (&acc)[8]) {
  if (bf16) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      acc[2 * j] += f.x;
      acc[2 * j + 1] += f.y;
    }
  } else {
    const float* f = reinterpret_cast<const float*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j] += f[j];
  }
}

__device__ __forceinline__ uint4 Pack(const float (&acc)[8], bool bf16) {
  uint4 v;
  if (bf16) {
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(acc[2 * j], acc[2 * j + 1]);
  } else {
    float* f = reinterpret_cast<float*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) f[j] = acc[j];
  }
  return v;
}

__global__ void __launch_bounds__(kOneShotThreads) OneShotAllReduceKernel(OneShotParams p) {
  const int block = static_cast<int>(blockIdx.x);
  __shared__ uint32_t epoch_shared;
  __shared__ int aborted_shared;
  if (threadIdx.x == 0) {
    epoch_shared = p.counters[block] + 1;
    aborted_shared = 0;
  }
  __syncthreads();
  const uint32_t epoch = epoch_shared;
  const int64_t offset = kOneShotSignalBytes + ((epoch & 1u) != 0 ? p.buffer_bytes : 0);

  // This block's share of the 16-byte vectors: the same on every rank.
  const int64_t vectors = p.bytes / 16;
  const int64_t per_block = (vectors + gridDim.x - 1) / gridDim.x;
  const int64_t begin = min(vectors, block * per_block);
  const int64_t end = min(vectors, begin + per_block);

  // 1. This rank's share into its own peer-readable buffer.
  uint4* mine = reinterpret_cast<uint4*>(p.regions[p.rank] + offset);
  const uint4* in = reinterpret_cast<const uint4*>(p.in);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) mine[i] = in[i];
  __syncthreads();

  // 2. Tell every rank this block's share is written; 3. wait until every rank says the same.
  if (static_cast<int>(threadIdx.x) < p.world) {
    const int peer = static_cast<int>(threadIdx.x);
    __threadfence_system();
    StoreReleaseSystem(Signal(p.regions[peer], block, p.rank), epoch);
    const uint32_t* from_peer = Signal(p.regions[p.rank], block, peer);
    int spins = 0;
    while (static_cast<int32_t>(LoadAcquireSystem(from_peer) - epoch) < 0) {
      if (++spins == 1024) {
        spins = 0;
        if (*p.abort != 0) {
          aborted_shared = 1;
          break;
        }
      }
    }
  }
  __syncthreads();
  if (aborted_shared != 0) return;  // the communicator is broken: the result does not matter

  // 4. Sum every rank's share in rank order (bypassing L1: peers' buffers change between calls).
  uint4* out = reinterpret_cast<uint4*>(p.out);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int r = 0; r < p.world; ++r) {
      Accumulate(__ldcg(reinterpret_cast<const uint4*>(p.regions[r] + offset) + i), p.bf16, acc);
    }
    out[i] = Pack(acc, p.bf16);
  }
  if (threadIdx.x == 0) p.counters[block] = epoch;
}

}  // namespace

cudaError_t LaunchOneShotAllReduce(const OneShotParams& params, cudaStream_t stream) {
  OneShotAllReduceKernel<<<kOneShotBlocks, kOneShotThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace tessera
