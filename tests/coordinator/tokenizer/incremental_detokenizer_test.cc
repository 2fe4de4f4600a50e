// IncrementalDetokenizer: emitted text is a prefix of the full decode at every step and equals it after Flush
// (also when multi-byte characters are split across byte tokens), and stop strings are held back and cut.
#include "coordinator/tokenizer/incremental_detokenizer.h"

#include <random>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

const Tokenizer& Llama31() {
  static const Tokenizer* tokenizer = [] {
    auto t = Tokenizer::Load(TESSERA_TEST_DATA_DIR "/llama-3.1-tokenizer");
    EXPECT_OK(t);
    return t.ok() ? t->release() : nullptr;
  }();
  return *tokenizer;
}

std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true) {
  return Llama31().Encode(text, add_special_tokens).value();
}

// Adds ids one by one; after each, checks emitted() is a prefix of Decode(prefix) and that a copy's Flush
// completes it exactly.
void ExpectPrefixProperty(const std::vector<int32_t>& ids, bool skip_special_tokens) {
  IncrementalDetokenizer detokenizer(Llama31(), skip_special_tokens);
  std::string concatenated;
  for (size_t k = 1; k <= ids.size(); ++k) {
    ASSERT_OK_AND_ASSIGN(std::string piece, detokenizer.Add(ids[k - 1]));
    concatenated += piece;
    ASSERT_EQ(concatenated, detokenizer.emitted());
    const std::string full =
        Llama31().Decode(std::vector<int32_t>(ids.begin(), ids.begin() + k), skip_special_tokens).value();
    ASSERT_EQ(full.compare(0, concatenated.size(), concatenated), 0) << "not a prefix after " << k << " ids";
    IncrementalDetokenizer copy = detokenizer;
    ASSERT_EQ(concatenated + copy.Flush(), full) << "after " << k << " ids";
  }
}

TEST(IncrementalDetokenizerTest, ConcatenationEqualsDecodeForEveryPrefix) {
  for (const char* text : {"Hello world! <|eot_id|> it's  ok",
                           "👨‍👩‍👧‍👦 family 👍🏽👍🏿 and 🇺🇸 flags",
                           "東京タワー、مرحبا بالعالم، नमस्ते दुनिया", "e\u0301\u0308 combining",
                           "\r\n\t\u00a0x", "<|start_header_id|>assistant<|end_header_id|>\n\n😀"}) {
    SCOPED_TRACE(text);
    ExpectPrefixProperty(Encode(text), false);
    ExpectPrefixProperty(Encode(text), true);
  }
}

TEST(IncrementalDetokenizerTest, ConcatenationEqualsDecodeForRandomIds) {
  // Random byte tokens (ids 0..255 are the single bytes) make broken and split UTF-8 sequences.
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<int32_t> ids(1 + rng() % 24);
    for (int32_t& id : ids)
      id = rng() % 2 ? static_cast<int32_t>(rng() % 256) : static_cast<int32_t>(rng() % 128256);
    ExpectPrefixProperty(ids, round % 2 == 0);
  }
}

TEST(IncrementalDetokenizerTest, EmitsAnEmojiOnlyWhenComplete) {
  const std::vector<int32_t> ids = Encode("👍", false);  // three byte-level tokens
  ASSERT_GT(ids.size(), 1u);
  IncrementalDetokenizer detokenizer(Llama31(), false);
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(detokenizer.Add(ids[i]).value(), "");
  EXPECT_EQ(detokenizer.Add(ids.back()).value(), "👍");
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST(IncrementalDetokenizerTest, FlushReplacesAnIncompleteTailLikeDecode) {
  const std::vector<int32_t> ids = Encode("ok👍", false);
  IncrementalDetokenizer detokenizer(Llama31(), false);
  std::string out;
  for (size_t i = 0; i + 1 < ids.size(); ++i) out += detokenizer.Add(ids[i]).value();
  EXPECT_EQ(out, "ok");
  EXPECT_EQ(detokenizer.Flush(), "\uFFFD");
}

TEST(IncrementalDetokenizerTest, StopsAtAStopStringSpanningTokens) {
  IncrementalDetokenizer detokenizer(Llama31(), false);
  detokenizer.SetStopStrings({"unused", "lo wor"});
  std::string out;
  for (int32_t id : Encode("Hello world! More")) out += detokenizer.Add(id).value();
  EXPECT_TRUE(detokenizer.stopped());
  EXPECT_EQ(detokenizer.stop_string_index(), 1);
  EXPECT_EQ(out, "<|begin_of_text|>Hel");
  EXPECT_EQ(detokenizer.emitted(), out);
  EXPECT_EQ(detokenizer.Add(9906).value(), "");
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST(IncrementalDetokenizerTest, HoldsBackAPossibleStopStringUntilItFails) {
  IncrementalDetokenizer detokenizer(Llama31(), true);
  detokenizer.SetStopStrings({" world peace"});
  const std::vector<int32_t> ids = Encode("Hello world!");  // <|begin_of_text|> Hello Ġworld !
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(detokenizer.Add(ids[0]).value(), "");
  EXPECT_EQ(detokenizer.Add(ids[1]).value(), "Hello");
  EXPECT_EQ(detokenizer.Add(ids[2]).value(), "");  // " world" may become " world peace"
  EXPECT_EQ(detokenizer.Add(ids[3]).value(), " world!");
  EXPECT_FALSE(detokenizer.stopped());
  EXPECT_EQ(detokenizer.stop_string_index(), -1);
}

TEST(IncrementalDetokenizerTest, FlushReleasesHeldTextWhenNoStopStringCompletes) {
  IncrementalDetokenizer detokenizer(Llama31(), false);
  detokenizer.SetStopStrings({"Hello world peace"});
  std::string out;
  for (int32_t id : Encode("Hello world", false)) out += detokenizer.Add(id).value();
  EXPECT_EQ(out, "");
  EXPECT_EQ(detokenizer.Flush(), "Hello world");
  EXPECT_FALSE(detokenizer.stopped());
}

TEST(IncrementalDetokenizerTest, EarliestStopStringWins) {
  IncrementalDetokenizer detokenizer(Llama31(), false);
  detokenizer.SetStopStrings({"world", "o w", ""});
  for (int32_t id : Encode("Hello world", false)) ASSERT_OK(detokenizer.Add(id));
  EXPECT_TRUE(detokenizer.stopped());
  EXPECT_EQ(detokenizer.emitted(), "Hell");
  EXPECT_EQ(detokenizer.stop_string_index(), 1);
}

TEST(IncrementalDetokenizerTest, RejectsAnIdOutsideTheVocabularyAndKeepsGoing) {
  IncrementalDetokenizer detokenizer(Llama31(), false);
  EXPECT_EQ(detokenizer.Add(9906).value(), "Hello");
  EXPECT_THAT(detokenizer.Add(200000), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("200000")));
  EXPECT_EQ(detokenizer.Add(1917).value(), " world");
}

}  // namespace
}  // namespace tessera
