// CudaBackend: the Backend for one NVIDIA GPU. Activations are BF16 with fp32 math inside every kernel; GEMMs
// run through cuBLASLt (bf16 in, fp32 accumulate, bf16 or fp32 out), everything else through our own kernels
// (kernels/cuda/*.cu). All work is enqueued on one stream owned by the backend. This header includes no CUDA
// header (pimpl), so worker/ and tools/ may include it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/cuda_graph.h"

struct CUstream_st;

namespace tessera {

struct CudaBackendOptions {
  int device_index = 0;                                // which GPU (cudaSetDevice)
  int64_t cublas_workspace_bytes = int64_t{32} << 20;  // cuBLASLt workspace, allocated once
  AttentionKernel attention_kernel = AttentionKernel::kAuto;
};

class CudaBackend final : public Backend {
 public:
  // Errors: INVALID_ARGUMENT naming the variable and its value when TESSERA_CUDA_ATTENTION is set to
  // anything but auto, simt or mma (checked first, with or without a GPU); UNAVAILABLE "no CUDA device: <the
  // runtime's message>" (one line) when the machine has no usable GPU or driver; INVALID_ARGUMENT for a
  // device_index out of range; RESOURCE_EXHAUSTED / INTERNAL when the stream, cuBLASLt or the workspace
  // cannot be created.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options);
  // How many CUDA devices this process sees. Errors: UNAVAILABLE as Create.
  [[nodiscard]] static absl::StatusOr<int> DeviceCount();
  ~CudaBackend() override;

  int device_index() const;
  std::string device_name() const;  // e.g. "NVIDIA H200"
  int multiprocessor_count() const;
  CUstream_st* stream() const;               // the stream every method enqueues on (for benchmarks' events)
  AttentionKernel attention_kernel() const;  // the options' choice, or TESSERA_CUDA_ATTENTION's for kAuto

  // Backend. Methods enqueue on stream() and return at once unless they say otherwise; one caller thread at a
  // time; each makes device_index() current on the calling thread first. A failed launch, CUDA call or
  // workspace growth makes the backend broken (Backend's conventions): INTERNAL / RESOURCE_EXHAUSTED naming
  // the operation (and for memory the bytes wanted and the device's free and total), returned by
  // Synchronize, CopyToHost, Sample, EndCapture and Replay from then on.
  DeviceKind device() const override { return DeviceKind::kCuda; }
  DType activation_dtype() const override { return DType::kBF16; }
  void* native_stream() const override { return stream(); }
  // cudaMalloc (256-byte aligned). Errors: RESOURCE_EXHAUSTED when the GPU is out of memory.
  [[nodiscard]] absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes) override;
  // Asynchronous. `src` may be reused on return when it is pageable memory (the runtime stages it); pinned
  // memory must stay unchanged until the next Synchronize.
  void CopyToDevice(void* dst, const void* src, int64_t bytes) override;
  // Synchronous: the data is in `dst` on return (earlier work on the stream is finished too).
  [[nodiscard]] absl::Status CopyToHost(void* dst, const void* src, int64_t bytes) override;
  void Copy(const Tensor& src, Tensor& dst) override;
  // One cudaMemcpy2DAsync, device to device.
  void Copy2D(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
              int64_t rows) override;
  // out: BF16.
  void Embedding(const Tensor& ids, const Tensor& table, Tensor& out) override;
  // Rows are trusted to be in range (not checked on the device).
  void GatherRows(const Tensor& src, const Tensor& rows, Tensor& out) override;
  // x: BF16; y: BF16, or F32 for logits. The cuBLASLt algorithm is chosen once per (M, N, K, y dtype,
  // alignment) and cached; a shape cuBLASLt cannot run breaks the backend with an error naming it.
  void Linear(const Tensor& x, const Tensor& w, Tensor& y) override;
  // BF16 in and out, fp32 math. AddRmsNorm stores the residual sum rounded to BF16 and normalizes that.
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void AddRmsNorm(Tensor& hidden, Tensor& residual, const Tensor& weight, float eps) override;
  // inv_freq tables (kernels/rope_inv_freq.h's RopeInvFreq) are computed on the host and uploaded once per
  // (rope, head_dim), on first use (so not first inside a graph capture).
  void Rope(const AttentionMeta& meta, const RopeParams& rope, int head_dim, Tensor& q, Tensor& k) override;
  // One launch; the same RoPE arithmetic as Rope. Slots < 0 are skipped, others trusted.
  void RopeQkvToCache(const AttentionMeta& meta, const RopeParams& rope, int head_dim, const Tensor& qkv,
                      Tensor& q, Tensor& k_cache, Tensor& v_cache) override;
  // Slots < 0 are skipped; slots are trusted to be inside the cache.
  void WriteKvCache(const AttentionMeta& meta, const Tensor& k, const Tensor& v, Tensor& k_cache,
                    Tensor& v_cache) override;
  // head_dim a multiple of 32 and <= 256; num_heads / num_kv_heads <= 16 (CHECKed). The kernel follows
  // attention_kernel() (see AttentionKernel). Decode steps with few sequences split long contexts across
  // blocks; the split's workspace grows on first need (not inside a capture: warm up first).
  void PagedAttention(const AttentionMeta& meta, const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, int num_heads, int num_kv_heads, int head_dim, float scale,
                      Tensor& out) override;
  void SiluMulFused(const Tensor& gate_up, Tensor& out) override;
  void Add(const Tensor& a, const Tensor& b, Tensor& out) override;
  // Synchronous (waits for the stream). Greedy rows without penalties, bias, banned ids or logprobs are
  // sampled on the device (argmax, exactly the CPU's); every other row is copied to the host and sampled by
  // kernels/sampler.h's SampleRow, so tokens are exactly the CPU backend's.
  using Backend::Sample;
  [[nodiscard]] absl::Status Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                                    SampleLogprobs* out_logprobs) override;
  [[nodiscard]] absl::Status Synchronize() override;

  // The rows go in one cudaMemcpy2DAsync.
  void CopyRowsToDevice(void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t row_bytes,
                        int64_t rows) override;

  // Step graphs are CUDA graphs (Backend's contract). BeginCapture starts capturing this backend's stream
  // (thread-local mode); EndCapture returns a CudaGraph; Replay enqueues it on the stream and returns at
  // once. Beyond Backend's list, max_seq_len is baked in too: it sizes the attention split, so capture with
  // the largest context the graph will serve (every replayed sequence's context must be <= it); and the first
  // use of a Linear shape, RoPE table or attention split size must come before the capture.
  [[nodiscard]] absl::Status BeginCapture() override;
  [[nodiscard]] absl::StatusOr<std::unique_ptr<StepGraph>> EndCapture() override;
  [[nodiscard]] absl::Status Replay(const StepGraph& graph) override;

 private:
  struct Impl;
  explicit CudaBackend(std::unique_ptr<Impl> impl);
  // The device inv_freq table of (rope, head_dim), uploaded on first use; null (failure recorded) when it
  // cannot be (inside a capture, or out of memory).
  const float* InvFreq(const RopeParams& rope, int head_dim);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
