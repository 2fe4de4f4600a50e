// CpuBackend: the Backend for host memory. Activations are F32; weights stay BF16 or in llama.cpp's Q8_0 /
// Q4_0 / Q4_1 blocks (possibly in a read-only mapping of the checkpoint). Linear runs hand-written GEMV
// kernels for decode-sized batches and oneDNN bf16 matmuls for prefill-sized ones; everything else is
// hand-written. All work runs on a fixed thread pool.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/sampler.h"

namespace tessera {

struct CpuBackendOptions {
  int num_threads = 0;  // 0 = all cores (std::thread::hardware_concurrency)
  // Linear: the GEMV / oneDNN crossover, the oneDNN path's activation precision and the GEMV kernel.
  LinearOptions linear;
};

class CpuBackend final : public Backend {
 public:
  // Errors: INVALID_ARGUMENT for num_threads < 0; INTERNAL when oneDNN cannot start.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const CpuBackendOptions& options);
  ~CpuBackend() override;

  int num_threads() const { return pool_->num_threads(); }
  // The Linear implementation (for tests and benchmarks that pick a path explicitly).
  CpuLinear& linear() { return *linear_; }

  // Backend. Every method runs synchronously on the calling thread plus the pool; one caller at a time.
  DeviceKind device() const override { return DeviceKind::kCpu; }
  DType activation_dtype() const override { return DType::kF32; }
  [[nodiscard]] absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes) override;
  void CopyToDevice(void* dst, const void* src, int64_t bytes) override;
  [[nodiscard]] absl::Status CopyToHost(void* dst, const void* src, int64_t bytes) override;
  void Copy(const Tensor& src, Tensor& dst) override;
  void Copy2D(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
              int64_t rows) override;
  // table BF16 or quantized (Q8_0 / Q4_0 / Q4_1, hidden size a multiple of 32): rows dequantized to fp32
  // exactly (w = q * d, Q4_1 q * d + m).
  void Embedding(const Tensor& ids, const Tensor& table, Tensor& out) override;
  void GatherRows(const Tensor& src, const Tensor& rows, Tensor& out) override;
  // x, y F32; w BF16 (CpuLinear::Forward) or Q8_0 / Q4_0 / Q4_1 with k a multiple of 32 (CHECKed;
  // CpuLinear::ForwardQuant, whose header states the quantized paths' extra rounding).
  void Linear(const Tensor& x, const Tensor& w, Tensor& y) override;
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void AddRmsNorm(Tensor& hidden, Tensor& residual, const Tensor& weight, float eps) override;
  // Positions come from meta.positions; inv_freq tables are computed once per (rope, head_dim) and cached.
  void Rope(const AttentionMeta& meta, const RopeParams& rope, int head_dim, Tensor& q, Tensor& k) override;
  // Slots < 0 are skipped (padding tokens).
  void WriteKvCache(const AttentionMeta& meta, const Tensor& k, const Tensor& v, Tensor& k_cache,
                    Tensor& v_cache) override;
  void RopeQkvToCache(const AttentionMeta& meta, const RopeParams& rope, int head_dim, const Tensor& qkv,
                      Tensor& q, Tensor& k_cache, Tensor& v_cache) override;
  // Token t at position p attends to its sequence's positions 0..p (through the block table).
  void PagedAttention(const AttentionMeta& meta, const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, int num_heads, int num_kv_heads, int head_dim, float scale,
                      Tensor& out) override;
  void SiluMulFused(const Tensor& gate_up, Tensor& out) override;
  void Add(const Tensor& a, const Tensor& b, Tensor& out) override;
  using Backend::Sample;
  [[nodiscard]] absl::Status Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                                    SampleLogprobs* out_logprobs) override;
  [[nodiscard]] absl::Status Synchronize() override;

  // Step graphs on the CPU: the captured calls are kept as a list and replayed one after another. They save
  // nothing here; they exist so that the model runner's graph path (padding, fixed metadata layout,
  // collectives between graph segments) runs, and is tested, on machines without a GPU. The capturable calls
  // are the compute ones (Copy through Add); the rest CHECK that no capture is in progress.
  [[nodiscard]] absl::Status BeginCapture() override;
  [[nodiscard]] absl::StatusOr<std::unique_ptr<StepGraph>> EndCapture() override;
  [[nodiscard]] absl::Status Replay(const StepGraph& graph) override;

 private:
  CpuBackend(std::unique_ptr<ThreadPool> pool, std::unique_ptr<CpuLinear> linear);
  const std::vector<float>& InvFreq(const RopeParams& rope, int head_dim);
  // Appends `call` to the capture in progress. Each capturable method starts with
  // `if (capture_ != nullptr) return Record(...)` (no std::function is built outside a capture).
  void Record(std::function<void()> call);

  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<CpuLinear> linear_;
  struct InvFreqEntry {
    RopeParams rope;
    int head_dim;
    std::vector<float> inv_freq;  // [head_dim / 2]
  };
  std::vector<InvFreqEntry> inv_freq_cache_;
  std::vector<SampleScratch> sample_scratch_;  // one per pool thread; grows to the vocabulary once
  std::unique_ptr<std::vector<std::function<void()>>> capture_;  // the calls recorded so far, while capturing
};

}  // namespace tessera
