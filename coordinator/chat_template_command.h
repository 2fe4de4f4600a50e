// `tessera chat-template`: renders the model's chat template (tokenizer_config.json) for each line of a
// JSONL file, as Hugging Face apply_chat_template(..., tokenize=False) would; prints one JSON line per input.
#pragma once

#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace tessera {

struct ChatTemplateOptions {
  std::string model_dir;    // holds tokenizer_config.json
  std::string input_jsonl;  // lines of {"messages": [...], "add_generation_prompt": bool, ...}
};

// Reads MODEL_DIR/tokenizer_config.json (chat_template: a string, or a list of {"name", "template"} of which
// "default" is used; bos_token / eos_token: a string or {"content": ...}). Each input line is
// {"messages": [...], "add_generation_prompt": bool} with optional "chat_template" (a template source, or the
// name of one of the model's named templates), "bos_token", "eos_token" and "tools" overriding the model's;
// any other key is passed to the template as a keyword argument. Writes {"prompt": ...}, or {"error": ...}
// when the template raises, fails to render or (for a line's own chat_template) fails to parse: one line per
// input line, in order (blank lines are skipped). Errors: NOT_FOUND / INVALID_ARGUMENT naming the file when
// tokenizer_config.json or the input file is missing or malformed or the model's template does not parse;
// INVALID_ARGUMENT naming FILE:LINE for an input line that is not a JSON object with a "messages" list.
[[nodiscard]] absl::Status RunChatTemplate(const ChatTemplateOptions& options, std::ostream& out);

}  // namespace tessera
