// CudaBackend implementation: shape checks (the same as the CPU backend's, with BF16 activations), workspace
// management and the launches of cuBLASLt and of our kernels (cuda_kernels.h).
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "kernels/cuda/cublaslt_matmul.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_resources.h"
#include "kernels/rope_inv_freq.h"
#include "kernels/sampler.h"

namespace tessera {
namespace {

bool SameShape(const Tensor& a, const Tensor& b) {
  if (a.ndim() != b.ndim()) return false;
  for (int i = 0; i < a.ndim(); ++i) {
    if (a.dim(i) != b.dim(i)) return false;
  }
  return true;
}

bool SameRope(const RopeParams& a, const RopeParams& b) {
  return a.theta == b.theta && a.llama3_scaling == b.llama3_scaling && a.factor == b.factor &&
         a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
         a.original_max_position_embeddings == b.original_max_position_embeddings;
}

uint16_t* Bf16(const Tensor& t) {
  TESSERA_CHECK(t.dtype() == DType::kBF16);
  return t.data_as<uint16_t>();
}

// The free and total device memory, for messages about memory that ran out.
std::string MemoryReport() {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return "device memory unknown";
  }
  return absl::StrCat(free_bytes, " of ", total_bytes, " bytes of device memory free");
}

constexpr char kAttentionVariable[] = "TESSERA_CUDA_ATTENTION";

// The options' attention kernel, or for kAuto the environment's choice (auto when the variable is unset).
absl::StatusOr<AttentionKernel> ChooseAttentionKernel(AttentionKernel option) {
  const char* value = std::getenv(kAttentionVariable);
  if (value == nullptr) return option;
  const std::string name(value);
  AttentionKernel from_env;
  if (name == "auto") {
    from_env = AttentionKernel::kAuto;
  } else if (name == "simt") {
    from_env = AttentionKernel::kSimt;
  } else if (name == "mma") {
    from_env = AttentionKernel::kMma;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(kAttentionVariable, "=\"", name, "\" is not one of auto, simt, mma"));
  }
  return option == AttentionKernel::kAuto ? from_env : option;
}

}  // namespace

struct CudaBackend::Impl {
  int device = 0;
  cudaDeviceProp props{};
  CudaStream stream;
  std::unique_ptr<CublasLtMatmul> matmul;
  bool capturing = false;
  AttentionKernel attention_kernel = AttentionKernel::kAuto;

  struct InvFreqEntry {
    RopeParams rope;
    int head_dim;
    DeviceBuffer table;  // F32 [head_dim / 2]
  };
  std::vector<InvFreqEntry> inv_freq;

  DeviceBuffer attention_partial;  // the context split's partial results, grown on need

  int sample_capacity = 0;  // rows
  PinnedBuffer sample_params_host;
  PinnedBuffer sample_ids_host;
  DeviceBuffer sample_params;
  DeviceBuffer sample_ids;
  std::vector<float> sample_row_host;  // [V] one host-sampled row's logits
  SampleScratch sample_scratch;        // for the rows sampled on the host

  absl::Status broken;  // the first failure of an enqueued operation: sticky (see Backend's conventions)

