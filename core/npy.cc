#include "core/npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"

namespace tessera {

absl::Status WriteNpyF32(const std::string& path, const std::vector<float>& values, int64_t rows,
                         int64_t cols) {
  if (rows * cols != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": shape [", rows, ", ", cols, "] does not match ", values.size(), " values"));
  }
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", rows, ", ", cols, "), }");
  // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of 64, ending in
  // \n.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  const unsigned char prefix[10] = {0x93,
                                    'N',
                                    'U',
                                    'M',
                                    'P',
                                    'Y',
                                    1,
                                    0,
                                    static_cast<unsigned char>(header.size() & 0xff),
                                    static_cast<unsigned char>(header.size() >> 8)};
  bool ok = std::fwrite(prefix, 1, 10, f.get()) == 10 &&
            std::fwrite(header.data(), 1, header.size(), f.get()) == header.size() &&
            std::fwrite(values.data(), sizeof(float), values.size(), f.get()) == values.size();
  if (!ok) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

}  // namespace tessera
