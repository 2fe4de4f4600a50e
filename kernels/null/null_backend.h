// NullBackend (--device null): runs the whole control and data plane at a real model's shapes without doing its
// arithmetic, so that a 405B layout can be started, sharded, scheduled and served on one machine. Tensors keep
// their real shapes, dtypes (BF16 activations, as on a GPU) and byte counts; allocations are accounted against
// a device's capacity (an H200's by default) but backed only by untouched virtual memory (MAP_NORESERVE), so
// weights and the KV cache cost no resident memory; kernels do nothing; the sampler returns NullToken, a token
// that depends only on the sequence's prompt and position. Collectives still move the real buffers (Gloo).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace tessera {

// nvidia-smi's total memory of an H200 SXM 141GB (143771 MiB), the default capacity.
inline constexpr int64_t kNullDefaultMemoryBytes = int64_t{143771} << 20;

struct NullBackendOptions {
  int64_t memory_bytes = kNullDefaultMemoryBytes;  // the capacity allocations are accounted against
};

// The token the null sampler picks for a sequence: a hash of its prompt tokens[0, num_prompt_tokens) and of
// `position` (the sequence's length so far, i.e. the position of the token being chosen), taken modulo the
// first 15/16 of the vocabulary (so that Llama 3's special tokens, the last 256 ids, are never chosen).
// FNV-1a 64 over the prompt's ids as little-endian int32, then xor position and multiply by the FNV prime.
int32_t NullToken(const int32_t* prompt, int64_t num_prompt_tokens, int64_t position, int64_t vocab);

class NullBackend final : public Backend {
 public:
  // Errors: INVALID_ARGUMENT for a non-positive capacity.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<NullBackend>> Create(const NullBackendOptions& options);
  ~NullBackend() override = default;

  DeviceKind device() const override { return DeviceKind::kNull; }
  DType activation_dtype() const override { return DType::kBF16; }
  [[nodiscard]] absl::StatusOr<MemoryInfo> Memory() const override;

  // Reserves `bytes` of virtual memory (page-aligned, zero-filled on first touch). Errors: RESOURCE_EXHAUSTED
  // naming the bytes asked for, in use and the capacity when the capacity would be exceeded, or when the
  // reservation fails.
  [[nodiscard]] absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes) override;
  // Copies do nothing, except that CopyToHost zero-fills its destination (host memory).
  void CopyToDevice(void* dst, const void* src, int64_t bytes) override {}
  void CopyRowsToDevice(void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t row_bytes,
                        int64_t rows) override {}
  [[nodiscard]] absl::Status CopyToHost(void* dst, const void* src, int64_t bytes) override;
  void Copy(const Tensor& src, Tensor& dst) override {}
  void Copy2D(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
              int64_t rows) override {}

  // Kernels: shapes are checked as on the other backends, nothing is computed.
  void Embedding(const Tensor& ids, const Tensor& table, Tensor& out) override {}
  void GatherRows(const Tensor& src, const Tensor& rows, Tensor& out) override {}
  void Linear(const Tensor& x, const Tensor& w, Tensor& y) override { CheckLinearShapes(x, w, y); }
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {}
  void AddRmsNorm(Tensor& hidden, Tensor& residual, const Tensor& weight, float eps) override {}
  void Rope(const AttentionMeta& meta, const RopeParams& rope, int head_dim, Tensor& q, Tensor& k) override {}
  void WriteKvCache(const AttentionMeta& meta, const Tensor& k, const Tensor& v, Tensor& k_cache,
                    Tensor& v_cache) override {}
  void RopeQkvToCache(const AttentionMeta& meta, const RopeParams& rope, int head_dim, const Tensor& qkv,
                      Tensor& q, Tensor& k_cache, Tensor& v_cache) override {}
  void PagedAttention(const AttentionMeta& meta, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      int num_heads, int num_kv_heads, int head_dim, float scale, Tensor& out) override {}
  void SiluMulFused(const Tensor& gate_up, Tensor& out) override {}
  void Add(const Tensor& a, const Tensor& b, Tensor& out) override {}

  // Each row's token is NullToken of its sequence (rows[s].tokens); logprobs, when asked, are 0 with rank 1
  // and no alternatives.
  using Backend::Sample;
  [[nodiscard]] absl::Status Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                                    SampleLogprobs* out_logprobs) override;
  [[nodiscard]] absl::Status Synchronize() override { return absl::OkStatus(); }

  // Bytes allocated and not yet freed.
  int64_t allocated_bytes() const { return used_->load(std::memory_order_relaxed); }

 private:
  explicit NullBackend(int64_t capacity)
      : capacity_(capacity), used_(std::make_shared<std::atomic<int64_t>>(0)) {}

  int64_t capacity_;
  // Shared with every buffer (its header page holds a reference), which gives its bytes back when freed, even
  // after the backend is gone.
  std::shared_ptr<std::atomic<int64_t>> used_;
};

}  // namespace tessera