  // Records the first failure (later ones are its consequences).
  void Fail(absl::Status status) {
    if (broken.ok()) broken = std::move(status);
  }
  // Records a failed CUDA call; true when `error` is a failure.
  bool Failed(cudaError_t error, const char* what) {
    if (error == cudaSuccess) return false;
    Fail(CudaStatus(error, what, __FILE__, __LINE__));
    return true;
  }
  // Before an operation: false (skip it) when the backend is broken or the device cannot be made current.
  bool Begin() { return broken.ok() && !Failed(cudaSetDevice(device), "cudaSetDevice"); }
  // After a kernel launch: records a launch error naming the operation.
  void CheckLaunch(const char* what) { Failed(cudaGetLastError(), what); }
  // Grows `buffer` to at least `bytes` (never inside a capture). False (recorded) when it cannot.
  bool Reserve(DeviceBuffer& buffer, int64_t bytes, const char* what) {
    if (buffer.bytes() >= bytes) return true;
    if (capturing) {
      Fail(absl::FailedPreconditionError(absl::StrCat(what, " must grow from ", buffer.bytes(), " to ", bytes,
                                                      " bytes inside a graph capture; warm up first")));
      return false;
    }
    if (Failed(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize")) return false;  // may be in use
    buffer = DeviceBuffer();
    auto fresh = CudaAllocate(bytes);
    if (!fresh.ok()) {
      Fail(absl::Status(fresh.status().code(), absl::StrCat(what, " cannot grow to ", bytes, " bytes (",
                                                            MemoryReport(), "): ", fresh.status().message())));
      return false;
    }
    buffer = std::move(fresh).value();
    return true;
  }
};

absl::StatusOr<int> CudaBackend::DeviceCount() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();
    return absl::UnavailableError(absl::StrCat("no CUDA device: ", cudaGetErrorString(error)));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device: cudaGetDeviceCount found none");
  return count;
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  ASSIGN_OR_RETURN(const AttentionKernel attention_kernel, ChooseAttentionKernel(options.attention_kernel));
  ASSIGN_OR_RETURN(const int count, DeviceCount());
  if (options.device_index < 0 || options.device_index >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("device_index ", options.device_index, " is out of range: ", count, " CUDA device(s)"));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = options.device_index;
  impl->attention_kernel = attention_kernel;
  RETURN_IF_CUDA_ERROR(cudaSetDevice(impl->device));
  RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&impl->props, impl->device));
  if (impl->props.major < 8) {
    return absl::UnavailableError(absl::StrCat("no CUDA device: ", impl->props.name,
                                               " has compute capability ", impl->props.major, ".",
                                               impl->props.minor, "; the CUDA backend needs 8.0 or newer"));
  }
  RETURN_IF_CUDA_ERROR(cuda::ConfigureAttention());
  RETURN_IF_CUDA_ERROR(cuda::ConfigureMmaAttention());
  ASSIGN_OR_RETURN(impl->stream, CudaStream::Create());
  ASSIGN_OR_RETURN(impl->matmul, CublasLtMatmul::Create(options.cublas_workspace_bytes));
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaBackend::~CudaBackend() {
  if (impl_) {
    cudaSetDevice(impl_->device);
    cudaStreamSynchronize(impl_->stream.get());
  }
}

int CudaBackend::device_index() const { return impl_->device; }
std::string CudaBackend::device_name() const { return impl_->props.name; }
int CudaBackend::multiprocessor_count() const { return impl_->props.multiProcessorCount; }
CUstream_st* CudaBackend::stream() const { return impl_->stream.get(); }
AttentionKernel CudaBackend::attention_kernel() const { return impl_->attention_kernel; }

absl::StatusOr<DeviceBuffer> CudaBackend::Allocate(int64_t bytes) {
  if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate: negative size ", bytes));
  RETURN_IF_CUDA_ERROR(cudaSetDevice(impl_->device));
  return CudaAllocate(bytes);
}

void CudaBackend::CopyToDevice(void* dst, const void* src, int64_t bytes) {
  TESSERA_CHECK(!impl_->capturing);  // a pageable source cannot be captured
  if (bytes <= 0 || !impl_->Begin()) return;
  impl_->Failed(
      cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, impl_->stream.get()),
      "CopyToDevice: cudaMemcpyAsync");
}

void CudaBackend::CopyRowsToDevice(void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch,
                                   int64_t row_bytes, int64_t rows) {
  TESSERA_CHECK(!impl_->capturing);
  if (row_bytes <= 0 || rows <= 0 || !impl_->Begin()) return;
  impl_->Failed(cudaMemcpy2DAsync(dst, static_cast<size_t>(dst_pitch), src, static_cast<size_t>(src_pitch),
                                  static_cast<size_t>(row_bytes), static_cast<size_t>(rows),
                                  cudaMemcpyHostToDevice, impl_->stream.get()),
                "CopyRowsToDevice: cudaMemcpy2DAsync");
}

absl::Status CudaBackend::CopyToHost(void* dst, const void* src, int64_t bytes) {
  TESSERA_CHECK(!impl_->capturing);
  if (impl_->Begin()) {
    if (bytes > 0) {
      impl_->Failed(
          cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, impl_->stream.get()),
          "CopyToHost: cudaMemcpyAsync");
    }
    if (impl_->broken.ok()) impl_->Failed(cudaStreamSynchronize(impl_->stream.get()), "CopyToHost: cudaStreamSynchronize");
  }
  return impl_->broken;
}

