// RunChatTemplate (`tessera chat-template`): model templates and special tokens from tokenizer_config.json,
// per-line overrides and keyword arguments, {"error": ...} lines, and malformed inputs naming the culprit.
#include "coordinator/chat_template_command.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

class ChatTemplateCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "chat_template_command_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  void WriteConfig(const Json& config) { Write("tokenizer_config.json", config.dump()); }

  // Runs the command over `lines`; returns its status and the output lines.
  absl::Status Run(const std::vector<std::string>& lines, std::vector<Json>& results) {
    std::string input;
    for (const std::string& line : lines) input += line + "\n";
    Write("input.jsonl", input);
    ChatTemplateOptions options;
    options.model_dir = dir_.string();
    options.input_jsonl = (dir_ / "input.jsonl").string();
    std::ostringstream out;
    const absl::Status status = RunChatTemplate(options, out);
    std::istringstream printed(out.str());
    results.clear();
    for (std::string line; std::getline(printed, line);) results.push_back(Json::parse(line));
    return status;
  }

  std::filesystem::path dir_;
};

const char kTemplate[] =
    "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}{{ eos_token }}";

TEST_F(ChatTemplateCommandTest, RendersEachLineInOrderWithTheModelsTemplateAndTokens) {
  WriteConfig({{"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
               {"eos_token", "</s>"},
               {"chat_template", kTemplate}});
  std::vector<Json> results;
  ASSERT_OK(Run(
      {R"({"messages": [{"role": "user", "content": " hi "}], "add_generation_prompt": true})", "",
       R"({"messages": [{"role": "user", "content": "x"}], "bos_token": "[B]", "eos_token": ""})",
       R"({"messages": [], "chat_template": "{{ greeting }} {{ tools is none }} {{ documents is none }}", "greeting": "hey"})"},
      results));
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0], Json({{"prompt", "<s><user>hi<assistant></s>"}}));
  EXPECT_EQ(results[1], Json({{"prompt", "[B]<user>x"}}));
  EXPECT_EQ(results[2], Json({{"prompt", "hey True True"}}));
}

TEST_F(ChatTemplateCommandTest, UsesTheDefaultOfNamedTemplatesAndSelectsOthersByName) {
  WriteConfig(
      {{"chat_template", Json::array({{{"name", "tool_use"}, {"template", "TOOLS {{ tools | length }}"}},
                                      {{"name", "default"}, {"template", "DEFAULT"}}})}});
  std::vector<Json> results;
  ASSERT_OK(Run({R"({"messages": []})", R"({"messages": [], "chat_template": "tool_use", "tools": [1, 2]})"},
                results));
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0]["prompt"], "DEFAULT");
  EXPECT_EQ(results[1]["prompt"], "TOOLS 2");
}

TEST_F(ChatTemplateCommandTest, PrintsAnErrorLineWhenTheTemplateRaisesOrFails) {
  WriteConfig(
      {{"chat_template",
        "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}"
        "{% endif %}{{ messages[0].content.x.y }}"}});
  std::vector<Json> results;
  ASSERT_OK(Run({R"({"messages": [{"role": "system", "content": "s"}]})",
                 R"({"messages": [{"role": "user", "content": "u"}]})",
                 R"({"messages": [], "chat_template": "{% bad %}"})",
                 R"({"messages": [{"role": "user", "content": "u"}], "chat_template": "ok"})"},
                results));
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[0], Json({{"error", "first message must be from the user"}}));
  EXPECT_THAT(results[1]["error"].get<std::string>(), HasSubstr("has no attribute 'x'"));
  EXPECT_THAT(results[2]["error"].get<std::string>(), HasSubstr("unknown tag 'bad'"));
  EXPECT_EQ(results[3]["prompt"], "ok");
}

TEST_F(ChatTemplateCommandTest, MalformedInputLinesNameTheirLineNumber) {
  WriteConfig({{"chat_template", "x"}});
  std::vector<Json> results;
  EXPECT_THAT(Run({R"({"messages": []})", "not json"}, results),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input.jsonl:2: not a JSON object")));
  EXPECT_THAT(Run({"[1, 2]"}, results),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input.jsonl:1:")));
  EXPECT_THAT(Run({"", R"({"add_generation_prompt": true})"}, results),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input.jsonl:2: \"messages\"")));
  EXPECT_THAT(Run({R"({"messages": "hello"})"}, results),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input.jsonl:1: \"messages\"")));
}

TEST_F(ChatTemplateCommandTest, ModelErrorsNameTheFile) {
  std::vector<Json> results;
  EXPECT_THAT(Run({R"({"messages": []})"}, results),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tokenizer_config.json")));
  Write("tokenizer_config.json", "{not json");
  EXPECT_THAT(
      Run({R"({"messages": []})"}, results),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokenizer_config.json: not a JSON object")));
  WriteConfig({{"chat_template", "ok\n{{ x | wordwrap }}"}});
  EXPECT_THAT(
      Run({R"({"messages": []})"}, results),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr(
                   "tokenizer_config.json: chat_template: chat template: line 2, column 8: unknown filter")));
  WriteConfig({{"chat_template", 5}});
  EXPECT_THAT(Run({R"({"messages": []})"}, results),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chat_template is not a string")));
  WriteConfig(Json::object());
  ASSERT_OK(Run({R"({"messages": []})"}, results));
  EXPECT_THAT(results.at(0)["error"].get<std::string>(), HasSubstr("no chat_template"));
  ChatTemplateOptions options;
  options.model_dir = dir_.string();
  options.input_jsonl = (dir_ / "missing.jsonl").string();
  std::ostringstream out;
  EXPECT_THAT(RunChatTemplate(options, out),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing.jsonl")));
}

}  // namespace
}  // namespace tessera
