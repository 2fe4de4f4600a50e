// Move-only RAII owners of CUDA runtime objects, each made by a StatusOr factory: a stream, an event, device
// memory (as the project's DeviceBuffer, freed with cudaFree) and pinned host memory. Used by the CUDA
// backend and by GPU benchmarks; includes CUDA headers, so model code never includes it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace tessera {

// A non-blocking stream (does not synchronize with the legacy default stream).
class CudaStream {
 public:
  [[nodiscard]] static absl::StatusOr<CudaStream> Create();
  CudaStream() = default;
  CudaStream(CudaStream&& o) noexcept;
  CudaStream& operator=(CudaStream&& o) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  cudaStream_t get() const { return stream_; }

 private:
  explicit CudaStream(cudaStream_t s) : stream_(s) {}
  cudaStream_t stream_ = nullptr;
};

// An event with timing enabled (for benchmarks) or disabled (cheaper, for ordering).
enum class EventTiming { kDisabled, kEnabled };

class CudaEvent {
 public:
  [[nodiscard]] static absl::StatusOr<CudaEvent> Create(EventTiming timing = EventTiming::kDisabled);
  CudaEvent() = default;
  CudaEvent(CudaEvent&& o) noexcept;
  CudaEvent& operator=(CudaEvent&& o) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  ~CudaEvent();

  cudaEvent_t get() const { return event_; }
  [[nodiscard]] absl::Status Record(cudaStream_t stream);
  [[nodiscard]] absl::Status Synchronize();
  // Milliseconds between two recorded, completed timing events.
  [[nodiscard]] static absl::StatusOr<float> ElapsedMs(const CudaEvent& start, const CudaEvent& end);

 private:
  explicit CudaEvent(cudaEvent_t e) : event_(e) {}
  cudaEvent_t event_ = nullptr;
};

// cudaMalloc of `bytes` (at least 1) on the current device, owned by a DeviceBuffer whose deleter is
// cudaFree. Errors: RESOURCE_EXHAUSTED when the device is out of memory, INTERNAL otherwise.
[[nodiscard]] absl::StatusOr<DeviceBuffer> CudaAllocate(int64_t bytes);

// Page-locked host memory (cudaHostAlloc), for truly asynchronous copies. Move-only.
class PinnedBuffer {
 public:
  [[nodiscard]] static absl::StatusOr<PinnedBuffer> Create(int64_t bytes);
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }

 private:
  PinnedBuffer(void* data, int64_t bytes) : data_(data), bytes_(bytes) {}
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace tessera
