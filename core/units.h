// Command-line quantities: sizes in binary units or plain bytes ("64MiB", "2GiB", "1048576") and durations
// with units ("500ms", "5s", "2m").
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace tessera {

// Accepts B, KiB, MiB, GiB, TiB (and K, M, G, T as the same binary units). Errors: INVALID_ARGUMENT naming
// the text.
[[nodiscard]] absl::StatusOr<int64_t> ParseByteSize(std::string_view text);
// Accepts ms, s, m, h. Errors: INVALID_ARGUMENT naming the text.
[[nodiscard]] absl::StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view text);

}  // namespace tessera
