// Backend: the small set of operations the Llama forward needs, implemented once per device (CpuBackend in
// kernels/cpu, CudaBackend in kernels/cuda). Model code is written against this interface only.
//
// Conventions for every method:
//  - Tensors are row-major and contiguous, on this backend's device. Activations use activation_dtype()
//    (F32 on the CPU). Weights are BF16, stored [out_features, in_features] as in Hugging Face checkpoints.
//  - Shapes are checked with CHECK: a mismatch is a bug in the caller, not bad input.
//  - Methods may run asynchronously; Synchronize() waits for all of them. Nothing is allocated per call
//    except through Allocate().
//  - Device failures are Statuses, not crashes: an enqueued operation that fails (a launch error, a workspace
//    that cannot grow) makes the backend broken; the failure is returned by the next call that returns a
//    Status (Synchronize, CopyToHost, Sample, EndCapture, Replay), naming the operation and sizes, and every
//    later enqueued operation is skipped.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace tessera {

// Paged-attention metadata for one step, vLLM's flattened layout. Pointers are on the backend's device
// (host memory for the CPU backend); all int32.
struct AttentionMeta {
  const int32_t* query_start =
      nullptr;  // [num_seqs + 1]: sequence s owns new tokens [query_start[s], query_start[s+1])
  const int32_t* seq_lens = nullptr;      // [num_seqs]: context length after this step (cached + new tokens)
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]: physical KV block ids
  const int32_t* slot_mapping =
      nullptr;  // [num_tokens]: KV slot (block_id * block_size + offset) of each new token
  const int32_t* positions = nullptr;  // [num_tokens]: position of each new token in its sequence
  int num_seqs = 0;
  int num_tokens = 0;
  int max_blocks_per_seq = 0;
  int block_size = 16;
  int max_query_len = 0;  // longest new-token run of any sequence
  int max_seq_len = 0;    // longest context of any sequence
};

// Rotary embedding parameters (HF "rotate_half" layout; rope_type "llama3" frequency scaling when set).
struct RopeParams {
  float theta = 500000.0f;
  bool llama3_scaling = false;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

// One {token, bias} entry of a row's logit_bias: the bias is added to that token's logit.
struct LogitBias {
  int32_t token;
  float bias;
};

// The most alternatives a row may ask logprobs for (SamplingRow::top_logprobs).
inline constexpr int kMaxTopLogprobs = 20;

// One row's sampling request; the exact definitions are in kernels/sampler.h. temperature <= 0 means greedy
// (argmax). top_k <= 0, top_p >= 1 and min_p <= 0 disable those filters; repetition_penalty 1 (or <= 0),
// presence_penalty 0 and frequency_penalty 0 disable the penalties. The random draw depends only on
// (seed, step), never on the rest of the batch. Pointers are non-owning: the caller keeps what they point
// at alive for the Sample call.
struct SamplingRow {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  uint64_t step = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // over prompt and generated tokens
  float presence_penalty = 0.0f;    // over generated tokens
  float frequency_penalty = 0.0f;   // over generated tokens
  // The sequence's tokens (prompt, then generated), for the penalties: tokens[0, num_prompt_tokens) are the
  // prompt, the rest generated. Ids outside [0, vocab) are ignored.
  const int32_t* tokens = nullptr;
  int64_t num_tokens = 0;
  int64_t num_prompt_tokens = 0;
  const LogitBias* logit_bias = nullptr;  // ids outside [0, vocab) are ignored
  int64_t num_logit_bias = 0;
  // Ids that cannot be drawn (logit -inf): the stop ids while fewer than min_tokens have been generated.
  // Ids outside [0, vocab) are ignored.
  const int32_t* banned_ids = nullptr;
  int64_t num_banned_ids = 0;
  // -1: no logprobs. 0..kMaxTopLogprobs: the sampled token's logprob and rank, and this many alternatives
  // (larger values are clamped to kMaxTopLogprobs).
  int top_logprobs = -1;
};

// The logprobs of one sampled (or given) token, from log_softmax of the RAW logits (before penalties, bias,
// banned ids and temperature), in double: logprob, rank (1 + the number of other ids whose raw logit is
// >= the token's: equal logits share the worse rank, as vLLM counts), and the num_top most likely ids (raw
// logit descending, ties to the lower id) with their logprobs.
struct SampleLogprobs {
  int32_t token = -1;
  double logprob = 0.0;
  int64_t rank = 0;
  int num_top = 0;
  int32_t top_ids[kMaxTopLogprobs] = {};
  double top_logprobs[kMaxTopLogprobs] = {};
};

// kNull: kernels/null/null_backend.h, the real control and data plane at real shapes without arithmetic.
enum class DeviceKind { kCpu, kCuda, kNull };

// A device's memory as its backend accounts it.
struct MemoryInfo {
  int64_t total_bytes = 0;
  int64_t used_bytes = 0;  // by this backend's allocations
};

// A step's Backend calls recorded by Backend::BeginCapture / EndCapture (a CUDA graph on the GPU, the list of
// calls on the CPU) for Backend::Replay. Each backend replays only its own graphs.
class StepGraph {
 public:
  virtual ~StepGraph() = default;
};

// The GEMM sizes of Backend::Linear(x, w, y): y[m, n] = x[m, k] @ w[n, k]^T. CHECKs that the shapes agree
// (x and y may have any leading dims); dtypes are each backend's to check.
struct LinearDims {
  int64_t m, n, k;
};
inline LinearDims CheckLinearShapes(const Tensor& x, const Tensor& w, const Tensor& y) {
  TESSERA_CHECK(w.ndim() == 2 && x.ndim() >= 1 && y.ndim() >= 1);
  const int64_t n = w.dim(0), k = w.dim(1);
  TESSERA_CHECK(x.dim(-1) == k && y.dim(-1) == n);
  const int64_t m = x.numel() / k;
  TESSERA_CHECK(y.numel() == m * n);
  return {m, n, k};
}

class Backend {
 public:
  virtual ~Backend() = default;

