// Host-callable launchers of the CUDA backend's own kernels (elementwise.cu, attention.cu, attention_mma.cu,
// sampler.cu). Plain C++ signatures over raw device pointers (bf16 as uint16_t bits) so that the backend's
// .cc code needs no nvcc. Each enqueues on `stream` and returns at once; launch errors surface through
// cudaGetLastError.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

// dst[dst_row(i), :] = src[src_row(i), :] for i in [0, num_rows), row_bytes bytes a row, where
// src_row(i) = src_index ? src_index[i] : i and likewise for dst. Rows whose index is negative are skipped.
void LaunchCopyRows(const void* src, const int32_t* src_index, void* dst, const int32_t* dst_index,
                    int64_t num_rows, int64_t row_bytes, cudaStream_t stream);

// out = x * rsqrt(mean(x^2) + eps) * w per row of h, fp32 math; out may alias x.
void LaunchRmsNorm(const uint16_t* x, const uint16_t* w, uint16_t* out, int64_t rows, int64_t h, float eps,
                   cudaStream_t stream);
// residual = bf16(residual + hidden); hidden = RmsNorm(residual) * w.
void LaunchAddRmsNorm(uint16_t* hidden, uint16_t* residual, const uint16_t* w, int64_t rows, int64_t h,
                      float eps, cudaStream_t stream);
// Rotates q [T, nq * head_dim] and k [T, nk * head_dim] in place (rotate_half) by positions[t] * inv_freq.
void LaunchRope(const int32_t* positions, const float* inv_freq, int64_t num_tokens, int head_dim, int nq,
                int nk, uint16_t* q, uint16_t* k, cudaStream_t stream);
// Rope of the query and key heads of qkv [T, (nq + 2 nkv) * head_dim] into q [T, nq * head_dim] and, with the
// value heads, into the caches [blocks, block_size, nkv, head_dim] at slot_mapping[t] (skipped when < 0).
void LaunchRopeQkvToCache(const int32_t* positions, const int32_t* slot_mapping, const float* inv_freq,
                          int64_t num_tokens, int head_dim, int nq, int nkv, const uint16_t* qkv, uint16_t* q,
                          uint16_t* k_cache, uint16_t* v_cache, cudaStream_t stream);
// out[r, c] = silu(gate_up[r, c]) * gate_up[r, width + c] for rows x width; fp32 math, bf16 storage.
void LaunchSiluMulFused(const uint16_t* gate_up, uint16_t* out, int64_t rows, int64_t width, cudaStream_t stream);
// out = a + b. n elements, fp32 math, bf16 storage; out may alias an input.
void LaunchAdd(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n, cudaStream_t stream);

// Paged attention over bf16 caches [num_blocks, block_size, nkv, head_dim] (see attention.cu).
struct AttentionLaunch {
  const int32_t* query_start = nullptr;
  const int32_t* seq_lens = nullptr;
  const int32_t* block_tables = nullptr;
  const int32_t* positions = nullptr;
  const uint16_t* q = nullptr;  // [T, nq * head_dim]
  const uint16_t* k_cache = nullptr;
  const uint16_t* v_cache = nullptr;
  uint16_t* out = nullptr;   // [T, nq * head_dim]
  float* partial = nullptr;  // [num_parts, T, nq, head_dim + 2] when num_parts > 1
  int num_seqs = 0;
  int num_tokens = 0;
  int max_blocks_per_seq = 0;
  int block_size = 16;
  int max_query_len = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  int num_parts = 1;  // each row's context split into this many equal parts (flash-decoding), combined after
};
inline constexpr int kAttentionMaxHeadDim = 256;  // head_dim must be a multiple of 32 and at most this
inline constexpr int kAttentionMaxGroup = 16;     // num_heads / num_kv_heads at most this
// Query tokens one attention block handles for a GQA group of `group` query heads per KV head.
int AttentionTokensPerTile(int group);
// Raises the kernels' dynamic shared memory limit (call once per device before any launch).
cudaError_t ConfigureAttention();
void LaunchPagedAttention(const AttentionLaunch& args, cudaStream_t stream);

// The same attention on tensor cores (attention_mma.cu, mma.sync), for the head dims MmaAttentionSupports
// (64, 128, 256; CHECKed) and any group <= kAttentionMaxGroup. It always computes whole contexts: num_parts and
// partial are ignored. Meant for prefill: a block takes 64 query rows (64 / group tokens of
// one sequence), so a decode token fills only `group` of them.
bool MmaAttentionSupports(int head_dim);
// Raises the mma kernels' dynamic shared memory limit (call once per device before any launch).
cudaError_t ConfigureMmaAttention();
void LaunchPagedAttentionMma(const AttentionLaunch& args, cudaStream_t stream);

// One row's sampling parameters, device copy. uniform = SampleUniform(seed, step) computed on the host.
struct SampleParams {
  float temperature;
  int32_t top_k;
  float top_p;
  int32_t pad;
  double uniform;
};
// out_ids[r] = the token chosen for row r of logits [rows, vocab] (F32), with the CPU sampler's semantics.
void LaunchSample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params,
                  int32_t* out_ids, cudaStream_t stream);

}  // namespace tessera::cuda
