// Paged attention on tensor cores, flash-attention-2 style, for prefill and mixed steps: the semantics of
// attention.cu's kernel (whole contexts, no split) with both products on mma.sync.m16n8k16 (bf16 in, fp32
// accumulate). One block of 4 warps takes a tile of 64 query rows (query tokens of one sequence x the GQA
// heads sharing one KV head, so K and V are read once per group); warp w owns rows 16w..16w+15. Keys and
// values stream through shared memory 64 at a time (32 for head_dim 256), read through the block table with
// cp.async into two stages, so the next tile loads while this one is computed.
//
// Per key tile, per warp: S = Q K^T (Q as the row-major A operand, held in registers for head_dim <= 128;
// K row-major in shared memory is the "col" B operand as it stands), the online softmax in fp32 on S's
// accumulator fragments (base-2 exponent, scale * log2(e) applied to S), P rounded to bf16 in registers and
// reused as the A operand of O += P V, with V's B fragments transposed by ldmatrix.trans.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), g = lane / 4,
// c = lane % 4: A regs {a0, a1, a2, a3} hold (row g, cols 2c..2c+1), (row g+8, cols 2c..), (row g, cols
// 2c+8..), (row g+8, cols 2c+8..); B regs {b0, b1} hold (rows 2c..2c+1, col g), (rows 2c+8.., col g); the
// fp32 accumulator {d0, d1, d2, d3} holds (row g, cols 2c, 2c+1), (row g+8, cols 2c, 2c+1). So a thread
// owns query rows g and g+8 of its warp's 16, and the S accumulators of key columns 16k..16k+15 are, packed
// in pairs, exactly the A fragment of P for the k-th 16-key step.
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "core/check.h"
#include "kernels/cuda/cuda_kernels.h"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;  // query rows per block, one m16 tile per warp
// Shared-memory rows are head_dim + 8 bf16 long: consecutive rows start 16 bytes apart modulo 128, so the 8
// row addresses of every ldmatrix 8x8 matrix fall in distinct banks (head_dim is a multiple of 16).
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;

