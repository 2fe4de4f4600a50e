#include "worker/weight_loader.h"

#include <string>

#include "kernels/core/status_macros.h"

namespace tessera {

absl::StatusOr<Tensor> WeightLoader::Load(std::string_view name) {
  ASSIGN_OR_RETURN(TensorInfo info, checkpoint_.Info(name));
  if (info.dtype == DType::kBF16 && backend_.device() == DeviceKind::kCpu) {
    return checkpoint_.Map(name);
  }
  int64_t rows = info.shape.empty() ? 1 : info.shape[0];
  int64_t cols = 1;
  for (size_t i = 1; i < info.shape.size(); ++i) cols *= info.shape[i];
  int64_t bytes = rows * cols * DTypeSize(DType::kBF16);
  ASSIGN_OR_RETURN(DeviceBuffer device, backend_.Allocate(bytes));
  Tensor dst = info.shape.size() == 1 ? device.View(DType::kBF16, {rows}) : device.View(DType::kBF16, {rows, cols});
  if (backend_.device() == DeviceKind::kCpu) {
    RETURN_IF_ERROR(checkpoint_.ReadRows(name, 0, rows, dst));
  } else {
    std::vector<uint16_t> host(static_cast<size_t>(rows * cols));
    Tensor staging = info.shape.size() == 1 ? Tensor(host.data(), DType::kBF16, {rows})
                                            : Tensor(host.data(), DType::kBF16, {rows, cols});
    RETURN_IF_ERROR(checkpoint_.ReadRows(name, 0, rows, staging));
    backend_.CopyToDevice(dst.data(), host.data(), bytes);
  }
  bytes_copied_ += bytes;
  buffers_.push_back(std::move(device));
  return dst;
}

}  // namespace tessera
