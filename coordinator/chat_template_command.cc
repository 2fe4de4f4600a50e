#include "coordinator/chat_template_command.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/model_chat_templates.h"
#include "core/status_macros.h"

namespace tessera {

using Json = nlohmann::ordered_json;

absl::Status RunChatTemplate(const ChatTemplateOptions& options, std::ostream& out) {
  ASSIGN_OR_RETURN(ModelChatTemplates model, ModelChatTemplates::Load(options.model_dir));
  std::ifstream in(options.input_jsonl);
  if (!in) return absl::NotFoundError(absl::StrCat(options.input_jsonl, ": cannot open"));
  std::string line;
  for (int line_number = 1; std::getline(in, line); ++line_number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const Json request = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded() || !request.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.input_jsonl, ":", line_number, ": not a JSON object"));
    }
    if (!request.contains("messages") || !request["messages"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(options.input_jsonl, ":", line_number,
                                                     ": \"messages\" (a list of messages) is missing"));
    }
    const absl::StatusOr<std::string> prompt = model.Render(request);
    Json result = Json::object();
    if (prompt.ok()) {
      result["prompt"] = *prompt;
    } else {
      result["error"] = std::string(prompt.status().message());
    }
    out << result.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
  }
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(options.input_jsonl, ": read error"));
  return absl::OkStatus();
}

}  // namespace tessera
