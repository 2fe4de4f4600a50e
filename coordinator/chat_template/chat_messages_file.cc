#include "coordinator/chat_template/chat_messages_file.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/core/str_cat.h"

namespace tessera {

absl::StatusOr<std::vector<ChatMessageText>> ReadChatMessagesFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Cat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(Cat(path, ": not valid JSON"));
  if (!j.is_array()) {
    return absl::InvalidArgumentError(Cat(path, ": not a JSON list of {\"role\", \"content\"} messages"));
  }
  if (j.empty()) return absl::InvalidArgumentError(Cat(path, ": the list of messages is empty"));
  std::vector<ChatMessageText> messages;
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& m = j[i];
    if (!m.is_object()) return absl::InvalidArgumentError(Cat(path, ": message ", i, " is not an object"));
    ChatMessageText message;
    for (auto [field, out] :
         {std::pair<const char*, std::string*>{"role", &message.role}, {"content", &message.content}}) {
      auto it = m.find(field);
      if (it == m.end() || !it->is_string()) {
        return absl::InvalidArgumentError(Cat(path, ": message ", i, " has no string \"", field, "\""));
      }
      *out = it->get<std::string>();
    }
    if (message.role.empty())
      return absl::InvalidArgumentError(Cat(path, ": message ", i, " has an empty role"));
    messages.push_back(std::move(message));
  }
  return messages;
}

}  // namespace tessera
