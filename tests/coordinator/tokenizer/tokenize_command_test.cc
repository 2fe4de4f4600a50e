// `tessera tokenize` / `tessera detokenize` (RunTokenize / RunDetokenize) on the Llama 3.1 tokenizer files.
#include "coordinator/tokenize_command.h"

#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kModel[] = TESSERA_TEST_DATA_DIR "/llama-3.1-tokenizer";

std::string TempFile(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/" + std::to_string(getpid()) + "_" + name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

TEST(TokenizeCommandTest, PrintsIdsOfText) {
  TokenizeOptions options;
  options.model_dir = kModel;
  options.text = "Hello world!";
  options.add_special_tokens = true;
  std::ostringstream out, err;
  ASSERT_OK(RunTokenize(options, out, err));
  EXPECT_EQ(out.str(), "{\"ids\": [128000, 9906, 1917, 0]}\n");
  EXPECT_EQ(err.str(), "");
}

TEST(TokenizeCommandTest, PrintsOneLinePerJsonlInputInOrder) {
  TokenizeOptions options;
  options.model_dir = kModel;
  options.input_jsonl =
      TempFile("in.jsonl", "{\"text\": \"Hello\"}\n\n{\"text\": \"<|eot_id|>\"}\n{\"text\": \"\"}\n");
  std::ostringstream out, err;
  ASSERT_OK(RunTokenize(options, out, err));
  EXPECT_EQ(out.str(), "{\"ids\": [9906]}\n{\"ids\": [128009]}\n{\"ids\": []}\n");
}

TEST(TokenizeCommandTest, NamesTheLineOfAMalformedJsonlInput) {
  TokenizeOptions options;
  options.model_dir = kModel;
  options.input_jsonl = TempFile("bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
  std::ostringstream out, err;
  EXPECT_THAT(RunTokenize(options, out, err),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.jsonl:2:")));
  options.input_jsonl = TempFile("bad2.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{not json\n");
  EXPECT_THAT(RunTokenize(options, out, err),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad2.jsonl:3: bad JSON")));
}

TEST(TokenizeCommandTest, CountsTokensOfAFileAndPrintsStats) {
  TokenizeOptions options;
  options.model_dir = kModel;
  options.file = TempFile("text.txt", "Hello world!\r\nHello world!");
  options.stats = true;
  std::ostringstream out, err;
  ASSERT_OK(RunTokenize(options, out, err));
  EXPECT_EQ(out.str(), "{\"count\": 6}\n");  // Hello Ġworld !\r\n Hello Ġworld !
  const nlohmann::json stats = nlohmann::json::parse(err.str());
  EXPECT_TRUE(stats.contains("load_s") && stats.contains("encode_s") && stats.contains("mb_per_s"));
  EXPECT_EQ(stats["bytes"], 26);
}

TEST(TokenizeCommandTest, RejectsBadInputs) {
  TokenizeOptions options;
  options.model_dir = kModel;
  std::ostringstream out, err;
  EXPECT_THAT(RunTokenize(options, out, err),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exactly one")));
  options.text = "a";
  options.file = "b";
  EXPECT_THAT(RunTokenize(options, out, err),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exactly one")));
  options.file = "";
  options.text = "bad \xff";
  EXPECT_THAT(RunTokenize(options, out, err),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte offset 4")));
  options.text = "x";
  options.model_dir = "/nonexistent";
  EXPECT_THAT(RunTokenize(options, out, err), StatusIs(absl::StatusCode::kNotFound));
  options.model_dir = kModel;
  options.text = "";
  options.file = "/nonexistent/file.txt";
  EXPECT_THAT(RunTokenize(options, out, err), StatusIs(absl::StatusCode::kNotFound, HasSubstr("file.txt")));
}

TEST(DetokenizeCommandTest, PrintsText) {
  DetokenizeOptions options;
  options.model_dir = kModel;
  options.ids = {128000, 9906, 1917, 0, 128009};
  std::ostringstream out;
  ASSERT_OK(RunDetokenize(options, out));
  EXPECT_EQ(out.str(), "{\"text\":\"<|begin_of_text|>Hello world!<|eot_id|>\"}\n");
  options.skip_special_tokens = true;
  std::ostringstream skipped;
  ASSERT_OK(RunDetokenize(options, skipped));
  EXPECT_EQ(skipped.str(), "{\"text\":\"Hello world!\"}\n");
}

TEST(DetokenizeCommandTest, RejectsAnIdOutsideTheVocabulary) {
  DetokenizeOptions options;
  options.model_dir = kModel;
  options.ids = {9906, 128256};
  std::ostringstream out;
  EXPECT_THAT(RunDetokenize(options, out), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("128256")));
  EXPECT_EQ(out.str(), "");
}

}  // namespace
}  // namespace tessera