void CudaBackend::Copy(const Tensor& src, Tensor& dst) {
  TESSERA_CHECK(src.dtype() == dst.dtype() && src.numel() == dst.numel());
  if (src.data() == dst.data() || src.nbytes() == 0 || !impl_->Begin()) return;
  impl_->Failed(cudaMemcpyAsync(dst.data(), src.data(), static_cast<size_t>(src.nbytes()),
                                cudaMemcpyDeviceToDevice, impl_->stream.get()),
                "Copy: cudaMemcpyAsync");
}

void CudaBackend::Copy2D(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
                         int64_t rows) {
  TESSERA_CHECK(row_bytes >= 0 && rows >= 0 && src_pitch >= row_bytes && dst_pitch >= row_bytes);
  if (row_bytes == 0 || rows == 0 || !impl_->Begin()) return;
  impl_->Failed(cudaMemcpy2DAsync(dst, static_cast<size_t>(dst_pitch), src, static_cast<size_t>(src_pitch),
                                  static_cast<size_t>(row_bytes), static_cast<size_t>(rows),
                                  cudaMemcpyDeviceToDevice, impl_->stream.get()),
                "Copy2D: cudaMemcpy2DAsync");
}

void CudaBackend::Embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  TESSERA_CHECK(ids.dtype() == DType::kI32 && table.dtype() == DType::kBF16 && out.dtype() == DType::kBF16);
  TESSERA_CHECK(table.ndim() == 2 && out.ndim() == 2 && out.dim(0) == ids.numel() &&
                out.dim(1) == table.dim(1));
  if (!impl_->Begin()) return;
  cuda::LaunchCopyRows(table.data(), ids.data_as<int32_t>(), out.data(), nullptr, ids.numel(),
                       table.dim(1) * 2, impl_->stream.get());
  impl_->CheckLaunch("Embedding");
}

void CudaBackend::GatherRows(const Tensor& src, const Tensor& rows, Tensor& out) {
  TESSERA_CHECK(rows.dtype() == DType::kI32 && src.dtype() == out.dtype() && src.ndim() >= 1);
  TESSERA_CHECK(out.ndim() == src.ndim() && out.dim(0) == rows.numel());
  const int64_t row_bytes = src.dim(0) == 0 ? 0 : src.nbytes() / src.dim(0);
  TESSERA_CHECK(out.nbytes() == rows.numel() * row_bytes);
  if (!impl_->Begin()) return;
  cuda::LaunchCopyRows(src.data(), rows.data_as<int32_t>(), out.data(), nullptr, rows.numel(), row_bytes,
                       impl_->stream.get());
  impl_->CheckLaunch("GatherRows");
}

void CudaBackend::Linear(const Tensor& x, const Tensor& w, Tensor& y) {
  TESSERA_CHECK(x.dtype() == DType::kBF16 && w.dtype() == DType::kBF16 &&
                (y.dtype() == DType::kBF16 || y.dtype() == DType::kF32));
  const auto [m, n, k] = CheckLinearShapes(x, w, y);
  if (m == 0 || !impl_->Begin()) return;
  const absl::Status s =
      impl_->matmul->Run(x.data(), w.data(), y.data(), y.dtype(), m, n, k, impl_->stream.get());
  if (!s.ok()) impl_->Fail(s);
}

void CudaBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  TESSERA_CHECK(x.dtype() == DType::kBF16 && out.dtype() == DType::kBF16 && weight.dtype() == DType::kBF16);
  const int64_t h = weight.numel();
  TESSERA_CHECK(h > 0 && x.dim(-1) == h && out.numel() == x.numel());
  if (!impl_->Begin()) return;
  cuda::LaunchRmsNorm(Bf16(x), Bf16(weight), Bf16(out), x.numel() / h, h, eps, impl_->stream.get());
  impl_->CheckLaunch("RmsNorm");
}

