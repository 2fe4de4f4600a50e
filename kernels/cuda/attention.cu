// Paged attention for any mix of prefill and decode sequences, flash-attention style: one block of 4 warps
// takes a tile of up to 16 query rows (query tokens x the GQA heads sharing one KV head) of one sequence and
// streams that sequence's keys and values through shared memory 32 at a time, read through its block table,
// with an online softmax in fp32 (base-2 exponent, the scale folded into q). Decode steps with few sequences
// split the context into parts (flash-decoding) that a second kernel combines.
//
// Simple-but-correct level: scores and P.V run on CUDA cores (fp32 FMA), single-buffered tiles. The tuned
// version would move both products onto tensor cores (mma.sync / wgmma) with double-buffered cp.async tiles.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;                     // query rows per block
constexpr int kRowsPerWarp = kRows / kWarps;  // row r belongs to warp r % kWarps
constexpr int kKeys = 32;                     // keys per tile (one per lane in the score phase)
constexpr int kMaxDimsPerLane = kAttentionMaxHeadDim / 32;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float Bf(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}
__device__ __forceinline__ uint16_t ToBf(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// Shared memory floats: q [kRows][hd], k [kKeys][hd + 1] (padded: lane j reads row j), v [kKeys][hd].
size_t SharedBytes(int head_dim) {
  return sizeof(float) *
         (static_cast<size_t>(kRows) * head_dim + static_cast<size_t>(kKeys) * (head_dim + 1) +
          static_cast<size_t>(kKeys) * head_dim);
}

__global__ void __launch_bounds__(kThreads)
    PagedAttentionKernel(AttentionLaunch p, int tokens_per_tile, int tiles_per_seq) {
  extern __shared__ __align__(16) float smem[];
  __shared__ int row_pos[kRows];
  const int hd = p.head_dim;
  const int group = p.num_heads / p.num_kv_heads;
  float* q_s = smem;
  float* k_s = q_s + kRows * hd;
  float* v_s = k_s + kKeys * (hd + 1);

  const int seq = blockIdx.x / tiles_per_seq;
  const int tile = blockIdx.x % tiles_per_seq;
  const int kv_head = blockIdx.y;
  const int part = blockIdx.z;
  const int q_end = p.query_start[seq + 1];
  const int t0 = p.query_start[seq] + tile * tokens_per_tile;
  if (t0 >= q_end) return;  // this sequence has fewer new tokens than the longest
  const int rows = min(tokens_per_tile, q_end - t0) * group;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  const float q_scale = p.scale * kLog2e;
  for (int idx = tid; idx < rows * hd; idx += kThreads) {
    const int r = idx / hd, d = idx % hd;
    const int64_t t = t0 + r / group;
    const int head = kv_head * group + r % group;
    q_s[idx] = Bf(p.q[(t * p.num_heads + head) * hd + d]) * q_scale;
  }
  if (tid < kRows) row_pos[tid] = tid < rows ? p.positions[t0 + tid / group] : -1;
  __syncthreads();
  int max_pos = 0;
  for (int r = 0; r < kRows; ++r) max_pos = max(max_pos, row_pos[r]);
  const int context = min(p.seq_lens[seq], max_pos + 1);
  // Each block splits its own context into num_parts equal parts (a multiple of 32 keys each), so that a step
  // captured in a graph for the longest context keeps every part busy for short ones; parts past the context
  // are empty (m = -inf, skipped when combining).
  const int part_size = ((context + p.num_parts - 1) / p.num_parts + kKeys - 1) / kKeys * kKeys;
  const int key_begin = p.num_parts > 1 ? part * part_size : 0;
  const int key_end = p.num_parts > 1 ? min(context, key_begin + part_size) : context;
  const int* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int units_per_key = hd / 8;  // 16-byte units

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kMaxDimsPerLane];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxDimsPerLane; ++c) acc[i][c] = 0.0f;
  }

  for (int kb = key_begin; kb < key_end; kb += kKeys) {
    __syncthreads();  // the previous tile is consumed
    for (int u = tid; u < kKeys * units_per_key; u += kThreads) {
      const int j = u / units_per_key, c = (u % units_per_key) * 8;
      const int key = kb + j;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key < key_end) {
        const int64_t slot =
            static_cast<int64_t>(table[key / p.block_size]) * p.block_size + key % p.block_size;
        const int64_t offset = (slot * p.num_kv_heads + kv_head) * hd + c;
        kv = __ldg(reinterpret_cast<const uint4*>(p.k_cache + offset));
        vv = __ldg(reinterpret_cast<const uint4*>(p.v_cache + offset));
      }
      const uint16_t* ke = reinterpret_cast<const uint16_t*>(&kv);
      const uint16_t* ve = reinterpret_cast<const uint16_t*>(&vv);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        k_s[j * (hd + 1) + c + e] = Bf(ke[e]);
        v_s[j * hd + c + e] = Bf(ve[e]);
      }
    }
    __syncthreads();

    // Scores: lane j takes key kb + j for the warp's rows.
    const int key = kb + lane;
    float s[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) s[i] = 0.0f;
    const float* krow = k_s + lane * (hd + 1);
    for (int d = 0; d < hd; d += 4) {
      const float k0 = krow[d], k1 = krow[d + 1], k2 = krow[d + 2], k3 = krow[d + 3];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const float4 qv = *reinterpret_cast<const float4*>(q_s + (warp + i * kWarps) * hd + d);
        s[i] += qv.x * k0 + qv.y * k1 + qv.z * k2 + qv.w * k3;
      }
    }
    float prob[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + i * kWarps;
      const bool valid = r < rows && key < key_end && key <= row_pos[r];
      float x = valid ? s[i] : -INFINITY;
      float mx = x;
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m[i], mx);
      float alpha = 1.0f, pv = 0.0f;
      if (m_new != -INFINITY) {
        alpha = exp2f(m[i] - m_new);  // 0 when m[i] is -inf
        pv = valid ? exp2f(x - m_new) : 0.0f;
      }
      float sum = pv;
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      l[i] = l[i] * alpha + sum;
      m[i] = m_new;
      prob[i] = pv;
