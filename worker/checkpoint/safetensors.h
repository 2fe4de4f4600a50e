// Reader for the safetensors format: an 8-byte little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets}, then the data area. The header parser is pure (no I/O) so it can be
// fuzzed.
//
// Error rule: every malformed or truncated file is INVALID_ARGUMENT; a missing file is NOT_FOUND. Messages
// start with the file name and name the tensor when one is at fault.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "worker/checkpoint/mapped_file.h"

namespace tessera {

// Block-quantized tensors (DType kQ8_0, kQ4_0, kQ4_1: llama.cpp's blocks, kept by `import-gguf --keep-quant`)
// are stored as plain safetensors: dtype "U8", the shape with its last dimension in bytes (a weight [n, k]
// is [n, k / 32 * block bytes]), and one __metadata__ entry "<this prefix><tensor name>": "Q8_0" (or "Q4_0",
// "Q4_1"). Other safetensors readers see bytes; this reader gives the tensor its block dtype and its logical
// shape [n, k].
inline constexpr std::string_view kQuantizedMetadataPrefix = "tessera.quantized.";

// The largest header accepted (the safetensors library's own limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// One tensor of a safetensors file. data_begin / data_end are byte offsets relative to the data area (which
// starts right after the header).
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;
  uint64_t data_end = 0;

  int64_t numel() const;
  uint64_t nbytes() const { return data_end - data_begin; }
};

// "[64, 32]".
std::string ShapeToString(const std::vector<int64_t>& shape);

// Parses the dtype spelling of safetensors ("BF16", "F16", "F32", "I32", "I64"). INVALID_ARGUMENT otherwise.
[[nodiscard]] absl::StatusOr<DType> ParseSafetensorsDType(std::string_view name);

// Parses and validates the header of a safetensors file. `file_bytes_prefix` holds the file's first bytes (at
// least the 8-byte length and the header it announces); `file_size` is the whole file's size. Returns the
// tensors sorted by name (`__metadata__` is skipped). Checks: length field, header size limit, JSON syntax,
// entry types, dtypes, non-negative dims, element-count overflow, shape x dtype size == byte range, ranges
// inside the data area and not overlapping; for quantized tensors, a metadata entry naming a tensor of the
// header with dtype U8 and a last dimension that is a whole number of blocks. Errors: INVALID_ARGUMENT naming
// `file_name` (and the tensor). Never reads outside `file_bytes_prefix`. Thread-safe.
[[nodiscard]] absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(
    std::string_view file_bytes_prefix, uint64_t file_size, std::string_view file_name);

// A memory-mapped, validated safetensors file. Move-only; immutable after Open, so const methods are
// thread-safe.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors: NOT_FOUND (missing file), INVALID_ARGUMENT (malformed, see above).
  [[nodiscard]] static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // All tensors, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The tensor called `name`, or nullptr.
  const TensorInfo* Find(std::string_view name) const;
  // Start of the data area in the mapping (read-only memory). Tensor bytes are data() + [begin, end).
  const char* data() const { return file_.data() + data_offset_; }
  // Offset of the data area from the start of the file.
  uint64_t data_offset() const { return data_offset_; }

 private:
  MappedFile file_;
  uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
};

}  // namespace tessera