void CudaBackend::AddRmsNorm(Tensor& hidden, Tensor& residual, const Tensor& weight, float eps) {
  TESSERA_CHECK(hidden.dtype() == DType::kBF16 && residual.dtype() == DType::kBF16 &&
                weight.dtype() == DType::kBF16);
  const int64_t h = weight.numel();
  TESSERA_CHECK(h > 0 && hidden.dim(-1) == h && residual.numel() == hidden.numel());
  if (!impl_->Begin()) return;
  cuda::LaunchAddRmsNorm(Bf16(hidden), Bf16(residual), Bf16(weight), hidden.numel() / h, h, eps,
                         impl_->stream.get());
  impl_->CheckLaunch("AddRmsNorm");
}

const float* CudaBackend::InvFreq(const RopeParams& rope, int head_dim) {
  for (const Impl::InvFreqEntry& e : impl_->inv_freq) {
    if (e.head_dim == head_dim && SameRope(e.rope, rope)) return static_cast<const float*>(e.table.data());
  }
  if (impl_->capturing) {  // the table is uploaded on first use
    impl_->Fail(absl::FailedPreconditionError("the RoPE table must be uploaded inside a graph capture; warm up first"));
    return nullptr;
  }
  const std::vector<float> host = RopeInvFreq(rope, head_dim);
  auto table = CudaAllocate(static_cast<int64_t>(host.size() * sizeof(float)));
  if (!table.ok()) {
    impl_->Fail(table.status());
    return nullptr;
  }
  if (impl_->Failed(cudaMemcpy(table->data(), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice),
                    "Rope: uploading the inv_freq table")) {
    return nullptr;
  }
  impl_->inv_freq.push_back({rope, head_dim, std::move(table).value()});
  return static_cast<const float*>(impl_->inv_freq.back().table.data());
}

void CudaBackend::Rope(const AttentionMeta& meta, const RopeParams& rope, int head_dim, Tensor& q,
                       Tensor& k) {
  TESSERA_CHECK(q.dtype() == DType::kBF16 && k.dtype() == DType::kBF16);
  TESSERA_CHECK(head_dim > 0 && head_dim % 2 == 0);
  const int64_t tokens = meta.num_tokens;
  if (tokens == 0) return;
  TESSERA_CHECK(q.numel() % (tokens * head_dim) == 0 && k.numel() % (tokens * head_dim) == 0);
  const int nq = static_cast<int>(q.numel() / (tokens * head_dim));
  const int nk = static_cast<int>(k.numel() / (tokens * head_dim));
  if (!impl_->Begin()) return;
  const float* inv_freq = InvFreq(rope, head_dim);
  if (inv_freq == nullptr) return;
  cuda::LaunchRope(meta.positions, inv_freq, tokens, head_dim, nq, nk, Bf16(q), Bf16(k), impl_->stream.get());
  impl_->CheckLaunch("Rope");
}

void CudaBackend::RopeQkvToCache(const AttentionMeta& meta, const RopeParams& rope, int head_dim,
                                 const Tensor& qkv, Tensor& q, Tensor& k_cache, Tensor& v_cache) {
  TESSERA_CHECK(qkv.dtype() == DType::kBF16 && q.dtype() == DType::kBF16 && k_cache.dtype() == DType::kBF16 &&
                v_cache.dtype() == DType::kBF16);
  TESSERA_CHECK(head_dim > 0 && head_dim % 2 == 0);
  TESSERA_CHECK(k_cache.ndim() == 4 && SameShape(k_cache, v_cache) && k_cache.dim(1) == meta.block_size &&
                k_cache.dim(3) == head_dim);
  const int64_t tokens = meta.num_tokens;
  if (tokens == 0) return;
  const int nkv = static_cast<int>(k_cache.dim(2));
  TESSERA_CHECK(q.numel() % (tokens * head_dim) == 0);
  const int nq = static_cast<int>(q.numel() / (tokens * head_dim));
  TESSERA_CHECK(qkv.numel() == tokens * (nq + 2 * nkv) * head_dim);
  if (!impl_->Begin()) return;
  const float* inv_freq = InvFreq(rope, head_dim);
  if (inv_freq == nullptr) return;
  cuda::LaunchRopeQkvToCache(meta.positions, meta.slot_mapping, inv_freq, tokens, head_dim, nq, nkv, Bf16(qkv),
                             Bf16(q), Bf16(k_cache), Bf16(v_cache), impl_->stream.get());
  impl_->CheckLaunch("RopeQkvToCache");
}

