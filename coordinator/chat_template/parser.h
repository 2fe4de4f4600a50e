// Parses chat-template tokens into statements, following jinja2's grammar and operator precedence.
// Everything outside the supported subset (tags, filters, tests, methods, functions) is rejected here, at
// load time, not when a request renders the template.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/ast.h"
#include "coordinator/chat_template/lexer.h"

namespace tessera::jinja {

// Parses `tokens` (from Tokenize). Errors: INVALID_ARGUMENT "chat template: line L, column C: ..." naming
// the unsupported or malformed construct.
[[nodiscard]] absl::StatusOr<StmtList> Parse(std::vector<Token> tokens);

}  // namespace tessera::jinja
