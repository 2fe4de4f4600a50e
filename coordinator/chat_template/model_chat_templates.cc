#include "coordinator/chat_template/model_chat_templates.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace tessera {
namespace {

using Json = nlohmann::ordered_json;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A special token as tokenizer_config.json stores it: a string or an AddedToken {"content": ...}.
std::optional<Json> TokenText(const Json& token) {
  if (token.is_string()) return token;
  if (token.is_object() && token.contains("content") && token["content"].is_string()) return token["content"];
  return std::nullopt;
}

}  // namespace

absl::StatusOr<ModelChatTemplates> ModelChatTemplates::Load(const std::string& model_dir) {
  const std::string path = model_dir + "/tokenizer_config.json";
  ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  const Json config = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  ModelChatTemplates model;
  Json special_tokens = Json::object();
  for (const char* key :
       {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    if (!config.contains(key)) continue;
    if (auto token = TokenText(config[key])) special_tokens[key] = *token;
  }
  model.special_tokens_json_ = special_tokens.dump();
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return model;
  const Json& chat_template = config["chat_template"];
  auto parse = [&](const Json& source, const std::string& what) -> absl::StatusOr<ChatTemplate> {
    if (!source.is_string())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", what, " is not a string"));
    auto parsed = ChatTemplate::Parse(source.get<std::string>());
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", what, ": ", parsed.status().message()));
    }
    return parsed;
  };
  if (chat_template.is_array()) {
    for (const Json& entry : chat_template) {
      if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() ||
          !entry.contains("template")) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": chat_template entries need \"name\" and \"template\""));
      }
      const std::string name = entry["name"].get<std::string>();
      ASSIGN_OR_RETURN(ChatTemplate parsed,
                       parse(entry["template"], absl::StrCat("chat_template '", name, "'")));
      model.named_.emplace(name, std::move(parsed));
    }
    if (auto it = model.named_.find("default"); it != model.named_.end())
      model.default_template_ = it->second;
  } else {
    ASSIGN_OR_RETURN(model.default_template_, parse(chat_template, "chat_template"));
  }
  return model;
}

absl::StatusOr<std::string> ModelChatTemplates::Render(const Json& request) {
  const ChatTemplate* chat_template = default_template_ ? &*default_template_ : nullptr;
  if (request.contains("chat_template") && !request["chat_template"].is_null()) {
    if (!request["chat_template"].is_string())
      return absl::InvalidArgumentError("\"chat_template\" is not a string");
    const std::string source = request["chat_template"].get<std::string>();
    if (auto it = named_.find(source); it != named_.end()) {
      chat_template = &it->second;
    } else {
      auto it2 = overrides_.find(source);
      if (it2 == overrides_.end()) {
        ASSIGN_OR_RETURN(ChatTemplate parsed, ChatTemplate::Parse(source));
        it2 = overrides_.emplace(source, std::move(parsed)).first;
      }
      chat_template = &it2->second;
    }
  }
  if (chat_template == nullptr) {
    return absl::InvalidArgumentError(
        "the model has no chat_template (tokenizer_config.json) and the request gives none");
  }
  // The keyword arguments apply_chat_template passes: messages, tools, documents, add_generation_prompt,
  // then the special tokens and any extra keyword arguments.
  Json context = Json::object();
  context["messages"] = request.contains("messages") ? request["messages"] : Json::array();
  context["tools"] = request.contains("tools") ? request["tools"] : Json(nullptr);
  context["documents"] = request.contains("documents") ? request["documents"] : Json(nullptr);
  context["add_generation_prompt"] =
      request.contains("add_generation_prompt") ? request["add_generation_prompt"] : Json(false);
  const Json special_tokens = Json::parse(special_tokens_json_);
  for (const auto& [key, value] : special_tokens.items()) context[key] = value;
  for (const auto& [key, value] : request.items()) {
    if (key == "messages" || key == "tools" || key == "documents" || key == "add_generation_prompt" ||
        key == "chat_template") {
      continue;
    }
    context[key] = value;
  }
  return chat_template->Render(context);
}

}  // namespace tessera
