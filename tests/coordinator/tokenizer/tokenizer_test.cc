// Tokenizer on the real Llama 3 / 3.1 files: encoding and decoding cases checked against Python `tokenizers`,
// bad input, thread safety and a 10 MB word. (The exhaustive comparisons with Python are corpus_test.py,
// golden_test.py and variants_test.py.)
#include "coordinator/tokenizer/tokenizer.h"

#include <random>
#include <thread>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const Tokenizer& Llama31() {
  static const Tokenizer* tokenizer = [] {
    auto t = Tokenizer::Load(TESSERA_TEST_DATA_DIR "/llama-3.1-tokenizer");
    EXPECT_OK(t);
    return t.ok() ? t->release() : nullptr;
  }();
  return *tokenizer;
}

int32_t Id(std::string_view token) { return Llama31().TokenToId(token).value(); }

TEST(TokenizerTest, EncodesLikeHuggingFace) {
  ASSERT_OK_AND_ASSIGN(auto ids, Llama31().Encode("Hello world!", false));
  EXPECT_THAT(ids, ElementsAre(9906, 1917, 0));
  ASSERT_OK_AND_ASSIGN(ids, Llama31().Encode("👍🏽 ok", false));
  EXPECT_THAT(ids, ElementsAre(9468, 239, 235, 9468, 237, 121, 5509));
  ASSERT_OK_AND_ASSIGN(ids, Llama31().Encode("", false));
  EXPECT_TRUE(ids.empty());
}

TEST(TokenizerTest, AddsBeginOfTextOnlyWithSpecialTokens) {
  ASSERT_OK_AND_ASSIGN(auto ids, Llama31().Encode("Hello world!", true));
  EXPECT_THAT(ids, ElementsAre(128000, 9906, 1917, 0));
  ASSERT_OK_AND_ASSIGN(ids, Llama31().Encode("", true));
  EXPECT_THAT(ids, ElementsAre(128000));
}

TEST(TokenizerTest, Llama3FileHasNoBosTemplate) {
  // Llama 3's tokenizer.json has only a ByteLevel post-processor, so HF adds nothing there either.
  ASSERT_OK_AND_ASSIGN(auto llama3, Tokenizer::Load(TESSERA_TEST_DATA_DIR "/llama-3-tokenizer"));
  ASSERT_OK_AND_ASSIGN(auto ids, llama3->Encode("Hello", true));
  EXPECT_THAT(ids, ElementsAre(9906));
  EXPECT_EQ(llama3->config().eos_token, "<|end_of_text|>");
}

TEST(TokenizerTest, SplitsSpecialTokenTextOutOfTheInput) {
  ASSERT_OK_AND_ASSIGN(auto ids, Llama31().Encode("Hello world! <|eot_id|> it's  ok", false));
  EXPECT_THAT(ids, ElementsAre(9906, 1917, 0, 220, 128009, 433, 596, 220, 5509));
  ASSERT_OK_AND_ASSIGN(ids, Llama31().Encode("<|start_header_id|>user<|end_header_id|>\n\nHi", false));
  EXPECT_THAT(ids, ElementsAre(128006, 882, 128007, 271, 13347));
}

TEST(TokenizerTest, MongolianVowelSeparatorIsNotWhitespace) {
  // PCRE2's \s matches U+180E but Oniguruma's (which HF uses) does not; these ids are Python's.
  ASSERT_OK_AND_ASSIGN(auto ids, Llama31().Encode("x\u180e\u180e y a  \u180e b", false));
  EXPECT_THAT(ids, ElementsAre(87, 157, 254, 236, 157, 254, 236, 379, 264, 220, 87189, 254, 236, 293));
}

