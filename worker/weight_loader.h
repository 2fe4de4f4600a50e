// WeightLoader: brings checkpoint tensors onto a backend as BF16. On the CPU a BF16 tensor is used in place
// from the read-only file mapping (no copy); anything else (another dtype, another device) is converted and
// copied into memory the loader owns.
#pragma once

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/checkpoint/checkpoint.h"

namespace tessera {

class WeightLoader {
 public:
  WeightLoader(const Checkpoint& checkpoint, Backend& backend) : checkpoint_(checkpoint), backend_(backend) {}

  // The whole tensor `name` as BF16 on the backend. Errors: NOT_FOUND (naming the tensor), or the
  // checkpoint's read errors, or RESOURCE_EXHAUSTED from the backend.
  [[nodiscard]] absl::StatusOr<Tensor> Load(std::string_view name);

  // Bytes copied into owned memory so far (0 when every weight was used in place).
  int64_t bytes_copied() const { return bytes_copied_; }
  // Moves out the buffers holding copied weights; they must outlive every Tensor Load returned.
  std::vector<DeviceBuffer> TakeBuffers() { return std::move(buffers_); }

 private:
  const Checkpoint& checkpoint_;
  Backend& backend_;
  std::vector<DeviceBuffer> buffers_;
  int64_t bytes_copied_ = 0;
};

}  // namespace tessera