  virtual DeviceKind device() const = 0;
  // F32 on the CPU, BF16 on CUDA.
  virtual DType activation_dtype() const = 0;
  // The device stream every operation is enqueued on (a cudaStream_t on CUDA), for communicators that enqueue
  // their collectives in order with the backend's work; null where there is none (the CPU).
  virtual void* native_stream() const { return nullptr; }
  // The device's capacity and what this backend has allocated of it. Errors: UNIMPLEMENTED where the backend
  // does not account its memory (the CPU and CUDA backends today).
  [[nodiscard]] virtual absl::StatusOr<MemoryInfo> Memory() const {
    return absl::UnimplementedError("this backend does not account its memory");
  }

  // Allocates `bytes` of device memory (64-byte aligned). Errors: RESOURCE_EXHAUSTED when out of memory.
  [[nodiscard]] virtual absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes) = 0;
  virtual void CopyToDevice(void* dst, const void* src, int64_t bytes) = 0;
  // Synchronous: the bytes are in `dst` on return. Errors: the backend's failure (see the conventions).
  [[nodiscard]] virtual absl::Status CopyToHost(void* dst, const void* src, int64_t bytes) = 0;
  // Copies `rows` rows of `row_bytes` bytes from host memory (rows src_pitch bytes apart) to device memory
  // (rows dst_pitch bytes apart); like CopyToDevice otherwise.
  virtual void CopyRowsToDevice(void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch,
                                int64_t row_bytes, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      CopyToDevice(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch,
                   row_bytes);
    }
  }
  // dst = src (same shape and dtype).
  virtual void Copy(const Tensor& src, Tensor& dst) = 0;
  // Copies `rows` rows of `row_bytes` bytes between two device buffers: source rows src_pitch bytes apart,
  // destination rows dst_pitch bytes apart (one strided copy; capturable).
  virtual void Copy2D(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
                      int64_t rows) = 0;

  // out[t, :] = table[ids[t], :]. ids: I32 [T]; table: BF16 [V, H]; out: [T, H]. Ids are trusted (< V).
  virtual void Embedding(const Tensor& ids, const Tensor& table, Tensor& out) = 0;
  // out[s, :] = src[rows[s], :]. rows: I32 [S] on the device.
  virtual void GatherRows(const Tensor& src, const Tensor& rows, Tensor& out) = 0;

  // y[M, N] = x[M, K] @ w[N, K]^T. w is BF16 and may live in a read-only mapping of the checkpoint.
  virtual void Linear(const Tensor& x, const Tensor& w, Tensor& y) = 0;

  // out = x / sqrt(mean(x^2) + eps) * weight, per row, computed in fp32. weight: BF16 [H]. out may alias x.
  virtual void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = 0;
  // residual += hidden; hidden = RmsNorm(residual) * weight. Both [T, H].
  virtual void AddRmsNorm(Tensor& hidden, Tensor& residual, const Tensor& weight, float eps) = 0;

  // Rotates q [T, nq * head_dim] and k [T, nk * head_dim] in place by the positions in meta.
  virtual void Rope(const AttentionMeta& meta, const RopeParams& rope, int head_dim, Tensor& q,
                    Tensor& k) = 0;

  // Writes k, v [T, nkv * head_dim] into the caches [num_blocks, block_size, nkv, head_dim] at meta's slots.
  virtual void WriteKvCache(const AttentionMeta& meta, const Tensor& k, const Tensor& v, Tensor& k_cache,
                            Tensor& v_cache) = 0;
  // Rope and WriteKvCache of the fused QKV projection's output in one pass: qkv [T, (nq + 2 * nkv) *
  // head_dim] holds each token's query heads, then its key heads, then its value heads. Writes q [T, nq *
  // head_dim] = the rotated query heads, and the rotated key heads and the value heads into the caches
  // [num_blocks, block_size, nkv, head_dim] at meta's slots (slots < 0 skipped). qkv is not changed. Equal to
  // copying the three parts out and calling Rope then WriteKvCache.
  virtual void RopeQkvToCache(const AttentionMeta& meta, const RopeParams& rope, int head_dim, const Tensor& qkv,
                              Tensor& q, Tensor& k_cache, Tensor& v_cache) = 0;
  // Causal grouped-query attention of q [T, nq * head_dim] over each sequence's cached context (which must
  // already hold this step's keys and values). out: [T, nq * head_dim]. nq must be a multiple of nkv.
  virtual void PagedAttention(const AttentionMeta& meta, const Tensor& q, const Tensor& k_cache,
                              const Tensor& v_cache, int num_heads, int num_kv_heads, int head_dim,
                              float scale, Tensor& out) = 0;

  // The fused gate/up projection's activation: gate_up [T, 2 * I] holds each token's gate (columns [0, I))
  // then its up (columns [I, 2 * I)); out[T, I] = silu(gate) * up, elementwise. out must not overlap gate_up.
  virtual void SiluMulFused(const Tensor& gate_up, Tensor& out) = 0;
  // out = a + b, elementwise (out may alias a or b).
  virtual void Add(const Tensor& a, const Tensor& b, Tensor& out) = 0;

  // Chooses one token per row of logits [S, V] (F32) as rows[s] says; writes host int32 out_ids[S]. For each
  // row with top_logprobs >= 0, fills host out_logprobs[s] (the other entries are left as they are);
  // out_logprobs may be null when no row asks. Every backend gives the same tokens as kernels/sampler.h's
  // SampleRow (see the backend for rare boundary differences). Overriding classes add
  // `using Backend::Sample;` to keep the three-argument form.
  // Errors: the backend's failure (see the conventions); out_ids are unspecified then.
  [[nodiscard]] virtual absl::Status Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                                            SampleLogprobs* out_logprobs) = 0;
  // Sample without logprobs (no row may ask for them: CHECKed by the backend).
  [[nodiscard]] absl::Status Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids) {
    return Sample(logits, rows, out_ids, nullptr);
  }

  // Waits for every queued operation. Errors: the backend's failure (see the conventions), e.g. INTERNAL
  // naming the CUDA error, RESOURCE_EXHAUSTED naming the workspace and the bytes it needed.
  [[nodiscard]] virtual absl::Status Synchronize() = 0;

  // Step graphs. After BeginCapture, the calls this thread makes are recorded instead of run, until
  // EndCapture returns them as a graph; Replay runs them again. A replay repeats every call with the same
  // arguments: the same pointers (activations, weights, KV cache, the buffers an AttentionMeta points into)
  // and the same shapes and AttentionMeta scalars, reading whatever those buffers hold at replay time. Not
  // capturable (a CHECK failure, or on CUDA an aborted capture): Allocate, CopyToDevice, CopyToHost, Sample,
  // Synchronize. A backend may also need a call's first run before it can capture it (the CUDA backend's
  // cuBLASLt algorithm choice, RoPE tables and attention workspace): run a step eagerly first. Errors:
  // UNIMPLEMENTED where the backend has no graphs; FAILED_PRECONDITION when already (or not) capturing; the
  // device's (INTERNAL).
  [[nodiscard]] virtual absl::Status BeginCapture() {
    return absl::UnimplementedError("this backend cannot capture step graphs");
  }
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<StepGraph>> EndCapture() {
    return absl::UnimplementedError("this backend cannot capture step graphs");
  }
  // `graph` must come from this backend's EndCapture.
  [[nodiscard]] virtual absl::Status Replay(const StepGraph& graph) {
    (void)graph;
    return absl::UnimplementedError("this backend cannot replay step graphs");
  }
};

}  // namespace tessera
