// RAII owners of CUDA runtime objects (see cuda_resources.h) and the CUDA error helpers of cuda_check.h.
#include "kernels/cuda/cuda_resources.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"

namespace tessera {

absl::Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line) {
  std::string message = absl::StrCat(expr, " failed at ", file, ":", line, ": ", cudaGetErrorString(error));
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CublasStatus(cublasStatus_t status, const char* expr, const char* file, int line) {
  std::string message =
      absl::StrCat(expr, " failed at ", file, ":", line, ": ", cublasLtGetStatusString(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return absl::UnimplementedError(message);
  return absl::InternalError(message);
}

void CudaFatal(const absl::Status& status) {
  std::fprintf(stderr, "CUDA error: %s\n", std::string(status.message()).c_str());
  std::abort();
}

// --- CudaStream ---

absl::StatusOr<CudaStream> CudaStream::Create() {
  cudaStream_t s = nullptr;
  RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return CudaStream(s);
}
CudaStream::CudaStream(CudaStream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
CudaStream& CudaStream::operator=(CudaStream&& o) noexcept {
  if (this != &o) {
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = std::exchange(o.stream_, nullptr);
  }
  return *this;
}
CudaStream::~CudaStream() {
  if (stream_) cudaStreamDestroy(stream_);
}

// --- CudaEvent ---

absl::StatusOr<CudaEvent> CudaEvent::Create(EventTiming timing) {
  cudaEvent_t e = nullptr;
  RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(
      &e, timing == EventTiming::kEnabled ? cudaEventDefault : cudaEventDisableTiming));
  return CudaEvent(e);
}
CudaEvent::CudaEvent(CudaEvent&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
CudaEvent& CudaEvent::operator=(CudaEvent&& o) noexcept {
  if (this != &o) {
    if (event_) cudaEventDestroy(event_);
    event_ = std::exchange(o.event_, nullptr);
  }
  return *this;
}
CudaEvent::~CudaEvent() {
  if (event_) cudaEventDestroy(event_);
}
absl::Status CudaEvent::Record(cudaStream_t stream) {
  RETURN_IF_CUDA_ERROR(cudaEventRecord(event_, stream));
  return absl::OkStatus();
}
absl::Status CudaEvent::Synchronize() {
  RETURN_IF_CUDA_ERROR(cudaEventSynchronize(event_));
  return absl::OkStatus();
}
absl::StatusOr<float> CudaEvent::ElapsedMs(const CudaEvent& start, const CudaEvent& end) {
  float ms = 0;
  RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, start.event_, end.event_));
  return ms;
}

// --- Device and pinned memory ---

namespace {
void CudaFreeDeleter(void* p) { cudaFree(p); }
}  // namespace

absl::StatusOr<DeviceBuffer> CudaAllocate(int64_t bytes) {
  if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat("CudaAllocate: negative size ", bytes));
  void* p = nullptr;
  const cudaError_t error = cudaMalloc(&p, static_cast<size_t>(bytes > 0 ? bytes : 1));
  if (error != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of the runtime
    if (error == cudaErrorMemoryAllocation) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes, " bytes of GPU memory: ", cudaGetErrorString(error)));
    }
    return CudaStatus(error, "cudaMalloc", __FILE__, __LINE__);
  }
  return DeviceBuffer(p, bytes, &CudaFreeDeleter);
}

absl::StatusOr<PinnedBuffer> PinnedBuffer::Create(int64_t bytes) {
  void* p = nullptr;
  RETURN_IF_CUDA_ERROR(cudaHostAlloc(&p, static_cast<size_t>(bytes > 0 ? bytes : 1), cudaHostAllocDefault));
  return PinnedBuffer(p, bytes);
}
PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (data_) cudaFreeHost(data_);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
PinnedBuffer::~PinnedBuffer() {
  if (data_) cudaFreeHost(data_);
}

}  // namespace tessera
