// Golden renders: tests/data/golden/templates.json rendered for each conversation of golden.jsonl (Python
// jinja2 under Hugging Face's settings) must match byte for byte; where jinja2 raised, Tessera must fail too.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "coordinator/chat_template/chat_template.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using Json = nlohmann::ordered_json;

Json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return Json::parse(text.str(), nullptr, false);
}

TEST(ChatTemplateGoldenTest, RendersEveryGoldenCaseExactlyAsJinja2) {
  const std::string dir = std::string(TESSERA_TEST_DATA_DIR) + "/golden/";
  const Json templates = ReadJson(dir + "templates.json");
  ASSERT_TRUE(templates.is_object()) << "cannot read " << dir << "templates.json";
  std::ifstream golden(dir + "golden.jsonl");
  ASSERT_TRUE(golden) << "cannot read " << dir << "golden.jsonl";
  int cases = 0, errors = 0;
  std::string line;
  while (std::getline(golden, line)) {
    if (line.empty()) continue;
    const Json c = Json::parse(line, nullptr, false);
    ASSERT_TRUE(c.is_object()) << line;
    const std::string name = c["template"].get<std::string>();
    ASSERT_TRUE(templates.contains(name)) << name;
    ASSERT_OK_AND_ASSIGN(const ChatTemplate chat_template,
                         ChatTemplate::Parse(templates[name].get<std::string>()));
    Json context = Json::object();
    for (const char* key : {"messages", "add_generation_prompt", "bos_token", "eos_token"})
      context[key] = c[key];
    const absl::StatusOr<std::string> prompt = chat_template.Render(context);
    ++cases;
    if (c.contains("error")) {
      ++errors;
      EXPECT_FALSE(prompt.ok()) << name << ": jinja2 raised " << c["error"] << " but Tessera rendered "
                                << *prompt;
    } else {
      ASSERT_OK(prompt);
      EXPECT_EQ(*prompt, c["prompt"].get<std::string>()) << name << " on " << c["messages"].dump();
    }
  }
  EXPECT_EQ(cases, 42);
  std::cout << cases << " golden cases (" << errors << " errors expected)\n";
}

}  // namespace
}  // namespace tessera