void CudaBackend::WriteKvCache(const AttentionMeta& meta, const Tensor& k, const Tensor& v, Tensor& k_cache,
                               Tensor& v_cache) {
  TESSERA_CHECK(k.dtype() == DType::kBF16 && v.dtype() == DType::kBF16 && k_cache.dtype() == DType::kBF16 &&
                v_cache.dtype() == DType::kBF16);
  TESSERA_CHECK(k_cache.ndim() == 4 && SameShape(k_cache, v_cache) && SameShape(k, v));
  const int64_t row = k_cache.dim(2) * k_cache.dim(3);  // nkv * head_dim
  TESSERA_CHECK(k_cache.dim(1) == meta.block_size && k.numel() == meta.num_tokens * row);
  if (!impl_->Begin()) return;
  cuda::LaunchCopyRows(k.data(), nullptr, k_cache.data(), meta.slot_mapping, meta.num_tokens, row * 2,
                       impl_->stream.get());
  cuda::LaunchCopyRows(v.data(), nullptr, v_cache.data(), meta.slot_mapping, meta.num_tokens, row * 2,
                       impl_->stream.get());
  impl_->CheckLaunch("WriteKvCache");
}

void CudaBackend::PagedAttention(const AttentionMeta& meta, const Tensor& q, const Tensor& k_cache,
                                 const Tensor& v_cache, int num_heads, int num_kv_heads, int head_dim,
                                 float scale, Tensor& out) {
  TESSERA_CHECK(q.dtype() == DType::kBF16 && out.dtype() == DType::kBF16 && k_cache.dtype() == DType::kBF16 &&
                v_cache.dtype() == DType::kBF16);
  TESSERA_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0 &&
                num_heads / num_kv_heads <= cuda::kAttentionMaxGroup);
  TESSERA_CHECK(head_dim > 0 && head_dim % 32 == 0 && head_dim <= cuda::kAttentionMaxHeadDim);
  TESSERA_CHECK(k_cache.ndim() == 4 && SameShape(k_cache, v_cache) && k_cache.dim(1) == meta.block_size &&
                k_cache.dim(2) == num_kv_heads && k_cache.dim(3) == head_dim);
  const int64_t q_elems = static_cast<int64_t>(meta.num_tokens) * num_heads * head_dim;
  TESSERA_CHECK(q.numel() == q_elems && out.numel() == q_elems);
  if (meta.num_tokens == 0) return;
  TESSERA_CHECK(meta.max_query_len >= 1 && meta.max_seq_len >= 1);
  if (!impl_->Begin()) return;

  cuda::AttentionLaunch a;
  a.query_start = meta.query_start;
  a.seq_lens = meta.seq_lens;
  a.block_tables = meta.block_tables;
  a.positions = meta.positions;
  a.q = Bf16(q);
  a.k_cache = Bf16(k_cache);
  a.v_cache = Bf16(v_cache);
  a.out = Bf16(out);
  a.num_seqs = meta.num_seqs;
  a.num_tokens = meta.num_tokens;
  a.max_blocks_per_seq = meta.max_blocks_per_seq;
  a.block_size = meta.block_size;
  a.max_query_len = meta.max_query_len;
  a.num_heads = num_heads;
  a.num_kv_heads = num_kv_heads;
  a.head_dim = head_dim;
  a.scale = scale;

  const AttentionPlan plan = PlanAttention(impl_->attention_kernel,
                                           {.num_seqs = meta.num_seqs,
                                            .num_tokens = meta.num_tokens,
                                            .max_query_len = meta.max_query_len,
                                            .max_seq_len = meta.max_seq_len,
                                            .num_heads = num_heads,
                                            .num_kv_heads = num_kv_heads,
                                            .head_dim = head_dim},
                                           impl_->props.multiProcessorCount);
  if (plan.mma) {
    cuda::LaunchPagedAttentionMma(a, impl_->stream.get());
  } else {
    if (plan.num_parts > 1) {
      a.num_parts = plan.num_parts;
      if (!impl_->Reserve(impl_->attention_partial, plan.partial_bytes, "the attention split workspace")) return;
      a.partial = static_cast<float*>(impl_->attention_partial.data());
    }
    cuda::LaunchPagedAttention(a, impl_->stream.get());
  }
  impl_->CheckLaunch("PagedAttention");
}

