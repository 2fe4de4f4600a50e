// MappedFile: a read-only memory mapping of a whole file (PROT_READ, MAP_SHARED), owned RAII-style and
// move-only. Checkpoint shards are mapped once and sliced in place, so a rank touches only the pages it
// reads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tessera {

class MappedFile {
 public:
  // Maps `path` read-only. Errors: NOT_FOUND when the file does not exist, another errno-derived code (naming
  // the file) when it cannot be opened, is not a regular file or cannot be mapped. An empty file maps to an
  // empty view.
  [[nodiscard]] static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  ~MappedFile();

  // The file's bytes. Valid while this object lives; never written (the pages are PROT_READ).
  const char* data() const { return data_; }
  uint64_t size() const { return size_; }
  std::string_view bytes() const { return std::string_view(data_, size_); }
  const std::string& path() const { return path_; }

  // Tells the kernel this process no longer needs the whole pages inside [begin, begin + length) of the
  // mapping (they leave its resident set; reading them again faults them back in from the page cache). For
  // data that was copied out. A hint: errors are ignored.
  static void ReleasePages(const char* begin, uint64_t length);

 private:
  void Reset();

  std::string path_;
  const char* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace tessera
