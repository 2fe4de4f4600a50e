// RunComplete (`tessera complete`) against InferenceService on a loopback server over a FakeEngine: plain,
// streamed and JSON output, the request fields it sends, and "CODE: message" errors with exit code 1.
#include "coordinator/complete_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/coordinator/api_test_server.h"

namespace tessera::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<int32_t> Encode(std::string_view text) { return Llama31Tokenizer()->Encode(text, false).value(); }

class CompleteCommandTest : public ::testing::Test {
 protected:
  CompleteOptions Options(const std::string& prompt) {
    CompleteOptions options;
    options.server = server_.address();
    options.prompt = prompt;
    options.max_tokens = 8;
    options.timeout = absl::Seconds(10);
    return options;
  }
  int RunCli(const CompleteOptions& options) {
    out_.str("");
    err_.str("");
    return RunComplete(options, out_, err_);
  }

  ApiTestServer server_;
  std::ostringstream out_, err_;
};

TEST_F(CompleteCommandTest, PrintsTheTextPlainAndStreamed) {
  std::vector<int32_t> tokens = Encode(" Paris, of course 😀");
  tokens.push_back(kEotId);
  server_.engine().SetScript(ScriptOf({{tokens}}));
  CompleteOptions options = Options("The capital of France is");
  EXPECT_EQ(RunCli(options), 0) << err_.str();
  EXPECT_EQ(out_.str(), " Paris, of course 😀\n");
  EXPECT_EQ(err_.str(), "");
  options.stream = true;
  EXPECT_EQ(RunCli(options), 0) << err_.str();
  EXPECT_EQ(out_.str(), " Paris, of course 😀\n");
}

TEST_F(CompleteCommandTest, JsonPrintsTokenIdsTextAndFinishReason) {
  const std::vector<int32_t> tokens = Encode(" one two three");
  server_.engine().SetScript(ScriptOf({{tokens}}));
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream);
    CompleteOptions options = Options("Count:");
    options.max_tokens = 3;
    options.json = true;
    options.stream = stream;
    ASSERT_EQ(RunCli(options), 0) << err_.str();
    const std::string out = out_.str();
    ASSERT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    const nlohmann::json line = nlohmann::json::parse(out);
    EXPECT_EQ(line["token_ids"].get<std::vector<int32_t>>(), tokens);
    EXPECT_EQ(line["text"], " one two three");
    EXPECT_EQ(line["finish_reason"], "length");
  }
}

TEST_F(CompleteCommandTest, SendsPromptIdsSamplingFieldsAndStopStrings) {
  server_.engine().SetScript(ScriptOf({{Encode(" a b. c")}}));
  CompleteOptions options = Options("");
  options.prompt.reset();
  options.prompt_ids = std::vector<int32_t>{128000, 9906};
  options.temperature = 0.5f;
  options.top_k = 3;
  options.top_p = 0.75f;
  options.seed = 99;
  options.stop = {"."};
  options.json = true;
  ASSERT_EQ(RunCli(options), 0) << err_.str();
  const nlohmann::json line = nlohmann::json::parse(out_.str());
  EXPECT_EQ(line["text"], " a b");
  EXPECT_EQ(line["finish_reason"], "stop");
  const GenerationRequest request = server_.engine().requests().at(0);
  EXPECT_THAT(request.prompt, ElementsAre(128000, 9906));
  EXPECT_EQ(request.max_tokens, 8);
  EXPECT_EQ(request.sampling.temperature, 0.5f);
  EXPECT_EQ(request.sampling.top_k, 3);
  EXPECT_EQ(request.sampling.top_p, 0.75f);
  EXPECT_EQ(request.sampling.seed, 99u);
}

TEST_F(CompleteCommandTest, ErrorsPrintTheStatusCodeNameAndMessageAndExitOne) {
  CompleteOptions options = Options("Hello");
  options.temperature = -1;
  EXPECT_EQ(RunCli(options), 1);
  EXPECT_THAT(err_.str(), StartsWith("INVALID_ARGUMENT: temperature"));
  EXPECT_EQ(out_.str(), "");

  EngineScript full;
  full.submit_status = absl::ResourceExhaustedError("the waiting queue is full");
  server_.engine().SetScript(full);
  options.temperature.reset();
  options.stream = true;
  EXPECT_EQ(RunCli(options), 1);
  EXPECT_EQ(err_.str(), "RESOURCE_EXHAUSTED: the waiting queue is full\n");

  EngineScript slow = ScriptOf({{Encode(" and")}});
  slow.hang = true;
  server_.engine().SetScript(slow);
  options.timeout = absl::Milliseconds(200);
  EXPECT_EQ(RunCli(options), 1);
  EXPECT_THAT(err_.str(), StartsWith("DEADLINE_EXCEEDED: "));
}

TEST(CompleteCommandNoServerTest, AnUnreachableServerIsUnavailable) {
  std::string address;
  {
    ApiTestServer gone;  // its port is free again once it is shut down
    address = gone.address();
  }
  CompleteOptions options;
  options.server = address;
  options.prompt = "Hello";
  options.timeout = absl::Seconds(10);
  std::ostringstream out, err;
  EXPECT_EQ(RunComplete(options, out, err), 1);
  EXPECT_THAT(err.str(), StartsWith("UNAVAILABLE: "));
}

TEST(CompleteCommandUsageTest, NeedsExactlyOnePromptAndAPositiveTimeout) {
  CompleteOptions options;
  options.server = "127.0.0.1:1";
  std::ostringstream out, err;
  EXPECT_EQ(RunComplete(options, out, err), 2);
  EXPECT_THAT(err.str(), HasSubstr("--prompt"));
  options.prompt = "a";
  options.prompt_ids = std::vector<int32_t>{1};
  EXPECT_EQ(RunComplete(options, out, err), 2);
  options.prompt_ids.reset();
  options.timeout = absl::ZeroDuration();
  err.str("");
  EXPECT_EQ(RunComplete(options, out, err), 2);
  EXPECT_THAT(err.str(), HasSubstr("--timeout"));
}

}  // namespace
}  // namespace tessera::testing