template <int kHeadDim>
struct MmaTile {
  static constexpr int kKeys = kHeadDim <= 128 ? 64 : 32;  // keys per shared-memory tile
  static constexpr int kStride = kHeadDim + kPad;          // bf16 elements per shared-memory row
  static constexpr int kChunks = kHeadDim / 8;             // 16-byte chunks per row
  // Q fragments live in registers (kHeadDim / 4 of them) up to 128; beyond that they are re-read from
  // shared memory each tile, which keeps O (kHeadDim / 2 registers) and S in registers without spills.
  static constexpr bool kQInRegisters = kHeadDim <= 128;
  static constexpr int kStageElems = kKeys * kStride;  // one K or V tile
  // K and V, two stages each, then Q. With Q in registers (and kKeys == kRows) Q's staging area is the
  // second K stage: it is read into registers before that stage is first filled.
  static constexpr size_t kSharedBytes =
      sizeof(uint16_t) *
      (4 * static_cast<size_t>(kStageElems) + (kQInRegisters ? 0 : static_cast<size_t>(kRows) * kStride));
  static_assert(kHeadDim % 16 == 0 && kKeys % 16 == 0, "whole mma k-steps and n-pairs");
  static_assert(!kQInRegisters || kKeys == kRows, "Q is staged in the second K stage");
  static_assert((kRows * kChunks) % kThreads == 0 && (kKeys * kChunks) % kThreads == 0, "even copies");
};

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronous; zero-filled (nothing read) when !valid.
__device__ __forceinline__ void CopyAsync16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CopyAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CopyAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i receives matrix i
// (lane holds row lane / 4, cols 2 (lane % 4) and +1; with .trans, rows 2 (lane % 4) and +1 of col lane / 4).
__device__ __forceinline__ void LoadMatrixX4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}
__device__ __forceinline__ void LoadMatrixX4Trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// d += a (16x16, row) * b (16x8, col); fp32 accumulators.
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x; exact enough for softmax (2 ulp) and 0 for -inf.
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats rounded to bf16, `lo` in the low half (the lower column of an mma fragment pair).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return static_cast<uint32_t>(__bfloat16_as_ushort(v.x)) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(v.y)) << 16);
}
// The sum of the two bf16 values of a packed pair, in fp32.
__device__ __forceinline__ float SumBf16Pair(uint32_t pair) {
  return __uint_as_float(pair << 16) + __uint_as_float(pair & 0xffff0000u);
}

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionMmaKernel(AttentionLaunch p, int tokens_per_tile, int tiles_per_seq) {
  using Tile = MmaTile<kHeadDim>;
  constexpr int kKeys = Tile::kKeys, kStride = Tile::kStride, kChunks = Tile::kChunks;
  constexpr int kDimTiles = kHeadDim / 8;  // n-tiles of O
  constexpr int kKeyTiles = kKeys / 8;     // n-tiles of S
  extern __shared__ __align__(16) unsigned char shared_raw[];
  __shared__ int row_context[kRows];  // keys row r attends to: min(seq_len, position + 1); 0 past `rows`
  uint16_t* k_stages = reinterpret_cast<uint16_t*>(shared_raw);  // [2][kKeys][kStride]
  uint16_t* v_stages = k_stages + 2 * Tile::kStageElems;         // [2][kKeys][kStride]
  uint16_t* q_tile = Tile::kQInRegisters ? k_stages + Tile::kStageElems
                                         : v_stages + 2 * Tile::kStageElems;  // [kRows][kStride]

  const int group = p.num_heads / p.num_kv_heads;
  const int seq = blockIdx.x / tiles_per_seq;
  const int tile = tiles_per_seq - 1 - static_cast<int>(blockIdx.x % tiles_per_seq);  // long tiles first
  const int kv_head = blockIdx.y;
  const int q_end = p.query_start[seq + 1];
  const int t0 = p.query_start[seq] + tile * tokens_per_tile;
  if (t0 >= q_end) return;  // this sequence has fewer new tokens than the longest
  const int rows = min(tokens_per_tile, q_end - t0) * group;
  const int seq_len = p.seq_lens[seq];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  if (tid < kRows) {
    int context = 0;
    if (tid < rows) context = max(0, min(seq_len, p.positions[t0 + tid / group] + 1));
    row_context[tid] = context;
  }
  __syncthreads();
  int context_max = 0, context_min = INT_MAX;  // over the tile's rows
  for (int r = 0; r < rows; ++r) {
    context_max = max(context_max, row_context[r]);
    context_min = min(context_min, row_context[r]);
  }
  // This thread's rows (g and g + 8 of the warp's 16) and their contexts.
  const int row_lo = warp * 16 + lane / 4;
  const int context_lo = row_context[row_lo], context_hi = row_context[row_lo + 8];
  const int num_key_tiles = (context_max + kKeys - 1) / kKeys;

  // Q rows: row r is token t0 + r / group, head kv_head * group + r % group; rows past `rows` are zeros.
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const int u = tid + i * kThreads;
    const int r = u / kChunks, c = u % kChunks;
    const bool valid = r < rows;
    const uint16_t* src = p.q;
    if (valid) {
      const int64_t t = t0 + r / group;
      src = p.q + (t * p.num_heads + kv_head * group + r % group) * kHeadDim + c * 8;
    }
    CopyAsync16(SharedAddress(q_tile + r * kStride + c * 8), src, valid);
  }

  // Keys [key_begin, key_begin + kKeys) into a stage; keys past the tile's context are zeros.
  const int* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  auto load_keys = [&](int key_begin, int stage) {
    uint16_t* k_dst = k_stages + stage * Tile::kStageElems;
    uint16_t* v_dst = v_stages + stage * Tile::kStageElems;
#pragma unroll
    for (int i = 0; i < kKeys * kChunks / kThreads; ++i) {
      const int u = tid + i * kThreads;
      const int j = u / kChunks, c = u % kChunks;
      const int key = key_begin + j;
      const bool valid = key < context_max;
      int64_t offset = 0;
      if (valid) {
        const int64_t slot =
            static_cast<int64_t>(table[key / p.block_size]) * p.block_size + key % p.block_size;
        offset = (slot * p.num_kv_heads + kv_head) * kHeadDim + c * 8;
      }
      CopyAsync16(SharedAddress(k_dst + j * kStride + c * 8), p.k_cache + offset, valid);
      CopyAsync16(SharedAddress(v_dst + j * kStride + c * 8), p.v_cache + offset, valid);
    }
  };
  if (num_key_tiles > 0) load_keys(0, 0);
  CopyAsyncCommit();
  CopyAsyncWait<0>();
  __syncthreads();

  // ldmatrix lane addresses (row, column) inside a 16x16 block:
  //  - Q (A operand): matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15),
  //    (rows 8-15, cols 8-15) = a0..a3.
  //  - K (B operand of S, stored [key][dim] = "col"): matrices (keys 0-7, dims 0-7), (keys 0-7, dims 8-15),
  //    (keys 8-15, dims 0-7), (keys 8-15, dims 8-15) = b0, b1 of key n-tile 0, then b0, b1 of n-tile 1.
  //  - V (B operand of P V, stored [key][dim], transposed on load): matrices (keys 0-7, dims 0-7),
  //    (keys 8-15, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 8-15) = b0, b1 of dim n-tile 0, then
  //    b0, b1 of dim n-tile 1.
  const int q_row = warp * 16 + (lane & 15), q_col = (lane >> 4) * 8;
  const int k_row = (lane & 7) + (lane >> 4) * 8, k_col = ((lane >> 3) & 1) * 8;
  const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_col = (lane >> 4) * 8;
  const uint32_t q_address = SharedAddress(q_tile + q_row * kStride + q_col);

  uint32_t q_frag[Tile::kQInRegisters ? kHeadDim / 16 : 1][4];
  if constexpr (Tile::kQInRegisters) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) LoadMatrixX4(q_frag[kk], q_address + kk * 16 * 2);
    __syncthreads();  // every warp has its Q before the second K stage (Q's staging area) is filled
  }

  float o[kDimTiles][4];