void CudaBackend::SiluMulFused(const Tensor& gate_up, Tensor& out) {
  const int64_t width = out.dim(-1);
  TESSERA_CHECK(width > 0 && gate_up.numel() == 2 * out.numel() && gate_up.dim(-1) == 2 * width);
  if (!impl_->Begin()) return;
  cuda::LaunchSiluMulFused(Bf16(gate_up), Bf16(out), out.numel() / width, width, impl_->stream.get());
  impl_->CheckLaunch("SiluMulFused");
}

void CudaBackend::Add(const Tensor& a, const Tensor& b, Tensor& out) {
  TESSERA_CHECK(a.numel() == b.numel() && out.numel() == a.numel());
  if (!impl_->Begin()) return;
  cuda::LaunchAdd(Bf16(a), Bf16(b), Bf16(out), a.numel(), impl_->stream.get());
  impl_->CheckLaunch("Add");
}

namespace {

// Rows the device kernel samples: greedy rows whose logits are not changed and that want no logprobs. Every
// other row (random ones, and any row with penalties, logit bias, banned ids or logprobs) is copied to the
// host and sampled by kernels/sampler.h's SampleRow, the definition: the simplest way to keep one definition
// until sampler.cu implements it (id-order draw over weight-threshold sets, Exp32 weights). Rows are
// independent either way, so tokens do not depend on the batch.
bool DeviceSamples(const SamplingRow& row) {
  const bool greedy = !(row.temperature >= kGreedyBelowTemperature);
  const bool penalties =
      row.num_tokens > 0 && ((row.repetition_penalty > 0.0f && row.repetition_penalty != 1.0f) ||
                             row.presence_penalty != 0.0f || row.frequency_penalty != 0.0f);
  return greedy && !penalties && row.num_logit_bias == 0 && row.num_banned_ids == 0 && row.top_logprobs < 0;
}

}  // namespace

