// GgufFile: a GGUF model file (format versions 2 and 3, little-endian) mapped read-only. Open parses and
// checks the header, every metadata value and the tensor directory against the file's size, so the accessors
// below work on validated data and tensor views never reach past the mapping.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/checkpoint/gguf_dequant.h"
#include "worker/checkpoint/mapped_file.h"

namespace tessera {

// gguf_type: the type of a metadata value.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint8", ..., "float64".
std::string_view GgufValueTypeName(GgufValueType type);

// One metadata value. Its views point into the file's mapping and live as long as the GgufFile.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  // A scalar's little-endian bytes; a string's characters; for an array of scalars, the elements back to
  // back.
  std::string_view bytes;
  // Arrays only: the element type and count, and the elements of an array of strings / of arrays.
  GgufValueType element_type = GgufValueType::kUint8;
  uint64_t size = 0;
  std::vector<std::string_view> strings;
  std::vector<GgufValue> arrays;

  // The value of an integer scalar of any width, when it fits int64_t; nullopt for any other type.
  std::optional<int64_t> AsInt() const;
  // A float32 (widened exactly) or float64 scalar; nullopt for any other type.
  std::optional<double> AsFloat() const;
  std::optional<bool> AsBool() const;
  std::optional<std::string_view> AsString() const;
  // Element i (< size) of an array of integers, when it fits int64_t; nullopt for other arrays.
  std::optional<int64_t> IntAt(uint64_t i) const;
  // "uint32", "string", "array of string", ...
  std::string TypeName() const;
};

// One entry of the tensor directory, checked: a supported type, 1 to 4 positive dims whose innermost is a
// whole number of blocks, an aligned offset and data that lies inside the file.
struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> dims;  // ggml's ne: dims[0] is the innermost (contiguous) dimension
  uint64_t offset = 0;        // from the start of the data section
  int64_t num_elements = 0;
  uint64_t num_bytes = 0;
};

// Movable, not copyable. After Open every method is const and thread-safe.
class GgufFile {
 public:
  // Maps and parses `path`. Every error names the file and the culprit (metadata key, tensor, field):
  // NOT_FOUND when the file does not exist; DATA_LOSS when the file ends inside the header, a metadata value
  // or the tensor directory, or a tensor's data runs past its end; INVALID_ARGUMENT for a bad magic, a
  // version other than 2 or 3 (or a big-endian file), an absurd count / string length / dimension, an unknown
  // value type, a duplicate key or tensor name, a bad general.alignment, an unsupported tensor type, a row
  // that is not a whole number of blocks, or a misaligned tensor offset.
  [[nodiscard]] static absl::StatusOr<GgufFile> Open(const std::string& path);

  GgufFile(GgufFile&&) noexcept = default;
  GgufFile& operator=(GgufFile&&) noexcept = default;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // Metadata by key, sorted by key.
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  // The value of `key`, or nullptr.
  const GgufValue* Find(std::string_view key) const;
  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  // Typed lookups. NOT_FOUND ("<file>: metadata key K is missing") when absent; INVALID_ARGUMENT naming the
  // key, the expected and the stored type when the type does not fit. Int accepts every integer type whose
  // value fits int64_t; Float accepts float32 and float64; IntArray arrays of any integer type.
  [[nodiscard]] absl::StatusOr<int64_t> Int(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<double> Float(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<bool> Bool(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<std::string_view> String(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<std::vector<std::string_view>> StringArray(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<std::vector<int64_t>> IntArray(std::string_view key) const;

  // The tensor directory in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // The tensor named `name`, or nullptr.
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // The tensor's bytes in place in the mapping (never written; valid while this object lives).
  std::string_view TensorData(const GgufTensorInfo& tensor) const {
    return file_.bytes().substr(data_start_ + tensor.offset, tensor.num_bytes);
  }

 private:
  GgufFile() = default;
  class Parser;

  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace tessera
