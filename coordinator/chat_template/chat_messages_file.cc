#include "coordinator/chat_template/chat_messages_file.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/str_cat.h"

namespace tessera {

absl::StatusOr<nlohmann::ordered_json> ReadChatMessagesFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Cat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(Cat(path, ": not valid JSON"));
  if (!j.is_array()) return absl::InvalidArgumentError(Cat(path, ": not a JSON list of messages"));
  if (j.empty()) return absl::InvalidArgumentError(Cat(path, ": the list of messages is empty"));
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::ordered_json& m = j[i];
    if (!m.is_object()) return absl::InvalidArgumentError(Cat(path, ": message ", i, " is not an object"));
    auto role = m.find("role");
    if (role == m.end() || !role->is_string() || role->get<std::string>().empty()) {
      return absl::InvalidArgumentError(Cat(path, ": message ", i, " has no \"role\" (a non-empty string)"));
    }
  }
  return j;
}

absl::StatusOr<std::vector<ChatMessageText>> ChatMessagesAsText(const nlohmann::ordered_json& messages,
                                                                const std::string& path) {
  std::vector<ChatMessageText> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    auto content = messages[i].find("content");
    if (content == messages[i].end() || !content->is_string()) {
      return absl::InvalidArgumentError(
          Cat(path, ": message ", i, " has no string \"content\" (the gRPC API carries text messages)"));
    }
    out.push_back({messages[i]["role"].get<std::string>(), content->get<std::string>()});
  }
  return out;
}

}  // namespace tessera
