// WeightLoader: brings checkpoint tensors, or a rank's slice of them, onto a backend as BF16, or on the CPU
// as their block type when the checkpoint holds them block-quantized (Q8_0, Q4_0, Q4_1; other devices get
// them dequantized to BF16). Every weight is copied (converted where needed) from the read-only file mapping
// into memory the backend allocates. On the CPU that is memory backed by 2 MiB pages (CpuBackend::Allocate):
// decode streams every weight once per step, and used in place from the file's 4 KiB page-cache pages it
// ran at 66-69% of the read bandwidth on a 2-vCPU VM against 78-92% from huge pages (bench/model_bench). Only
// the bytes of the requested slice are read. On the null device (a shapes-only checkpoint) nothing is read:
// each weight is an unbacked allocation of its real size.
#pragma once

#include <cstdint>
#include <string>
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
  // Rows [begin, begin + count) of a 1-D or 2-D tensor; `extra_zero_rows` zero rows are appended (which
  // forces a copy).
  [[nodiscard]] absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t begin, int64_t count,
                                                int64_t extra_zero_rows = 0);
  // Rows of several 2-D tensors with the same number of columns, stacked in order into one new tensor
  // [sum of counts, cols] (always a copy; quantized only when every part has the same block type): a fused
  // projection's weight (q, k, v or gate, up), each rank stacking its own shard's rows. Errors: as LoadRows,
  // and INVALID_ARGUMENT naming a tensor whose columns differ from the first's.
  struct RowSlice {
    std::string name;
    int64_t begin = 0;
    int64_t count = 0;
  };
  [[nodiscard]] absl::StatusOr<Tensor> LoadStackedRows(const std::vector<RowSlice>& slices);
  // Columns [begin, begin + count) of a 2-D tensor (a copy unless they are all of its columns).
  [[nodiscard]] absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin, int64_t count);

  // Bytes copied into owned memory so far.
  int64_t bytes_copied() const { return bytes_copied_; }
  // Moves out the buffers holding copied weights; they must outlive every Tensor the loader returned.
  std::vector<DeviceBuffer> TakeBuffers() { return std::move(buffers_); }

 private:
  enum class Slice { kRows, kColumns };
  // The dtype a tensor stored as `file_dtype` gets on this backend: its block type on the CPU, else BF16.
  DType TargetDType(DType file_dtype) const;
  // Copies the slice into a new `dtype` buffer of `rows` x `cols` (+ zero rows) on the backend.
  [[nodiscard]] absl::StatusOr<Tensor> Copy(std::string_view name, Slice slice, int64_t begin, int64_t rows,
                                            int64_t cols, int ndim, int64_t extra_zero_rows, DType dtype);

  const Checkpoint& checkpoint_;
  Backend& backend_;
  std::vector<DeviceBuffer> buffers_;
  int64_t bytes_copied_ = 0;
};

}  // namespace tessera
