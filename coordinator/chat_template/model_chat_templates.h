// ModelChatTemplates: a model's chat templates and special tokens from tokenizer_config.json, rendered for a
// request the way Hugging Face apply_chat_template(..., tokenize=False) does.
#pragma once

#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/chat_template.h"

namespace tessera {

class ModelChatTemplates {
 public:
  // Reads MODEL_DIR/tokenizer_config.json: chat_template (a string, or a list of {"name", "template"} of
  // which "default" is used) and the special tokens (a string or {"content": ...}). A model without a
  // template loads; Render then fails. Errors: NOT_FOUND / INVALID_ARGUMENT naming the file when it is
  // missing or malformed, or a template does not parse (with line:column).
  [[nodiscard]] static absl::StatusOr<ModelChatTemplates> Load(const std::string& model_dir);

  // Renders request = {"messages": [...], "add_generation_prompt": bool, optional "chat_template" (a source
  // or the name of one of the model's templates), "tools", "documents", "bos_token", ... and extra keyword
  // arguments}. Errors: INVALID_ARGUMENT with the template's raise_exception message or a render error naming
  // line:column; INVALID_ARGUMENT when there is no template. Not thread-safe (caches parsed override
  // templates).
  [[nodiscard]] absl::StatusOr<std::string> Render(const nlohmann::ordered_json& request);

 private:
  std::optional<ChatTemplate> default_template_;
  std::map<std::string, ChatTemplate> named_;
  std::map<std::string, ChatTemplate> overrides_;  // request-supplied templates, parsed once
  std::string special_tokens_json_;                // bos_token, eos_token, ... as a JSON object, HF's order
};

}  // namespace tessera
