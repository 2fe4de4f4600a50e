// CompletionText with the real Llama 3 tokenizer: multi-byte characters split over tokens, stop strings that
// span tokens, tease and release, the earliest of several, a stop at the first token, stop token ids.
#include "coordinator/completion_text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

constexpr int32_t kEotId = 128009;  // <|eot_id|>, special

const Tokenizer& Llama3() {
  static const Tokenizer* tokenizer = [] {
    auto t = Tokenizer::Load(TESSERA_TEST_DATA_DIR "/llama-3-tokenizer");
    EXPECT_OK(t);
    return t.ok() ? t->release() : nullptr;
  }();
  return *tokenizer;
}

std::vector<int32_t> Encode(std::string_view text) { return Llama3().Encode(text, false).value(); }

struct Fed {
  std::vector<std::string> deltas;  // Add's text per token
  int stopped_at = -1;              // the token whose Add answered stop
  std::string finish;               // Finish's text
  std::string text;                 // text()
};

Fed Feed(const std::vector<int32_t>& ids, std::vector<std::string> stops,
         std::vector<int32_t> stop_ids = {}, int min_tokens = 0) {
  CompletionText completion(&Llama3(), std::move(stops), stop_ids, min_tokens);
  Fed run;
  for (size_t i = 0; i < ids.size(); ++i) {
    CompletionText::Delta delta = completion.Add(ids[i]);
    run.deltas.push_back(delta.text);
    if (delta.stop) {
      run.stopped_at = static_cast<int>(i);
      break;
    }
  }
  run.finish = completion.Finish();
  run.text = completion.text();
  return run;
}

TEST(CompletionTextTest, WithoutStopsTheTextIsTheDecodeOfTheTokens) {
  for (const char* text :
       {"Hello world, this is a test.", "héllo 東京 😀!", " 東京タワー and 👨‍👩‍👧 family"}) {
    SCOPED_TRACE(text);
    const std::vector<int32_t> ids = Encode(text);
    Fed run = Feed(ids, {});
    EXPECT_EQ(run.stopped_at, -1);
    EXPECT_EQ(run.text, text);
    std::string concatenated;
    for (const std::string& d : run.deltas) concatenated += d;
    EXPECT_EQ(concatenated + run.finish, text);
  }
}

TEST(CompletionTextTest, HoldsAMultiByteCharacterSplitOverTokensUntilItIsComplete) {
  // 😀 is F0 9F 98 80; the byte-level tokens of those bytes are 172, 253, 246, 222.
  std::vector<int32_t> ids = Encode("Hi ");
  const size_t first_byte = ids.size();
  for (int32_t id : {172, 253, 246, 222}) ids.push_back(id);
  ids.push_back(Encode("!")[0]);
  Fed run = Feed(ids, {});
  EXPECT_EQ(run.deltas[first_byte], "");
  EXPECT_EQ(run.deltas[first_byte + 1], "");
  EXPECT_EQ(run.deltas[first_byte + 2], "");
  EXPECT_EQ(run.deltas[first_byte + 3], "😀");
  EXPECT_EQ(run.text, "Hi 😀!");
}

TEST(CompletionTextTest, EndsAtAStopStringSpanningTokensAndDropsItAndWhatFollows) {
  // Tokens: The | answer | is | ' ' | 42 | . | END | of | story
  const std::vector<int32_t> ids = Encode("The answer is 42. END of story");
  Fed run = Feed(ids, {"42. EN"});
  EXPECT_EQ(run.stopped_at, 6);  // " END" completes the stop string (and goes past it)
  EXPECT_EQ(run.text, "The answer is ");
  EXPECT_EQ(run.deltas[4], "");  // "42" could start the stop string: held
  EXPECT_EQ(run.deltas[5], "");  // "42."
  EXPECT_EQ(run.deltas[6], "");
  EXPECT_EQ(run.finish, "");
}

TEST(CompletionTextTest, StopStringsCountOnlyAfterMinTokens) {
  // Tokens: a | b | a | b | a (each letter its own token with the spaces: " a" and " b").
  const std::vector<int32_t> ids = Encode(" a b a b a");
  ASSERT_EQ(ids.size(), 5u);
  // " b" first appears in token 1; with min_tokens 2 it is neither matched nor held there, and the stop string
  // ends the choice at its next appearance, token 3.
  Fed early = Feed(ids, {" b"});
  EXPECT_EQ(early.stopped_at, 1);
  EXPECT_EQ(early.text, " a");
  Fed later = Feed(ids, {" b"}, {}, /*min_tokens=*/2);
  EXPECT_EQ(later.stopped_at, 3);
  EXPECT_EQ(later.deltas[1], " b");  // within min_tokens: released at once
  EXPECT_EQ(later.text, " a b a");
  Fed never = Feed(ids, {" b"}, {}, /*min_tokens=*/5);
  EXPECT_EQ(never.stopped_at, -1);
  EXPECT_EQ(never.text, " a b a b a");
}

