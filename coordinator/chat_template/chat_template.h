// Hugging Face chat templates: parses a tokenizer_config.json `chat_template` (a Jinja subset) once, at load
// time, and renders it the way transformers' apply_chat_template renders it with jinja2
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, HF's tojson, raise_exception and
// strftime_now), byte for byte.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tessera {

class ChatTemplate {
 public:
  // Parses the Jinja source. Errors: INVALID_ARGUMENT "chat template: line L, column C: ..." naming the
  // construct outside the supported subset (a tag, filter, test, method or function) or the syntax error.
  [[nodiscard]] static absl::StatusOr<ChatTemplate> Parse(std::string_view source);

  // Renders with `context`, a JSON object of the template's variables (messages, add_generation_prompt,
  // bos_token, eos_token, tools, extra keyword arguments). An ordered_json keeps the objects' key order,
  // which `tojson` and `items()` expose, as Python dicts do. Errors: INVALID_ARGUMENT; a template that calls
  // raise_exception(msg) fails with exactly `msg`; other runtime errors (an attribute of an undefined value,
  // a type error) name the line:column. Thread-safe (const); copies share the parsed template.
  [[nodiscard]] absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context) const;

 private:
  struct Impl;
  explicit ChatTemplate(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace tessera
