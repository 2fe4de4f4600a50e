// ReadChatMessagesFile / ChatMessagesAsText: the --chat files of generate and complete, and every malformed
// one.
#include "coordinator/chat_template/chat_messages_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/util/status_matchers.h"
#include "tests/util/test_env.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string dir = testing::FreshTempDir("chat_messages");
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(ChatMessagesFileTest, KeepsEveryFieldOfEachMessageForTheTemplate) {
  const std::string path = WriteTemp(
      "chat_ok.json",
      R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [{"name": "f"}]}])");
  ASSERT_OK_AND_ASSIGN(nlohmann::ordered_json messages, ReadChatMessagesFile(path));
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1]["tool_calls"][0]["name"], "f");
  // The gRPC API carries text messages only: the tool call has no string content.
  EXPECT_THAT(ChatMessagesAsText(messages, path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("message 1 has no string \"content\""))));
  messages.erase(1);
  ASSERT_OK_AND_ASSIGN(std::vector<ChatMessageText> text, ChatMessagesAsText(messages, path));
  ASSERT_EQ(text.size(), 1u);
  EXPECT_EQ(text[0].role, "user");
  EXPECT_EQ(text[0].content, "Hi");
}

TEST(ChatMessagesFileTest, MalformedFilesNameTheFileAndTheMessage) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "not valid JSON"},
      {R"({"role": "user"})", "not a JSON list of messages"},
      {"[]", "the list of messages is empty"},
      {R"([{"role": "user", "content": "a"}, 5])", "message 1 is not an object"},
      {R"([{"content": "a"}])", "message 0 has no \"role\""},
      {R"([{"role": "", "content": "a"}])", "message 0 has no \"role\""},
      {R"([{"role": 3, "content": "a"}])", "message 0 has no \"role\""},
  };
  for (const auto& [text, message] : cases) {
    const std::string path = WriteTemp("chat_bad.json", text);
    EXPECT_THAT(ReadChatMessagesFile(path),
                StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr(path), HasSubstr(message))))
        << text;
  }
  EXPECT_THAT(ReadChatMessagesFile("/nonexistent/chat.json"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/chat.json")));
}

}  // namespace
}  // namespace tessera
