#include "tools/token_ids.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tessera::tools {

absl::Status ParseTokenIds(const std::string& text, std::vector<int32_t>& ids) {
  ids.clear();
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id) || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id '", part, "' in '", text, "' is not a non-negative integer"));
    }
    ids.push_back(id);
  }
  return absl::OkStatus();
}

}  // namespace tessera::tools
