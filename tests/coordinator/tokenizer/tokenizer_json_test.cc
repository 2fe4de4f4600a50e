// Loading tokenizer.json: tiny hand-written byte-level BPE files for both merge spellings, ignore_merges and
// tokenizer_config.json, and every malformed-file error (code and culprit named).
#include <nlohmann/json.hpp>

#include "coordinator/tokenizer/tokenizer.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// Vocabulary a=0 b=1 c=2 ab=3 bc=4 abc=5 Ġ=6, merges "a b", "ab c"; GPT-2 ByteLevel pre-tokenizer.
json TinyTokenizer() {
  return json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
    "added_tokens": [{"id": 7, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
                      "normalized": false, "special": true}],
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
              "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "Ġ": 6},
              "merges": ["a b", "ab c"]}
  })");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const json& j, std::string_view config = "") {
  return Tokenizer::FromJson(j.dump(), config, "tiny.json");
}

TEST(TokenizerJsonTest, MergesAsStringsAndAsPairsGiveTheSameIds) {
  json pairs = TinyTokenizer();
  pairs["model"]["merges"] = json::parse(R"([["a", "b"], ["ab", "c"]])");
  for (const json& j : {TinyTokenizer(), pairs}) {
    ASSERT_OK_AND_ASSIGN(auto tokenizer, FromJson(j));
    ASSERT_OK_AND_ASSIGN(auto ids, tokenizer->Encode("abc cab<eos>", false));
    EXPECT_THAT(ids, ElementsAre(5, 6, 2, 3, 7));
    ASSERT_OK_AND_ASSIGN(std::string text, tokenizer->Decode(ids, true));
    EXPECT_EQ(text, "abc cab");
  }
}

TEST(TokenizerJsonTest, IgnoreMergesEmitsAVocabularyWordWhole) {
  json j = TinyTokenizer();
  j["model"]["merges"] = json::array({"b c"});  // "abc" by merges: a + bc
  ASSERT_OK_AND_ASSIGN(auto merged, FromJson(j));
  EXPECT_THAT(merged->Encode("abc", false).value(), ElementsAre(0, 4));
  j["model"]["ignore_merges"] = true;  // "abc" is in the vocabulary: one token
  ASSERT_OK_AND_ASSIGN(auto whole, FromJson(j));
  EXPECT_THAT(whole->Encode("abc", false).value(), ElementsAre(5));
}

TEST(TokenizerJsonTest, ReadsTokenizerConfig) {
  const std::string config = R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "<eos>",
      "add_bos_token": false, "chat_template": [{"name": "tool_use", "template": "T"},
                                                {"name": "default", "template": "D"}]})";
  ASSERT_OK_AND_ASSIGN(auto tokenizer, FromJson(TinyTokenizer(), config));
  EXPECT_EQ(tokenizer->config().bos_token, "<s>");
  EXPECT_EQ(tokenizer->config().eos_token, "<eos>");
  EXPECT_FALSE(tokenizer->config().add_bos_token);
  EXPECT_EQ(tokenizer->config().chat_template, "D");
  EXPECT_EQ(tokenizer->config().named_chat_templates.at("tool_use"), "T");
  EXPECT_THAT(FromJson(TinyTokenizer(), "{not json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tiny.json (config)")));
}

TEST(TokenizerJsonTest, RejectsBadJsonNamingTheOffset) {
  EXPECT_THAT(Tokenizer::FromJson(R"({"model": {"vocab": {"a": 0,}}})", "", "tiny.json"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("tiny.json"), HasSubstr("invalid JSON at byte offset 28"))));
  EXPECT_THAT(Tokenizer::FromJson("", "", "tiny.json"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {}, "merges": []}} x)", "", "tiny.json"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("after the top-level value")));
}

TEST(TokenizerJsonTest, RejectsAFileWithoutModel) {
  json j = TinyTokenizer();
  j.erase("model");
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no \"model\"")));
}

TEST(TokenizerJsonTest, RejectsAModelThatIsNotBpe) {
  json j = TinyTokenizer();
  j["model"]["type"] = "WordPiece";
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'WordPiece' is not BPE")));
}

TEST(TokenizerJsonTest, RejectsAModelWithoutVocab) {
  json j = TinyTokenizer();
  j["model"].erase("vocab");
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no \"vocab\"")));
}

TEST(TokenizerJsonTest, RejectsAMergeNamingAnUnknownToken) {
  json j = TinyTokenizer();
  j["model"]["merges"] = json::array({"a b", "a x"});
  EXPECT_THAT(FromJson(j),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("tiny.json"), HasSubstr("merges[1]"), HasSubstr("\"x\""))));
  j["model"]["merges"] = json::array({"c a"});  // "ca" is not in the vocabulary
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"ca\"")));
  j["model"]["merges"] = json::array({"abc"});
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("merges[0] \"abc\"")));
}

TEST(TokenizerJsonTest, RejectsARegexThatDoesNotCompile) {
  json j = TinyTokenizer();
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "(ab|c"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})");
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                    AllOf(HasSubstr("'(ab|c' does not compile"),
                                          HasSubstr("missing closing parenthesis"), HasSubstr("offset 5"))));
}

TEST(TokenizerJsonTest, RejectsUnsupportedComponentsByName) {
  json j = TinyTokenizer();
  j["normalizer"] = json::parse(R"({"type": "NFC"})");
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("normalizer 'NFC'")));
  j = TinyTokenizer();
  j["pre_tokenizer"] = json::parse(R"({"type": "Whitespace"})");
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'Whitespace'")));
  j = TinyTokenizer();
  j["decoder"] = nullptr;
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("decoder")));
  j = TinyTokenizer();
  j["post_processor"] = json::parse(R"({"type": "BertProcessing"})");
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'BertProcessing'")));
  j = TinyTokenizer();
  j["model"]["byte_fallback"] = true;
  EXPECT_THAT(FromJson(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte_fallback")));
}

}  // namespace
}  // namespace tessera
