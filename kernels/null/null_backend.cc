#include "kernels/null/null_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <new>

#include "core/str_cat.h"

namespace tessera {
namespace {

// Each buffer is one mapping: a header page (the mapping's size and a reference to the backend's counter),
// then the buffer's pages. The header is the only page an unused buffer touches.
struct Header {
  int64_t mapped = 0;  // bytes of the whole mapping
  int64_t bytes = 0;   // bytes accounted
  std::shared_ptr<std::atomic<int64_t>>* used = nullptr;
};

int64_t PageSize() { return static_cast<int64_t>(sysconf(_SC_PAGESIZE)); }

void Free(void* data) {
  char* base = static_cast<char*>(data) - PageSize();
  Header* header = reinterpret_cast<Header*>(base);
  (*header->used)->fetch_sub(header->bytes, std::memory_order_relaxed);
  delete header->used;
  munmap(base, static_cast<size_t>(header->mapped));
}

}  // namespace

int32_t NullToken(const int32_t* prompt, int64_t num_prompt_tokens, int64_t position, int64_t vocab) {
  constexpr uint64_t kOffset = 14695981039346656037ull, kPrime = 1099511628211ull;
  uint64_t h = kOffset;
  for (int64_t i = 0; i < num_prompt_tokens; ++i) {
    const uint32_t id = static_cast<uint32_t>(prompt[i]);
    for (int b = 0; b < 4; ++b) {
      h ^= (id >> (8 * b)) & 0xffu;
      h *= kPrime;
    }
  }
  h ^= static_cast<uint64_t>(position);
  h *= kPrime;
  const int64_t range = vocab - vocab / 16;
  return static_cast<int32_t>(h % static_cast<uint64_t>(range > 0 ? range : 1));
}

absl::StatusOr<std::unique_ptr<NullBackend>> NullBackend::Create(const NullBackendOptions& options) {
  if (options.memory_bytes <= 0) {
    return absl::InvalidArgumentError(Cat("null device: memory_bytes=", options.memory_bytes, " is not positive"));
  }
  return std::unique_ptr<NullBackend>(new NullBackend(options.memory_bytes));
}

absl::StatusOr<MemoryInfo> NullBackend::Memory() const { return MemoryInfo{capacity_, allocated_bytes()}; }

absl::StatusOr<DeviceBuffer> NullBackend::Allocate(int64_t bytes) {
  const int64_t used = allocated_bytes();
  if (bytes < 0 || used + bytes > capacity_) {
    return absl::ResourceExhaustedError(Cat("null device: cannot allocate ", bytes, " bytes: ", used, " of ",
                                            capacity_, " bytes are in use"));
  }
  const int64_t page = PageSize();
  const int64_t mapped = page + (bytes + page - 1) / page * page;
  void* base = mmap(nullptr, static_cast<size_t>(mapped), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        Cat("null device: reserving ", mapped, " bytes of address space failed: ", std::strerror(errno)));
  }
  Header* header = new (base) Header{mapped, bytes, new std::shared_ptr<std::atomic<int64_t>>(used_)};
  (*header->used)->fetch_add(bytes, std::memory_order_relaxed);
  return DeviceBuffer(static_cast<char*>(base) + page, bytes, &Free);
}

absl::Status NullBackend::CopyToHost(void* dst, const void* src, int64_t bytes) {
  std::memset(dst, 0, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

absl::Status NullBackend::Sample(const Tensor& logits, const SamplingRow* rows, int32_t* out_ids,
                                 SampleLogprobs* out_logprobs) {
  const int64_t num_rows = logits.dim(0), vocab = logits.dim(-1);
  for (int64_t s = 0; s < num_rows; ++s) {
    const SamplingRow& row = rows[s];
    out_ids[s] = NullToken(row.tokens, row.num_prompt_tokens, row.num_tokens, vocab);
    if (row.top_logprobs >= 0 && out_logprobs != nullptr) {
      SampleLogprobs& lp = out_logprobs[s];
      lp = SampleLogprobs();
      lp.token = out_ids[s];
      lp.rank = 1;
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera
