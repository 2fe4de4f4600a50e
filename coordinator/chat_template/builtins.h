// The environment's filters, tests, methods and global-function names: those Hugging Face chat templates use,
// behaving as jinja2 3.1's (and Python's str / dict methods) do. Looked up by name at parse time.
#pragma once

#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/ast.h"
#include "coordinator/chat_template/value.h"

namespace tessera::jinja {

// The filter or test called `name`; null when the subset has none.
[[nodiscard]] FilterFn FindFilter(std::string_view name);
[[nodiscard]] TestFn FindTest(std::string_view name);
// The global function called `name` (range, namespace, dict, raise_exception, strftime_now).
[[nodiscard]] std::optional<Builtin> FindGlobalFunction(std::string_view name);
// True when `name` is a supported str / dict method.
[[nodiscard]] bool IsMethodName(std::string_view name);

// Calls `object.name(args)`. Errors: INVALID_ARGUMENT with Python's TypeError / AttributeError wording.
[[nodiscard]] absl::StatusOr<Value> CallMethod(const Value& object, std::string_view name,
                                               const CallArgs& args);

// Binds call arguments to the parameters `names` (positional first, then keywords). Unbound parameters are
// left undefined. Errors: too many arguments or an unknown keyword, naming `function`.
[[nodiscard]] absl::StatusOr<std::vector<Value>> BindArgs(std::string_view function, const CallArgs& args,
                                                          std::initializer_list<std::string_view> names);

}  // namespace tessera::jinja
