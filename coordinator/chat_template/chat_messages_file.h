// A --chat FILE.json of the command-line tools (`generate`, `complete`): a JSON list of messages, read and
// checked once for both.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

struct ChatMessageText {
  std::string role;
  std::string content;
};

// Reads `path`: a non-empty JSON array of objects, each with a non-empty string "role"; everything else in a
// message (content as a string or a list of parts, tool_calls, ...) is kept for the chat template as it is.
// Errors: NOT_FOUND when the file cannot be opened; INVALID_ARGUMENT naming the file and, for a bad message,
// its index (bad JSON, not a list, an empty list, a message without a role).
[[nodiscard]] absl::StatusOr<nlohmann::ordered_json> ReadChatMessagesFile(const std::string& path);

// The messages of ReadChatMessagesFile as {role, content} pairs, the form the gRPC API carries.
// INVALID_ARGUMENT naming `path` and the message when its content is missing or not a string.
[[nodiscard]] absl::StatusOr<std::vector<ChatMessageText>> ChatMessagesAsText(
    const nlohmann::ordered_json& messages, const std::string& path);

}  // namespace tessera
