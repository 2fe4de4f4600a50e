// Token ids as the command line gives them: "128000,9906,11".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera::tools {

// Parses comma-separated non-negative ids into `ids`. Errors: INVALID_ARGUMENT naming the bad element.
[[nodiscard]] absl::Status ParseTokenIds(const std::string& text, std::vector<int32_t>& ids);

}  // namespace tessera::tools
