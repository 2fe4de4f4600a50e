// Splits a chat template into tokens exactly as jinja2's lexer does under Hugging Face's settings
// (trim_blocks, lstrip_blocks, no keep_trailing_newline): text, tag delimiters and expression tokens, with
// whitespace control (`{%-`, `-%}`, `{%+`, `+%}`) already applied to the text tokens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/ast.h"

namespace tessera::jinja {

enum class TokenType {
  kData,
  kVariableBegin,
  kVariableEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInteger,
  kFloat,
  kOperator,
  kEof,
};

struct Token {
  TokenType type = TokenType::kEof;
  std::string text;  // data text, name, unescaped string value or operator
  int64_t int_value = 0;
  double float_value = 0;
  Pos pos;
};

// Tokenizes `source` (UTF-8). The result ends with a kEof token. Errors: INVALID_ARGUMENT naming the
// line:column of an unterminated tag, comment or string, a bad escape or an unexpected character.
[[nodiscard]] absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source);

}  // namespace tessera::jinja
