// A --chat FILE.json of the command-line tools (`generate`, `complete`): a JSON list of {"role", "content"}
// messages, read and checked once for both.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

struct ChatMessageText {
  std::string role;
  std::string content;
};

// Reads `path`: a JSON array of objects, each with string "role" (non-empty) and string "content"; other
// keys are ignored. Errors: NOT_FOUND when the file cannot be opened; INVALID_ARGUMENT naming the file and,
// for a bad message, its index and field (bad JSON, not a list, an empty list, a missing or non-string
// field).
[[nodiscard]] absl::StatusOr<std::vector<ChatMessageText>> ReadChatMessagesFile(const std::string& path);

}  // namespace tessera