#pragma unroll
  for (int j = 0; j < kDimTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // running max of rows g, g + 8 (log2 domain)
  float l[2] = {0.0f, 0.0f};            // running sum of this thread's columns; quad-summed at the end
  const float scale_log2 = p.scale * kLog2e;

  for (int it = 0; it < num_key_tiles; ++it) {
    const int key_begin = it * kKeys;
    if (it + 1 < num_key_tiles) {
      load_keys(key_begin + kKeys, (it + 1) & 1);
      CopyAsyncCommit();
      CopyAsyncWait<1>();  // this tile's group is complete; the next one stays in flight
    } else {
      CopyAsyncWait<0>();
    }
    __syncthreads();
    const uint16_t* k_tile = k_stages + (it & 1) * Tile::kStageElems;
    const uint16_t* v_tile = v_stages + (it & 1) * Tile::kStageElems;

    // S = Q K^T: 16 rows x kKeys keys per warp.
    float s[kKeyTiles][4];
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    const uint32_t k_address = SharedAddress(k_tile + k_row * kStride + k_col);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t qa[4];
      if constexpr (Tile::kQInRegisters) {
        qa[0] = q_frag[kk][0];
        qa[1] = q_frag[kk][1];
        qa[2] = q_frag[kk][2];
        qa[3] = q_frag[kk][3];
      } else {
        LoadMatrixX4(qa, q_address + kk * 16 * 2);
      }
#pragma unroll
      for (int np = 0; np < kKeys / 16; ++np) {
        uint32_t kb[4];
        LoadMatrixX4(kb, k_address + (np * 16 * kStride + kk * 16) * 2);
        Mma(s[2 * np], qa, kb[0], kb[1]);
        Mma(s[2 * np + 1], qa, kb[2], kb[3]);
      }
    }

    // Online softmax. s[j][e] is row g (e < 2) or g + 8, key key_begin + 8j + 2 (lane % 4) + (e & 1).
    const bool masked = key_begin + kKeys > context_min;  // some row's context ends inside this tile
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * scale_log2;
        if (masked && key_begin + j * 8 + (lane & 3) * 2 + (e & 1) >= (e < 2 ? context_lo : context_hi)) {
          x = -INFINITY;
        }
        s[j][e] = x;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], x);
      }
    }
    float m_use[2];  // the row max to subtract: 0 while the row has seen no key (keeps exp2 off -inf - -inf)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
      const float m_new = fmaxf(m[i], tile_max[i]);
      m_use[i] = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = Exp2(m[i] - m_use[i]);  // 0 when m[i] is -inf (O and l are 0 then)
      m[i] = m_new;
      l[i] *= alpha;
