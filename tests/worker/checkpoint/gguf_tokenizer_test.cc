// Tests for TokenizerFilesFromGguf: the written tokenizer.json has Llama 3's / SmolLM2's exact pre-tokenizer,
// loads in Tessera's Tokenizer and encodes as each pre value says; tokenizer_config.json carries the special
// tokens and chat templates that ModelChatTemplates reads; bad tokenizer metadata is refused by name.
#include "worker/checkpoint/gguf_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "coordinator/chat_template/model_chat_templates.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "core/str_cat.h"
#include "tests/util/status_matchers.h"
#include "tests/worker/checkpoint/gguf_test_builder.h"
#include "tests/worker/checkpoint/test_files.h"

namespace tessera {
namespace {

using ::tessera::testing::GgufBuilder;
using ::tessera::testing::ReadFile;
using ::tessera::testing::ScopedTempDir;
using ::tessera::testing::StatusIs;
using ::tessera::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Code = absl::StatusCode;
using Json = nlohmann::json;

// GPT-2's byte-to-unicode table: the vocabulary spelling of each byte.
std::vector<std::string> ByteAlphabet() {
  std::vector<std::string> out(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : next++;
    out[b] = cp < 0x80
                 ? std::string(1, static_cast<char>(cp))
                 : std::string{static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
  }
  return out;
}

// Token ids of the test vocabulary.
constexpr int kTh = 256, kThe = 257, kSpaceThe = 258, kTwelve = 259, kBos = 260, kEos = 261, kTool = 262;

// A byte-level vocabulary: the 256 bytes, four merges, two control tokens and one user-defined token.
GgufBuilder TokenizerGguf(const std::string& pre) {
  std::vector<std::string> tokens = ByteAlphabet();
  for (const char* t : {"th", "the", "Ġthe", "12", "<|begin_of_text|>", "<|end|>", "<tool>"})
    tokens.push_back(t);
  std::vector<int32_t> types(tokens.size(), 1);
  types[kBos] = types[kEos] = 3;
  types[kTool] = 4;
  GgufBuilder b;
  b.Str("tokenizer.ggml.model", "gpt2")
      .StrArray("tokenizer.ggml.tokens", tokens)
      .I32Array("tokenizer.ggml.token_type", types);
  b.StrArray("tokenizer.ggml.merges", {"t h", "th e", "Ġ the", "1 2"});
  if (!pre.empty()) b.Str("tokenizer.ggml.pre", pre);
  b.U32("tokenizer.ggml.bos_token_id", kBos).U32("tokenizer.ggml.eos_token_id", kEos);
  b.U32("tokenizer.ggml.padding_token_id", kEos).U32("tokenizer.ggml.unknown_token_id", 0);
  return b;
}

absl::StatusOr<GgufTokenizerFiles> Files(const ScopedTempDir& dir, const GgufBuilder& b) {
  WriteFile(dir.File("t.gguf"), b.Build());
  ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(dir.File("t.gguf")));
  return TokenizerFilesFromGguf(file, 2048);
}

// Writes the files into dir/model and loads them with Tessera's tokenizer.
absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const ScopedTempDir& dir, const GgufTokenizerFiles& files) {
  std::filesystem::create_directories(dir.File("model"));
  WriteFile(dir.File("model/tokenizer.json"), files.tokenizer_json);
  WriteFile(dir.File("model/tokenizer_config.json"), files.tokenizer_config_json);
  return Tokenizer::Load(dir.File("model"));
}

TEST(GgufTokenizerTest, LlamaBpeWritesLlama3sPreTokenizerAndAddsBos) {
  ScopedTempDir dir;
  ASSERT_OK_AND_ASSIGN(GgufTokenizerFiles files, Files(dir, TokenizerGguf("llama-bpe")));
  const Json written = Json::parse(files.tokenizer_json);
  const Json llama3 = Json::parse(ReadFile(TESSERA_TEST_DATA_DIR "/llama-3.1-tokenizer/tokenizer.json"));
  EXPECT_EQ(written["pre_tokenizer"], llama3["pre_tokenizer"]);
  EXPECT_EQ(written["decoder"], llama3["decoder"]);
  Json post = llama3["post_processor"];
  const std::string bos_text = "<|begin_of_text|>";
  post["processors"][1]["special_tokens"][bos_text]["ids"] = {kBos};
  EXPECT_EQ(written["post_processor"], post);
  EXPECT_EQ(written["model"]["ignore_merges"], true);
  EXPECT_EQ(written["model"]["merges"][2], "Ġ the");
  EXPECT_EQ(written["model"]["vocab"]["Ġthe"], kSpaceThe);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tokenizer> tokenizer, Load(dir, files));
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids,
                       tokenizer->Encode("the the<tool>", /*add_special_tokens=*/true));
  EXPECT_THAT(ids, ElementsAre(kBos, kThe, kSpaceThe, kTool));
  EXPECT_TRUE(tokenizer->IsSpecial(kBos));
  EXPECT_FALSE(tokenizer->IsSpecial(kTool));
  EXPECT_TRUE(tokenizer->config().add_bos_token);
}

