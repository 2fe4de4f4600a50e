// GPU ceilings: device-to-device copy bandwidth and cuBLASLt bf16 GEMM rate, each the median of several timed
// runs (CUDA events) on random data. Every handle is owned by a unique_ptr and released on every path.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "bench/gpu_roofline.h"

namespace tessera {
namespace {

// A CUDA or cuBLASLt handle (a pointer type) owned with its destroy function.
template <typename Handle, auto Destroy>
struct HandleDeleter {
  void operator()(Handle h) const { (void)Destroy(h); }
};
template <typename Handle, auto Destroy>
using Owned = std::unique_ptr<std::remove_pointer_t<Handle>, HandleDeleter<Handle, Destroy>>;

using DeviceMemory = Owned<void*, cudaFree>;
using Stream = Owned<cudaStream_t, cudaStreamDestroy>;
using Event = Owned<cudaEvent_t, cudaEventDestroy>;
using LtHandle = Owned<cublasLtHandle_t, cublasLtDestroy>;
using LtMatmulDesc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using LtLayout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using LtPreference = Owned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

absl::Status CudaError(cudaError_t e, const char* what) {
  std::string message = absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
  if (e == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  if (e == cudaErrorNoDevice || e == cudaErrorInvalidDevice || e == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

#define TESSERA_CUDA_RETURN(expr)                                                         \
  do {                                                                                    \
    cudaError_t tessera_cuda_error_ = (expr);                                             \
    if (tessera_cuda_error_ != cudaSuccess) return CudaError(tessera_cuda_error_, #expr); \
  } while (0)

#define TESSERA_LT_RETURN(expr)                                                                         \
  do {                                                                                                  \
    cublasStatus_t tessera_lt_status_ = (expr);                                                         \
    if (tessera_lt_status_ != CUBLAS_STATUS_SUCCESS) {                                                  \
      return absl::InternalError(absl::StrCat(#expr, ": ", cublasLtGetStatusName(tessera_lt_status_))); \
    }                                                                                                   \
  } while (0)

// Fills n bf16 values with uniform random numbers in [-scale, scale) (splitmix64 of the index and seed).
__global__ void FillRandomBf16(__nv_bfloat16* out, int64_t n, uint64_t seed, float scale) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    uint64_t x = seed + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    const float u = static_cast<float>(x >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    out[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
  }
}

absl::Status FillRandom(void* data, int64_t bytes, uint64_t seed, float scale, cudaStream_t stream) {
  FillRandomBf16<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(data), bytes / 2, seed, scale);
  TESSERA_CUDA_RETURN(cudaGetLastError());
  return absl::OkStatus();
}

absl::StatusOr<DeviceMemory> AllocateDevice(int64_t bytes, const char* what) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, static_cast<size_t>(bytes));
  if (e != cudaSuccess) {
    return CudaError(e, absl::StrCat("cudaMalloc of ", bytes, " bytes for ", what).c_str());
  }
  return DeviceMemory(p);
}

absl::StatusOr<Stream> CreateStream() {
  cudaStream_t s = nullptr;
  TESSERA_CUDA_RETURN(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return Stream(s);
}

absl::StatusOr<Event> CreateEvent() {
  cudaEvent_t e = nullptr;
  TESSERA_CUDA_RETURN(cudaEventCreate(&e));
  return Event(e);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs `op` (which enqueues work on `stream`) `warmup` times untimed, then `repeats` times between a pair of
// events each; returns the median milliseconds.
template <typename Op>
absl::StatusOr<double> MedianMs(cudaStream_t stream, int warmup, int repeats, Op op) {
  for (int i = 0; i < warmup; ++i) {
    absl::Status s = op();
    if (!s.ok()) return s;
  }
  TESSERA_CUDA_RETURN(cudaStreamSynchronize(stream));
  std::vector<Event> starts, stops;
  for (int i = 0; i < repeats; ++i) {
    absl::StatusOr<Event> start = CreateEvent(), stop = CreateEvent();
    if (!start.ok()) return start.status();
    if (!stop.ok()) return stop.status();
    starts.push_back(std::move(*start));
    stops.push_back(std::move(*stop));
  }
  for (int i = 0; i < repeats; ++i) {
    TESSERA_CUDA_RETURN(cudaEventRecord(starts[i].get(), stream));
    absl::Status s = op();
    if (!s.ok()) return s;
    TESSERA_CUDA_RETURN(cudaEventRecord(stops[i].get(), stream));
  }
  TESSERA_CUDA_RETURN(cudaStreamSynchronize(stream));
  std::vector<double> ms(repeats);
  for (int i = 0; i < repeats; ++i) {
    float t = 0;
    TESSERA_CUDA_RETURN(cudaEventElapsedTime(&t, starts[i].get(), stops[i].get()));
    ms[i] = t;
  }
  return Median(std::move(ms));
}

}  // namespace

absl::StatusOr<GpuInfo> QueryGpu(int device) {
  int count = 0;
  TESSERA_CUDA_RETURN(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    return absl::UnavailableError(absl::StrCat("no CUDA device ", device, " (", count, " present)"));
  }
  cudaDeviceProp prop{};
  TESSERA_CUDA_RETURN(cudaGetDeviceProperties(&prop, device));
  GpuInfo info;
  info.name = prop.name;
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.sm_count = prop.multiProcessorCount;
  info.total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info.l2_bytes = prop.l2CacheSize;
  return info;
}

absl::StatusOr<CopyCeiling> MeasureCopyBandwidth(int device, int64_t bytes, int repeats) {
  if (bytes <= 0 || repeats <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy bytes=", bytes, " and repeats=", repeats, " must be positive"));
  }
  TESSERA_CUDA_RETURN(cudaSetDevice(device));
  size_t free_bytes = 0, total_bytes = 0;
  TESSERA_CUDA_RETURN(cudaMemGetInfo(&free_bytes, &total_bytes));
  constexpr int64_t kMinBytes = int64_t{256} << 20;
  while (bytes > kMinBytes && 2 * bytes > static_cast<int64_t>(free_bytes * 0.9)) bytes /= 2;
  bytes &= ~int64_t{255};
  absl::StatusOr<Stream> stream = CreateStream();
  if (!stream.ok()) return stream.status();
  absl::StatusOr<DeviceMemory> src = AllocateDevice(bytes, "the copy source");
  if (!src.ok()) return src.status();
  absl::StatusOr<DeviceMemory> dst = AllocateDevice(bytes, "the copy destination");
  if (!dst.ok()) return dst.status();
  if (absl::Status s = FillRandom(src->get(), bytes, 0x5eed, 1.0f, stream->get()); !s.ok()) return s;
  cudaStream_t st = stream->get();
  void* to = dst->get();
  const void* from = src->get();
  absl::StatusOr<double> ms = MedianMs(st, 2, repeats, [&]() -> absl::Status {
    TESSERA_CUDA_RETURN(cudaMemcpyAsync(to, from, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, st));
    return absl::OkStatus();
  });
  if (!ms.ok()) return ms.status();
  CopyCeiling c;
  c.bytes = bytes;
  c.median_ms = *ms;
  c.gbps = 2.0 * static_cast<double>(bytes) / (*ms * 1e-3) / 1e9;
  return c;
}

absl::StatusOr<GemmCeiling> MeasureBf16Gemm(int device, GemmShape shape, int repeats) {
  if (shape.m <= 0 || shape.n <= 0 || shape.k <= 0 || repeats <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("GEMM m=", shape.m, " n=", shape.n, " k=", shape.k,
                                                   " repeats=", repeats, " must all be positive"));
  }
  TESSERA_CUDA_RETURN(cudaSetDevice(device));
  constexpr int64_t kWorkspaceBytes = int64_t{64} << 20;
  absl::StatusOr<Stream> stream = CreateStream();
  if (!stream.ok()) return stream.status();
  // Column-major as cuBLASLt sees it: A is stored k x m and used transposed ("TN", the layout of a Linear
  // with [out, in] weights), B is k x n, D is m x n.
  absl::StatusOr<DeviceMemory> a = AllocateDevice(2 * shape.m * shape.k, "GEMM input A");
  if (!a.ok()) return a.status();
  absl::StatusOr<DeviceMemory> b = AllocateDevice(2 * shape.k * shape.n, "GEMM input B");
  if (!b.ok()) return b.status();
  absl::StatusOr<DeviceMemory> d = AllocateDevice(2 * shape.m * shape.n, "GEMM output D");
  if (!d.ok()) return d.status();
  absl::StatusOr<DeviceMemory> workspace = AllocateDevice(kWorkspaceBytes, "the cuBLASLt workspace");
  if (!workspace.ok()) return workspace.status();
  cudaStream_t st = stream->get();
  if (absl::Status s = FillRandom(a->get(), 2 * shape.m * shape.k, 1, 1.0f, st); !s.ok()) return s;
  if (absl::Status s = FillRandom(b->get(), 2 * shape.k * shape.n, 2, 1.0f, st); !s.ok()) return s;
  if (absl::Status s = FillRandom(d->get(), 2 * shape.m * shape.n, 3, 1.0f, st); !s.ok()) return s;

  cublasLtHandle_t raw_handle = nullptr;
  TESSERA_LT_RETURN(cublasLtCreate(&raw_handle));
  LtHandle handle(raw_handle);
  cublasLtMatmulDesc_t raw_desc = nullptr;
  TESSERA_LT_RETURN(cublasLtMatmulDescCreate(&raw_desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  LtMatmulDesc desc(raw_desc);
  const cublasOperation_t transpose = CUBLAS_OP_T, no_transpose = CUBLAS_OP_N;
  TESSERA_LT_RETURN(
      cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)));
  TESSERA_LT_RETURN(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, &no_transpose,
                                                   sizeof(no_transpose)));
  auto make_layout = [](uint64_t rows, uint64_t cols, int64_t ld) -> absl::StatusOr<LtLayout> {
    cublasLtMatrixLayout_t layout = nullptr;
    TESSERA_LT_RETURN(cublasLtMatrixLayoutCreate(&layout, CUDA_R_16BF, rows, cols, ld));
    return LtLayout(layout);
  };
  absl::StatusOr<LtLayout> a_layout = make_layout(shape.k, shape.m, shape.k);
  if (!a_layout.ok()) return a_layout.status();
  absl::StatusOr<LtLayout> b_layout = make_layout(shape.k, shape.n, shape.k);
  if (!b_layout.ok()) return b_layout.status();
  absl::StatusOr<LtLayout> d_layout = make_layout(shape.m, shape.n, shape.m);
  if (!d_layout.ok()) return d_layout.status();
  cublasLtMatmulPreference_t raw_preference = nullptr;
  TESSERA_LT_RETURN(cublasLtMatmulPreferenceCreate(&raw_preference));
  LtPreference preference(raw_preference);
  const uint64_t workspace_bytes = kWorkspaceBytes;
  TESSERA_LT_RETURN(cublasLtMatmulPreferenceSetAttribute(
      preference.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  TESSERA_LT_RETURN(cublasLtMatmulAlgoGetHeuristic(handle.get(), desc.get(), a_layout->get(), b_layout->get(),
                                                   d_layout->get(), d_layout->get(), preference.get(), 1,
                                                   &heuristic, &found));
  if (found == 0) {
    return absl::NotFoundError(
        absl::StrCat("cuBLASLt offers no bf16 algorithm for m=", shape.m, " n=", shape.n, " k=", shape.k));
  }
  const float alpha = 1.0f, beta = 0.0f;
  absl::StatusOr<double> ms = MedianMs(st, 3, repeats, [&]() -> absl::Status {
    TESSERA_LT_RETURN(cublasLtMatmul(handle.get(), desc.get(), &alpha, a->get(), a_layout->get(), b->get(),
                                     b_layout->get(), &beta, d->get(), d_layout->get(), d->get(),
                                     d_layout->get(), &heuristic.algo, workspace->get(), kWorkspaceBytes,
                                     st));
    return absl::OkStatus();
  });
  if (!ms.ok()) return ms.status();
  GemmCeiling g;
  g.shape = shape;
  g.median_ms = *ms;
  g.tflops = 2.0 * static_cast<double>(shape.m) * static_cast<double>(shape.n) *
             static_cast<double>(shape.k) / (*ms * 1e-3) / 1e12;
  return g;
}

}  // namespace tessera
