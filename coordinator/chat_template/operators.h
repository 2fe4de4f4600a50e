// Python operators on interpreter values as jinja2 applies them: attribute / item access and slicing
// (a missing key or index is undefined), arithmetic, `~` concatenation and `in`.
// Errors are INVALID_ARGUMENT with Python's wording and no position; the interpreter adds the position.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/value.h"

namespace tessera::jinja {

// obj.name: a dict key or namespace attribute; undefined when missing. Errors: `object` is undefined.
[[nodiscard]] absl::StatusOr<Value> GetAttr(const Value& object, const std::string& name);
// obj[key]: dict key, list / str index (negative counts from the end); undefined when missing.
[[nodiscard]] absl::StatusOr<Value> GetItem(const Value& object, const Value& key);
// obj[start:stop:step] on str, list and tuple; each bound may be undefined (omitted) or None.
[[nodiscard]] absl::StatusOr<Value> GetSlice(const Value& object, const Value& start, const Value& stop,
                                             const Value& step);
// a op b for op in + - * / // % ** ~.
[[nodiscard]] absl::StatusOr<Value> BinaryOp(std::string_view op, const Value& a, const Value& b);
// -a or +a.
[[nodiscard]] absl::StatusOr<Value> UnaryOp(std::string_view op, const Value& a);
// item in container.
[[nodiscard]] absl::StatusOr<bool> Contains(const Value& container, const Value& item);
// The error for using an undefined value: its hint, e.g. "'x' is undefined".
[[nodiscard]] absl::Status UndefinedError(const Value& undefined);

}  // namespace tessera::jinja