TEST(GgufTokenizerTest, SmollmSplitsDigitsBeforeTheGpt2RegexAndGpt2DoesNot) {
  ScopedTempDir dir;
  ASSERT_OK_AND_ASSIGN(GgufTokenizerFiles smollm, Files(dir, TokenizerGguf("smollm")));
  EXPECT_EQ(Json::parse(smollm.tokenizer_json)["pre_tokenizer"],
            Json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]})"));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tokenizer> split, Load(dir, smollm));
  EXPECT_THAT(*split->Encode("the 123", true),
              ElementsAre(kThe, ' ', '1', '2', '3'));  // a byte's id is its value
  ScopedTempDir dir2;
  for (const char* pre : {"gpt2", ""}) {
    ASSERT_OK_AND_ASSIGN(GgufTokenizerFiles gpt2, Files(dir2, TokenizerGguf(pre)));
    EXPECT_EQ(
        Json::parse(gpt2.tokenizer_json)["pre_tokenizer"],
        Json::parse(
            R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})"));
    EXPECT_EQ(Json::parse(gpt2.tokenizer_json)["model"]["ignore_merges"], false);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tokenizer> whole, Load(dir2, gpt2));
    EXPECT_THAT(*whole->Encode("the 123", true), ElementsAre(kThe, ' ', kTwelve, '3'));
  }
}