#pragma unroll
      for (int j = 0; j < kDimTiles; ++j) {
        o[j][2 * i] *= alpha;
        o[j][2 * i + 1] *= alpha;
      }
    }

    // O += P V, P in bf16: the A fragment of keys 16kk..16kk+15 is S's n-tiles 2kk and 2kk + 1. l sums the
    // rounded probabilities, so the output is a true convex combination of the values.
    const uint32_t v_address = SharedAddress(v_tile + v_row * kStride + v_col);
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = PackBf16(Exp2(s[2 * kk][0] - m_use[0]), Exp2(s[2 * kk][1] - m_use[0]));          // row g
      pa[1] = PackBf16(Exp2(s[2 * kk][2] - m_use[1]), Exp2(s[2 * kk][3] - m_use[1]));          // row g+8
      pa[2] = PackBf16(Exp2(s[2 * kk + 1][0] - m_use[0]), Exp2(s[2 * kk + 1][1] - m_use[0]));  // row g
      pa[3] = PackBf16(Exp2(s[2 * kk + 1][2] - m_use[1]), Exp2(s[2 * kk + 1][3] - m_use[1]));  // row g+8
      l[0] += SumBf16Pair(pa[0]) + SumBf16Pair(pa[2]);
      l[1] += SumBf16Pair(pa[1]) + SumBf16Pair(pa[3]);
#pragma unroll
      for (int dp = 0; dp < kHeadDim / 16; ++dp) {
        uint32_t vb[4];
        LoadMatrixX4Trans(vb, v_address + (kk * 16 * kStride + dp * 16) * 2);
        Mma(o[2 * dp], pa, vb[0], vb[1]);
        Mma(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  // out = O / l, rows g and g + 8; o[j][2i], o[j][2i + 1] are dims 8j + 2 (lane % 4) and +1.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = l[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int r = row_lo + 8 * i;
    if (r >= rows) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // a row with no context gives zeros
    const int64_t t = t0 + r / group;
    uint16_t* dst = p.out + (t * p.num_heads + kv_head * group + r % group) * kHeadDim + (lane & 3) * 2;
#pragma unroll
    for (int j = 0; j < kDimTiles; ++j) {
      *reinterpret_cast<uint32_t*>(dst + j * 8) = PackBf16(o[j][2 * i] * inv, o[j][2 * i + 1] * inv);
    }
  }
}

template <int kHeadDim>
cudaError_t ConfigureHeadDim() {
  return cudaFuncSetAttribute(PagedAttentionMmaKernel<kHeadDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(MmaTile<kHeadDim>::kSharedBytes));
}

template <int kHeadDim>
void Launch(const AttentionLaunch& args, dim3 grid, int tokens_per_tile, int tiles_per_seq,
            cudaStream_t stream) {
  PagedAttentionMmaKernel<kHeadDim>
      <<<grid, kThreads, MmaTile<kHeadDim>::kSharedBytes, stream>>>(args, tokens_per_tile, tiles_per_seq);
}

}  // namespace

bool MmaAttentionSupports(int head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

cudaError_t ConfigureMmaAttention() {
  for (cudaError_t e : {ConfigureHeadDim<64>(), ConfigureHeadDim<128>(), ConfigureHeadDim<256>()}) {
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

void LaunchPagedAttentionMma(const AttentionLaunch& args, cudaStream_t stream) {
  TESSERA_CHECK(MmaAttentionSupports(args.head_dim));
  TESSERA_CHECK(args.num_kv_heads > 0 && args.num_heads % args.num_kv_heads == 0 &&
                args.num_heads / args.num_kv_heads <= kAttentionMaxGroup);
  if (args.num_tokens <= 0 || args.num_seqs <= 0) return;
  const int tokens_per_tile = kRows / (args.num_heads / args.num_kv_heads);
  const int tiles_per_seq = (args.max_query_len + tokens_per_tile - 1) / tokens_per_tile;
  const dim3 grid(static_cast<unsigned>(args.num_seqs * tiles_per_seq),
                  static_cast<unsigned>(args.num_kv_heads));
  switch (args.head_dim) {
    case 64:
      Launch<64>(args, grid, tokens_per_tile, tiles_per_seq, stream);
      break;
    case 128:
      Launch<128>(args, grid, tokens_per_tile, tiles_per_seq, stream);
      break;
    default:
      Launch<256>(args, grid, tokens_per_tile, tiles_per_seq, stream);
      break;
  }
}

}  // namespace tessera::cuda
