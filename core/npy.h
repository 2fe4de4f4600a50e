// Writes NumPy .npy files (format 1.0, little-endian float32), for logits dumps that tests compare in Python.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

// Writes `values` as a float32 array of shape [rows, cols] to `path`. Errors: INTERNAL naming the path when
// it cannot be written; INVALID_ARGUMENT when rows * cols != values.size().
[[nodiscard]] absl::Status WriteNpyF32(const std::string& path, const std::vector<float>& values,
                                       int64_t rows, int64_t cols);

}  // namespace tessera
