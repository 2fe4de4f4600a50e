#include "worker/weight_loader.h"

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

int64_t Cols(const TensorInfo& info) {
  int64_t cols = 1;
  for (size_t i = 1; i < info.shape.size(); ++i) cols *= info.shape[i];
  return cols;
}

}  // namespace

DType WeightLoader::TargetDType(DType file_dtype) const {
  return IsQuantized(file_dtype) && backend_.device() == DeviceKind::kCpu ? file_dtype : DType::kBF16;
}

absl::StatusOr<Tensor> WeightLoader::Load(std::string_view name) {
  ASSIGN_OR_RETURN(TensorInfo info, checkpoint_.Info(name));
  return LoadRows(name, 0, info.shape.empty() ? 1 : info.shape[0]);
}

absl::StatusOr<Tensor> WeightLoader::LoadRows(std::string_view name, int64_t begin, int64_t count,
                                              int64_t extra_zero_rows) {
  ASSIGN_OR_RETURN(TensorInfo info, checkpoint_.Info(name));
  if (info.shape.size() > 2) {
    return absl::InvalidArgumentError(Cat("tensor ", name, " has ", info.shape.size(), " dims, not 1 or 2"));
  }
  return Copy(name, Slice::kRows, begin, count, Cols(info), static_cast<int>(info.shape.size()),
              extra_zero_rows, TargetDType(info.dtype));
}

absl::StatusOr<Tensor> WeightLoader::LoadColumns(std::string_view name, int64_t begin, int64_t count) {
  ASSIGN_OR_RETURN(TensorInfo info, checkpoint_.Info(name));
  if (info.shape.size() != 2) {
    return absl::InvalidArgumentError(Cat("tensor ", name, " is not 2-D: cannot take columns"));
  }
  if (begin == 0 && count == info.shape[1]) return LoadRows(name, 0, info.shape[0]);
  return Copy(name, Slice::kColumns, begin, info.shape[0], count, 2, 0, TargetDType(info.dtype));
}

absl::StatusOr<Tensor> WeightLoader::LoadStackedRows(const std::vector<RowSlice>& slices) {
  TESSERA_CHECK(!slices.empty());
  int64_t cols = 0, total_rows = 0;
  // Quantized parts stay quantized when they all have the same block type; any mix is stacked as BF16.
  std::optional<DType> dtype;
  for (const RowSlice& slice : slices) {
    ASSIGN_OR_RETURN(TensorInfo info, checkpoint_.Info(slice.name));
    const DType part = TargetDType(info.dtype);
    dtype = !dtype || *dtype == part ? part : DType::kBF16;
    if (info.shape.size() != 2) {
      return absl::InvalidArgumentError(Cat("tensor ", slice.name, " is not 2-D: cannot stack its rows"));
    }
    if (&slice == &slices.front()) cols = info.shape[1];
    if (info.shape[1] != cols) {
      return absl::InvalidArgumentError(Cat("tensor ", slice.name, " has ", info.shape[1], " columns but ",
                                            slices.front().name, " has ", cols, ": they cannot be fused"));
    }
    total_rows += slice.count;
  }
  const int64_t row_bytes = DTypeBytes(*dtype, cols), bytes = total_rows * row_bytes;
  ASSIGN_OR_RETURN(DeviceBuffer device, backend_.Allocate(bytes));
  Tensor dst = device.View(*dtype, {total_rows, cols});
  std::vector<char> host;
  char* staging = static_cast<char*>(device.data());
  if (backend_.device() == DeviceKind::kCuda) {
    host.resize(static_cast<size_t>(bytes));
    staging = host.data();
  }
  int64_t row = 0;
  for (const RowSlice& slice : slices) {
    Tensor part(staging + row * row_bytes, *dtype, {slice.count, cols});
    RETURN_IF_ERROR(checkpoint_.ReadRows(slice.name, slice.begin, slice.count, part));
    row += slice.count;
  }
  if (backend_.device() == DeviceKind::kCuda) backend_.CopyToDevice(dst.data(), host.data(), bytes);
  bytes_copied_ += bytes;
  buffers_.push_back(std::move(device));
  return dst;
}

absl::StatusOr<Tensor> WeightLoader::Copy(std::string_view name, Slice slice, int64_t begin, int64_t rows,
                                          int64_t cols, int ndim, int64_t extra_zero_rows, DType dtype) {
  const int64_t total_rows = rows + extra_zero_rows;
  const int64_t row_bytes = DTypeBytes(dtype, cols), bytes = total_rows * row_bytes;
  ASSIGN_OR_RETURN(DeviceBuffer device, backend_.Allocate(bytes));
  Tensor dst = ndim == 1 ? device.View(dtype, {total_rows}) : device.View(dtype, {total_rows, cols});
  // Read into host memory (the device buffer itself on the CPU; the null device's checkpoint reads nothing),
  // then copy to the device.
  std::vector<char> host;
  char* staging = static_cast<char*>(device.data());
  if (backend_.device() == DeviceKind::kCuda) {
    host.resize(static_cast<size_t>(bytes));
    staging = host.data();
  }
  Tensor slice_dst = ndim == 1 ? Tensor(staging, dtype, {rows}) : Tensor(staging, dtype, {rows, cols});
  if (slice == Slice::kRows) {
    RETURN_IF_ERROR(checkpoint_.ReadRows(name, begin, rows, slice_dst));
  } else {
    RETURN_IF_ERROR(checkpoint_.ReadColumns(name, begin, cols, slice_dst));
  }
  // Zero rows: all-zero bytes are zeros in BF16 and in every block type (scale 0).
  std::memset(staging + rows * row_bytes, 0, static_cast<size_t>(extra_zero_rows * row_bytes));
  if (backend_.device() == DeviceKind::kCuda) backend_.CopyToDevice(dst.data(), host.data(), bytes);
  bytes_copied_ += bytes;
  buffers_.push_back(std::move(device));
  return dst;
}

}  // namespace tessera
