// Internal to worker/checkpoint: typed, Status-returning access to fields of a parsed JSON object, with
// messages of the form "<source>: <field> ...". Keeps nlohmann's exceptions and headers out of public
// headers.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::json_internal {

using Json = nlohmann::json;

// Reads a whole file. NOT_FOUND when it does not exist; other errno-derived codes name the file.
[[nodiscard]] absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// Creates or truncates `path` and writes `text`. errno-derived codes naming the file on failure.
[[nodiscard]] absl::Status WriteTextFile(const std::string& path, std::string_view text);

// Parses `text`. INVALID_ARGUMENT naming `source` and the parser's position on bad JSON.
[[nodiscard]] absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view source);

// Field readers over one JSON object. Optional readers leave `out` untouched when the field is absent (or
// null); required ones fail with INVALID_ARGUMENT "missing required field". Wrong types are INVALID_ARGUMENT.
class JsonFields {
 public:
  // `prefix` is prepended to field names in messages ("rope_scaling." for a nested object).
  JsonFields(const Json& object, std::string_view source, std::string_view prefix = "")
      : object_(object), source_(source), prefix_(prefix) {}

  std::string_view source() const { return source_; }
  bool Has(std::string_view field) const;
  [[nodiscard]] absl::Status Int(std::string_view field, int& out, bool required) const;
  [[nodiscard]] absl::Status OptionalInt(std::string_view field, std::optional<int>& out) const;
  [[nodiscard]] absl::Status Double(std::string_view field, double& out, bool required) const;
  [[nodiscard]] absl::Status OptionalFloat(std::string_view field, std::optional<float>& out) const;
  [[nodiscard]] absl::Status Bool(std::string_view field, bool& out) const;
  [[nodiscard]] absl::Status String(std::string_view field, std::string& out, bool required) const;
  // An int or a list of ints (as eos_token_id).
  [[nodiscard]] absl::Status IntOrIntList(std::string_view field, std::vector<int>& out) const;

  // INVALID_ARGUMENT "<source>: <message>".
  absl::Status Error(std::string_view message) const;

 private:
  // The field's value, or nullptr when absent or null.
  const Json* Find(std::string_view field) const;
  absl::Status WrongType(std::string_view field, std::string_view expected, const Json& value) const;
  absl::StatusOr<int> ToInt(std::string_view field, const Json& value) const;

  const Json& object_;
  std::string_view source_;
  std::string_view prefix_;
};

}  // namespace tessera::json_internal