absl::Status CudaBackend::Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                                 SampleLogprobs* out_logprobs) {
  TESSERA_CHECK(logits.dtype() == DType::kF32 && logits.ndim() == 2);
  TESSERA_CHECK(!impl_->capturing);
  const int64_t num_rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  if (num_rows == 0) return impl_->broken;
  TESSERA_CHECK(vocab > 0 && vocab < (int64_t{1} << 31));
  Impl& im = *impl_;
  if (!im.Begin()) return im.broken;
  // Every CUDA call below returns the backend's (sticky) failure when it fails.
#define TESSERA_SAMPLE_CUDA(expr) \
  if (im.Failed((expr), #expr)) return im.broken
  if (num_rows > im.sample_capacity) {  // grows rarely: to the largest batch seen, rounded up
    const int capacity = static_cast<int>(std::max<int64_t>(num_rows, 2 * int64_t{im.sample_capacity}));
    TESSERA_SAMPLE_CUDA(cudaStreamSynchronize(im.stream.get()));
    auto params_host = PinnedBuffer::Create(capacity * int64_t{sizeof(cuda::SampleParams)});
    auto ids_host = PinnedBuffer::Create(capacity * int64_t{sizeof(int32_t)});
    auto params = CudaAllocate(capacity * int64_t{sizeof(cuda::SampleParams)});
    auto ids = CudaAllocate(capacity * int64_t{sizeof(int32_t)});
    for (const absl::Status& s : {params_host.status(), ids_host.status(), params.status(), ids.status()}) {
      if (!s.ok()) {
        im.Fail(absl::Status(s.code(), absl::StrCat("Sample: buffers for ", capacity, " rows: ", s.message())));
        return im.broken;
      }
    }
    im.sample_params_host = std::move(params_host).value();
    im.sample_ids_host = std::move(ids_host).value();
    im.sample_params = std::move(params).value();
    im.sample_ids = std::move(ids).value();
    im.sample_capacity = capacity;
  }
  auto* params = static_cast<cuda::SampleParams*>(im.sample_params_host.data());
  bool any_host = false;
  for (int64_t r = 0; r < num_rows; ++r) {
    TESSERA_CHECK(out_logprobs != nullptr || rows[r].top_logprobs < 0);
    // Host rows get a greedy launch too (cheap; the result is replaced below).
    params[r] = cuda::SampleParams{0.0f, 0, 1.0f, 0, 0.0};
    any_host = any_host || !DeviceSamples(rows[r]);
  }
  const size_t params_bytes = static_cast<size_t>(num_rows) * sizeof(cuda::SampleParams);
  TESSERA_SAMPLE_CUDA(cudaMemcpyAsync(im.sample_params.data(), params, params_bytes, cudaMemcpyHostToDevice,
                                      im.stream.get()));
  cuda::LaunchSample(logits.data_as<float>(), num_rows, vocab,
                     static_cast<const cuda::SampleParams*>(im.sample_params.data()),
                     static_cast<int32_t*>(im.sample_ids.data()), im.stream.get());
  TESSERA_SAMPLE_CUDA(cudaGetLastError());
  TESSERA_SAMPLE_CUDA(cudaMemcpyAsync(im.sample_ids_host.data(), im.sample_ids.data(),
                                      static_cast<size_t>(num_rows) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                      im.stream.get()));
  TESSERA_SAMPLE_CUDA(cudaStreamSynchronize(im.stream.get()));
  std::memcpy(out_ids, im.sample_ids_host.data(), static_cast<size_t>(num_rows) * sizeof(int32_t));
  if (!any_host) return absl::OkStatus();
  im.sample_row_host.resize(static_cast<size_t>(vocab));
  const size_t row_bytes = static_cast<size_t>(vocab) * sizeof(float);
  for (int64_t r = 0; r < num_rows; ++r) {
    if (DeviceSamples(rows[r])) continue;
    TESSERA_SAMPLE_CUDA(cudaMemcpyAsync(im.sample_row_host.data(), logits.data_as<float>() + r * vocab, row_bytes,
                                        cudaMemcpyDeviceToHost, im.stream.get()));
    TESSERA_SAMPLE_CUDA(cudaStreamSynchronize(im.stream.get()));
    out_ids[r] = SampleRow(im.sample_row_host.data(), vocab, rows[r], im.sample_scratch,
                           out_logprobs != nullptr ? out_logprobs + r : nullptr);
  }
#undef TESSERA_SAMPLE_CUDA
  return absl::OkStatus();
}

absl::Status CudaBackend::Synchronize() {
  TESSERA_CHECK(!impl_->capturing);  // would end the capture with an error
  if (impl_->Begin()) impl_->Failed(cudaStreamSynchronize(impl_->stream.get()), "cudaStreamSynchronize");
  return impl_->broken;
}

absl::Status CudaBackend::BeginCapture() {
  if (impl_->capturing)
    return absl::FailedPreconditionError("BeginCapture: a capture is already in progress");
  if (!impl_->Begin()) return impl_->broken;
  RETURN_IF_CUDA_ERROR(cudaStreamBeginCapture(impl_->stream.get(), cudaStreamCaptureModeThreadLocal));
  impl_->capturing = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StepGraph>> CudaBackend::EndCapture() {
  if (!impl_->capturing) return absl::FailedPreconditionError("EndCapture without BeginCapture");
  impl_->capturing = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(impl_->stream.get(), &graph);
  if (!impl_->broken.ok()) {  // an operation failed during the capture: that is the cause
    if (graph != nullptr) cudaGraphDestroy(graph);
    return impl_->broken;
  }
  RETURN_IF_CUDA_ERROR(ended);
  size_t nodes = 0;
  cudaGraphGetNodes(graph, nullptr, &nodes);
  absl::StatusOr<CudaGraph> instantiated = CudaGraph::Instantiate(graph);
  if (!instantiated.ok()) {
    return absl::Status(instantiated.status().code(),
                        absl::StrCat("instantiating a captured step of ", nodes, " nodes (", MemoryReport(),
                                     "): ", instantiated.status().message()));
  }
  return std::unique_ptr<StepGraph>(new CudaGraph(std::move(instantiated).value()));
}

absl::Status CudaBackend::Replay(const StepGraph& graph) {
  if (impl_->capturing) return absl::FailedPreconditionError("Replay during a capture");
  const auto* cuda_graph = dynamic_cast<const CudaGraph*>(&graph);
  if (cuda_graph == nullptr) {
    return absl::InvalidArgumentError("Replay: the graph was not captured by a CudaBackend");
  }
  if (!impl_->Begin()) return impl_->broken;
  return cuda_graph->Launch(impl_->stream.get());
}

}  // namespace tessera
