#include "coordinator/chat_template/chat_template.h"

#include <nlohmann/json.hpp>

#include "coordinator/chat_template/interpreter.h"
#include "coordinator/chat_template/lexer.h"
#include "coordinator/chat_template/parser.h"
#include "core/status_macros.h"

namespace tessera {

struct ChatTemplate::Impl {
  jinja::StmtList body;
};

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  ASSIGN_OR_RETURN(std::vector<jinja::Token> tokens, jinja::Tokenize(source));
  auto impl = std::make_shared<Impl>();
  ASSIGN_OR_RETURN(impl->body, jinja::Parse(std::move(tokens)));
  return ChatTemplate(std::move(impl));
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& context) const {
  if (!context.is_object())
    return absl::InvalidArgumentError("chat template: the context must be a JSON object");
  const jinja::Value variables = jinja::Value::FromJson(context);
  jinja::Interpreter interpreter(variables.dict());
  std::string out;
  RETURN_IF_ERROR(interpreter.Render(impl_->body, out));
  return out;
}

}  // namespace tessera
