// Python's json.dumps for interpreter values, as Hugging Face's `tojson` chat-template filter calls it:
// key order kept (or sorted), ensure_ascii, indent (int or string) and separators as Python does them.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/value.h"

namespace tessera::jinja {

struct JsonDumpOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;          // nullopt: one line
  std::optional<std::string> item_separator;  // default ", " (one line) or "," (indented)
  std::string key_separator = ": ";
  bool sort_keys = false;
};

// Serializes `value`. Errors: INVALID_ARGUMENT "Object of type X is not JSON serializable".
[[nodiscard]] absl::StatusOr<std::string> JsonDumps(const Value& value, const JsonDumpOptions& options);

}  // namespace tessera::jinja