#pragma unroll
      for (int c = 0; c < kMaxDimsPerLane; ++c) acc[i][c] *= alpha;
    }

    // P.V: lane owns dims lane + 32c.
    const int keys_here = min(kKeys, key_end - kb);
    for (int j = 0; j < keys_here; ++j) {
      float pj[kRowsPerWarp];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) pj[i] = __shfl_sync(0xffffffffu, prob[i], j);
#pragma unroll
      for (int c = 0; c < kMaxDimsPerLane; ++c) {
        if (c * 32 < hd) {
          const float v = v_s[j * hd + c * 32 + lane];
#pragma unroll
          for (int i = 0; i < kRowsPerWarp; ++i) acc[i][c] += pj[i] * v;
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + i * kWarps;
    if (r >= rows) continue;
    const int64_t t = t0 + r / group;
    const int head = kv_head * group + r % group;
    const int64_t row = t * p.num_heads + head;
    if (p.num_parts == 1) {
      const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
#pragma unroll
      for (int c = 0; c < kMaxDimsPerLane; ++c) {
        if (c * 32 < hd) p.out[row * hd + c * 32 + lane] = ToBf(acc[i][c] * inv);
      }
    } else {
      float* dst = p.partial + (static_cast<int64_t>(part) * p.num_tokens * p.num_heads + row) * (hd + 2);
#pragma unroll
      for (int c = 0; c < kMaxDimsPerLane; ++c) {
        if (c * 32 < hd) dst[c * 32 + lane] = acc[i][c];
      }
      if (lane == 0) {
        dst[hd] = m[i];
        dst[hd + 1] = l[i];
      }
    }
  }
}

// out[t, h, :] = sum_z 2^(m_z - M) acc_z / sum_z 2^(m_z - M) l_z over the parts z; block (t, h).
__global__ void CombinePartsKernel(const float* partial, int num_parts, int64_t rows, int hd, uint16_t* out) {
  const int64_t row = blockIdx.x;
  float big = -INFINITY;
  for (int z = 0; z < num_parts; ++z) big = fmaxf(big, partial[(z * rows + row) * (hd + 2) + hd]);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    for (int z = 0; z < num_parts; ++z) {
      const float* src = partial + (z * rows + row) * (hd + 2);
      if (src[hd] == -INFINITY) continue;  // a part past this token's context
      const float w = exp2f(src[hd] - big);
      num += w * src[d];
      den += w * src[hd + 1];
    }
    out[row * hd + d] = ToBf(den > 0.0f ? num / den : 0.0f);
  }
}

}  // namespace

int AttentionTokensPerTile(int group) { return group >= kRows ? 1 : kRows / group; }

cudaError_t ConfigureAttention() {
  return cudaFuncSetAttribute(PagedAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(SharedBytes(kAttentionMaxHeadDim)));
}

void LaunchPagedAttention(const AttentionLaunch& args, cudaStream_t stream) {
  if (args.num_tokens <= 0 || args.num_seqs <= 0) return;
  const int group = args.num_heads / args.num_kv_heads;
  const int tokens_per_tile = AttentionTokensPerTile(group);
  const int tiles_per_seq = (args.max_query_len + tokens_per_tile - 1) / tokens_per_tile;
  const dim3 grid(static_cast<unsigned>(args.num_seqs * tiles_per_seq),
                  static_cast<unsigned>(args.num_kv_heads), static_cast<unsigned>(args.num_parts));
  PagedAttentionKernel<<<grid, kThreads, SharedBytes(args.head_dim), stream>>>(args, tokens_per_tile,
                                                                               tiles_per_seq);
  if (args.num_parts > 1) {
    const int64_t rows = static_cast<int64_t>(args.num_tokens) * args.num_heads;
    CombinePartsKernel<<<static_cast<unsigned>(rows), args.head_dim, 0, stream>>>(
        args.partial, args.num_parts, rows, args.head_dim, args.out);
  }
}

}  // namespace tessera::cuda