TEST(CompletionTextTest, ReleasesHeldTextWhenTheTeaseIsNotMatched) {
  const std::vector<int32_t> ids = Encode("The answer is 42. END of story");
  Fed run = Feed(ids, {"42!"});
  EXPECT_EQ(run.stopped_at, -1);
  EXPECT_EQ(run.deltas[4], "");     // "42" held: it could be the start of "42!"
  EXPECT_EQ(run.deltas[5], "42.");  // not "42!": released with the dot
  EXPECT_EQ(run.text, "The answer is 42. END of story");
}

TEST(CompletionTextTest, ReleasesHeldTextAtTheEnd) {
  Fed run = Feed(Encode("Hello"), {"Hello world"});
  EXPECT_EQ(run.deltas[0], "");
  EXPECT_EQ(run.finish, "Hello");
  EXPECT_EQ(run.text, "Hello");
}

TEST(CompletionTextTest, TheEarliestOfSeveralStopStringsWins) {
  // Tokens: Hello | world | , | this | is | a | test | .
  const std::vector<int32_t> ids = Encode("Hello world, this is a test.");
  Fed run = Feed(ids, {"a test", " is", ", this"});
  EXPECT_EQ(run.stopped_at, 3);
  EXPECT_EQ(run.text, "Hello world");
  // Both complete inside the same token: the one that starts first wins.
  Fed same_token = Feed(Encode("Hello world"), {"world", "lo w"});
  EXPECT_EQ(same_token.stopped_at, 1);
  EXPECT_EQ(same_token.text, "Hel");
}

TEST(CompletionTextTest, StopsAtTheFirstToken) {
  Fed run = Feed(Encode("Hello world"), {"Hel"});
  EXPECT_EQ(run.stopped_at, 0);
  EXPECT_EQ(run.text, "");
  EXPECT_EQ(run.finish, "");
}

TEST(CompletionTextTest, AStopTokenIdEndsTheChoiceWithoutItsTextAndReleasesTheHeldText) {
  std::vector<int32_t> ids = Encode("Hello");
  const int32_t period = Encode(".")[0];
  ids.push_back(period);  // a non-special stop id: its text is not returned either
  ids.push_back(Encode(" more")[0]);
  Fed run = Feed(ids, {"Hello world"}, {kEotId, period});
  EXPECT_EQ(run.stopped_at, 1);
  EXPECT_EQ(run.finish, "Hello");
  EXPECT_EQ(run.text, "Hello");
}

TEST(CompletionTextTest, AddsAfterAStopAnswerStopWithNoText) {
  CompletionText completion(&Llama3(), {"Hel"}, {});
  EXPECT_TRUE(completion.Add(Encode("Hello")[0]).stop);
  CompletionText::Delta later = completion.Add(Encode(" world")[0]);
  EXPECT_TRUE(later.stop);
  EXPECT_EQ(later.text, "");
}

TEST(CompletionTextTest, SpecialTokensAndIdsOutsideTheVocabularyAddNoText) {
  std::vector<int32_t> ids = Encode("Hi");
  ids.push_back(kEotId);  // not a stop id here (ignore_eos): generated, skipped in the text
  ids.push_back(200000);  // beyond the tokenizer: dropped, as Hugging Face's decode drops it
  ids.push_back(Encode("!")[0]);
  Fed run = Feed(ids, {});
  EXPECT_EQ(run.stopped_at, -1);
  EXPECT_EQ(run.text, "Hi!");
}

TEST(CompletionTextTest, WithoutATokenizerThereIsNoTextAndStopIdsStillEnd) {
  CompletionText completion(nullptr, {"x"}, {kEotId});
  CompletionText::Delta first = completion.Add(9906);
  EXPECT_FALSE(first.stop);
  EXPECT_EQ(first.text, "");
  EXPECT_TRUE(completion.Add(kEotId).stop);
  EXPECT_EQ(completion.Finish(), "");
  EXPECT_EQ(completion.text(), "");
}

}  // namespace
}  // namespace tessera