TEST(GgufTokenizerTest, ConfigCarriesSpecialTokensAndChatTemplates) {
  ScopedTempDir dir;
  GgufBuilder b = TokenizerGguf("gpt2");
  b.Str("tokenizer.chat_template", "{{ bos_token }}{{ messages[0]['content'] }}");
  b.StrArray("tokenizer.chat_templates", {"tool_use"}).Str("tokenizer.chat_template.tool_use", "T");
  b.Bool("tokenizer.ggml.add_bos_token", false).Bool("tokenizer.ggml.add_eos_token", true);
  ASSERT_OK_AND_ASSIGN(GgufTokenizerFiles files, Files(dir, b));
  const Json config = Json::parse(files.tokenizer_config_json);
  EXPECT_EQ(config["bos_token"], "<|begin_of_text|>");
  EXPECT_EQ(config["eos_token"], "<|end|>");
  EXPECT_EQ(config["pad_token"], "<|end|>");
  EXPECT_EQ(config["unk_token"], ByteAlphabet()[0]);
  EXPECT_EQ(config["add_bos_token"], false);
  EXPECT_EQ(config["add_eos_token"], true);
  EXPECT_EQ(config["clean_up_tokenization_spaces"], false);
  EXPECT_EQ(config["model_max_length"], 2048);
  EXPECT_EQ(config["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(config["added_tokens_decoder"].size(), 3u);
  EXPECT_EQ(config["added_tokens_decoder"][std::to_string(kBos)]["special"], true);
  EXPECT_EQ(config["added_tokens_decoder"][std::to_string(kTool)]["special"], false);
  EXPECT_EQ(config["added_tokens_decoder"][std::to_string(kTool)]["content"], "<tool>");
  ASSERT_EQ(config["chat_template"].size(), 2u);
  EXPECT_EQ(config["chat_template"][1]["name"], "tool_use");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Tokenizer> tokenizer, Load(dir, files));
  EXPECT_THAT(*tokenizer->Encode("the", true), ElementsAre(kThe, kEos));  // eos appended, no bos
  ASSERT_OK_AND_ASSIGN(ModelChatTemplates templates, ModelChatTemplates::Load(dir.File("model")));
  nlohmann::ordered_json request = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  EXPECT_EQ(*templates.Render(request), "<|begin_of_text|>hi");
}

TEST(GgufTokenizerTest, RefusesTokenizerMetadataItCannotConvert) {
  struct Case {
    GgufBuilder gguf;
    Code code;
    std::string culprit;
  };
  std::vector<Case> cases;
  GgufBuilder spm;
  spm.Str("tokenizer.ggml.model", "llama");
  cases.push_back({spm, Code::kInvalidArgument, "'tokenizer.ggml.model' = 'llama' is not supported"});
  cases.push_back(
      {TokenizerGguf("qwen2"), Code::kInvalidArgument, "'tokenizer.ggml.pre' = 'qwen2' is not supported"});
  cases.push_back({GgufBuilder().Str("tokenizer.ggml.model", "gpt2"), Code::kNotFound,
                   "metadata key 'tokenizer.ggml.tokens' is missing"});
  GgufBuilder no_bos;
  no_bos.Str("tokenizer.ggml.model", "gpt2")
      .StrArray("tokenizer.ggml.tokens", {"a"})
      .StrArray("tokenizer.ggml.merges", {});
  no_bos.Str("tokenizer.ggml.pre", "llama-bpe");
  cases.push_back({no_bos, Code::kNotFound, "'tokenizer.ggml.bos_token_id' is missing but bos is added"});
  GgufBuilder bad_bos;
  bad_bos.Str("tokenizer.ggml.model", "gpt2")
      .StrArray("tokenizer.ggml.tokens", {"a"})
      .StrArray("tokenizer.ggml.merges", {});
  bad_bos.U32("tokenizer.ggml.bos_token_id", 5);
  cases.push_back(
      {bad_bos, Code::kInvalidArgument, "'tokenizer.ggml.bos_token_id' = 5 is outside the 1 tokens"});
  GgufBuilder one_space;
  one_space.Str("tokenizer.ggml.model", "gpt2").StrArray("tokenizer.ggml.tokens", {"a"});
  one_space.StrArray("tokenizer.ggml.merges", {"a a", "aa"});
  cases.push_back(
      {one_space, Code::kInvalidArgument, "'tokenizer.ggml.merges' element 1 'aa' is not two tokens"});
  GgufBuilder types;
  types.Str("tokenizer.ggml.model", "gpt2")
      .StrArray("tokenizer.ggml.tokens", {"a", "b"})
      .I32Array("tokenizer.ggml.token_type", {1});
  cases.push_back({types, Code::kInvalidArgument, "'tokenizer.ggml.token_type' has 1 entries for 2 tokens"});
  GgufBuilder utf8;
  utf8.Str("tokenizer.ggml.model", "gpt2")
      .StrArray("tokenizer.ggml.tokens", {"a", "\xff"})
      .StrArray("tokenizer.ggml.merges", {});
  cases.push_back({utf8, Code::kInvalidArgument, "tokenizer.ggml.tokens element 1 is not valid UTF-8"});
  for (Case& c : cases) {
    ScopedTempDir dir;
    WriteFile(dir.File("t.gguf"), c.gguf.Build());
    absl::StatusOr<GgufFile> file = GgufFile::Open(dir.File("t.gguf"));
    if (!file.ok()) {
      EXPECT_THAT(file, StatusIs(c.code, HasSubstr(c.culprit)));
      continue;
    }
    EXPECT_THAT(TokenizerFilesFromGguf(*file, 2048),
                StatusIs(c.code, AllOf(HasSubstr("t.gguf: "), HasSubstr(c.culprit))));
  }
}

}  // namespace
}  // namespace tessera