TEST(TokenizerTest, RejectsInvalidUtf8NamingTheOffset) {
  EXPECT_THAT(Llama31().Encode("ab\xff"
                               "cd",
                               false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte offset 2")));
  EXPECT_THAT(Llama31().Encode("abc\xe2\x82", false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte offset 3")));
  EXPECT_THAT(Llama31().Encode("\xed\xa0\x80", false),  // a surrogate
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte offset 0")));
  EXPECT_THAT(Llama31().Encode("x\xc0\xaf", false),  // overlong '/'
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte offset 1")));
  EXPECT_THAT(Llama31().Encode("\xf4\x90\x80\x80", false),  // above U+10FFFF
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte offset 0")));
}

TEST(TokenizerTest, DecodesWithAndWithoutSpecialTokens) {
  const std::vector<int32_t> ids = {128000, 9906, 1917, 0, 220, 128009};
  ASSERT_OK_AND_ASSIGN(std::string text, Llama31().Decode(ids, false));
  EXPECT_EQ(text, "<|begin_of_text|>Hello world! <|eot_id|>");
  ASSERT_OK_AND_ASSIGN(text, Llama31().Decode(ids, true));
  EXPECT_EQ(text, "Hello world! ");
}

TEST(TokenizerTest, ReplacesInvalidUtf8LikeHuggingFace) {
  // Byte tokens: "â" is 0xE2, "Ĥ" 0x82, "ð" 0xF0, "Ģ" 0x80, "Ā" 0x00. Expected strings are Python's.
  ASSERT_OK_AND_ASSIGN(std::string text, Llama31().Decode({Id("â"), Id("Ĥ"), Id("A")}, false));
  EXPECT_EQ(text,
            "\uFFFD"
            "A");  // one U+FFFD for the maximal subpart E2 82
  ASSERT_OK_AND_ASSIGN(text, Llama31().Decode({Id("ð"), Id("A"), Id("Ģ")}, false));
  EXPECT_EQ(text,
            "\uFFFD"
            "A\uFFFD");
  ASSERT_OK_AND_ASSIGN(text, Llama31().Decode({Id("Ģ"), Id("Ā")}, false));
  EXPECT_EQ(text, std::string("\uFFFD\0", 4));
}

TEST(TokenizerTest, RejectsIdsOutsideTheVocabulary) {
  EXPECT_THAT(Llama31().Decode({9906, 128256}, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("128256")));
  EXPECT_THAT(Llama31().Decode({-1}, true), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("-1")));
  EXPECT_THAT(Llama31().DecodedBytes(1 << 30, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1073741824")));
}

TEST(TokenizerTest, ReportsVocabularyAndConfig) {
  EXPECT_EQ(Llama31().vocab_size(), 128256);
  EXPECT_EQ(Llama31().TokenToId("<|eot_id|>"), 128009);
  EXPECT_EQ(Llama31().TokenToId("Ġthe"), 279);
  EXPECT_EQ(Llama31().TokenToId("no such token"), std::nullopt);
  EXPECT_TRUE(Llama31().IsSpecial(128009));
  EXPECT_TRUE(Llama31().IsSpecial(128255));
  EXPECT_FALSE(Llama31().IsSpecial(279));
  EXPECT_FALSE(Llama31().IsSpecial(128256));
  EXPECT_EQ(Llama31().config().bos_token, "<|begin_of_text|>");
  EXPECT_EQ(Llama31().config().eos_token, "<|eot_id|>");
  EXPECT_THAT(Llama31().config().chat_template, HasSubstr("start_header_id"));
  EXPECT_TRUE(Llama31().config().clean_up_tokenization_spaces);
}

TEST(TokenizerTest, LoadNamesAMissingFile) {
  EXPECT_THAT(Tokenizer::Load("/nonexistent/model"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/model/tokenizer.json")));
}

TEST(TokenizerTest, EncodesConcurrentlyFromManyThreads) {
  const std::vector<std::string> texts = {"Hello world! <|eot_id|>",
                                          "The quick brown fox jumps over the lazy dog",
                                          "東京 مرحبا नमस्ते 12345678", std::string(3000, 'q')};
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(Llama31().Encode(t, true).value());
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 50; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          auto ids = Llama31().Encode(texts[i], true);
          if (!ids.ok() || *ids != expected[i]) ++mismatches;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// A single 10 MB pre-token must not be quadratic (this finishes in seconds); decoding restores the text.
TEST(TokenizerTest, EncodesATenMegabyteWordWithoutSpaces) {
  std::mt19937 rng(42);
  std::string text(10'000'000, 'a');
  for (char& c : text) c = static_cast<char>('a' + rng() % 26);
  ASSERT_OK_AND_ASSIGN(auto ids, Llama31().Encode(text, false));
  EXPECT_GT(ids.size(), text.size() / 4);
  ASSERT_OK_AND_ASSIGN(std::string decoded, Llama31().Decode(ids, false));
  EXPECT_TRUE(decoded == text);
}

TEST(TokenizerTest, EncodesATenMegabyteRunOfSpaces) {
  const std::string text = std::string(10'000'000, ' ') + "x";
  ASSERT_OK_AND_ASSIGN(auto ids, Llama31().Encode(text, false));
  ASSERT_OK_AND_ASSIGN(std::string decoded, Llama31().Decode(ids, false));
  EXPECT_TRUE(decoded == text);
}

}  // namespace
}  // namespace tessera
