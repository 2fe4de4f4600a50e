// Writes safetensors files as the safetensors library does (JSON header padded with spaces to a multiple of 8
// bytes, tensors stored back to back). Used by make-model and by tests that build checkpoints.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace tessera {

// A tensor's header entry: data is stored in the order the entries are given. A block-quantized dtype is
// written as safetensors.h describes (U8 bytes and a __metadata__ entry); its shape is the logical one.
struct TensorHeaderEntry {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
};

// A tensor with its bytes (row-major, little-endian, bytes.size() == DTypeBytes(dtype, numel)).
struct TensorData {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
  std::string_view bytes;
};

// The serialized header (8-byte length + padded JSON) for `entries`, offsets assigned in order.
std::string SafetensorsHeaderBytes(const std::vector<TensorHeaderEntry>& entries,
                                   const std::map<std::string, std::string>& metadata = {});

// Streams one safetensors file: the header is written by Create, then the tensors' bytes through Append in
// entry order (any chunking), then Finish. Move-only; not thread-safe.
class SafetensorsWriter {
 public:
  // Creates (truncates) `path` and writes the header. Errors: INVALID_ARGUMENT for duplicate names or
  // negative dims; errno-derived codes naming the file on I/O failure.
  [[nodiscard]] static absl::StatusOr<SafetensorsWriter> Create(
      const std::string& path, std::vector<TensorHeaderEntry> entries,
      const std::map<std::string, std::string>& metadata = {});

  // Appends data bytes. INVALID_ARGUMENT if more bytes arrive than the header announced.
  [[nodiscard]] absl::Status Append(std::string_view bytes);
  // Flushes and closes. INVALID_ARGUMENT if fewer bytes were appended than announced.
  [[nodiscard]] absl::Status Finish();

  // Total data bytes the header announces.
  uint64_t data_bytes() const { return total_bytes_; }

 private:
  struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };

  std::string path_;
  std::unique_ptr<std::FILE, FileCloser> file_;
  uint64_t total_bytes_ = 0;
  uint64_t written_bytes_ = 0;
};

// Writes a whole file at once.
[[nodiscard]] absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorData>& tensors,
                                            const std::map<std::string, std::string>& metadata = {});

}  // namespace tessera
