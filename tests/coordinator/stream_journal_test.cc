// StreamJournal and StreamJournalStore: per-token texts that make every cut exact (inside multi-token deltas,
// inside a UTF-8 character, at the end), the tail held back to the end, readers taking over, and expiry (a
// detached journal is dropped a window after its detach or its end, its running request cancelled) with a
// fake clock.
#include "coordinator/stream_journal.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>
#include <random>

#include "coordinator/stream_journal_store.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::shared_ptr<const Tokenizer> Llama31Tokenizer() {
  static const std::shared_ptr<const Tokenizer> tokenizer = [] {
    auto t = Tokenizer::Load(TESSERA_TEST_DATA_DIR "/llama-3.1-tokenizer");
    EXPECT_OK(t);
    return t.ok() ? std::shared_ptr<const Tokenizer>(std::move(*t)) : nullptr;
  }();
  return tokenizer;
}

// "héllo 東京 😀🦜 ok": 🦜 is three byte-level tokens (9468, 99, 250), the first two of which complete
// no character, so their texts are empty.
const std::vector<int32_t> kTokens = {71, 19010, 385, 119109, 91416, 9468, 99, 250, 5509};
const std::string kText = "héllo 東京 😀🦜 ok";

StreamInfo Info(const std::string& id, int max_tokens, std::vector<std::string> stop = {}) {
  StreamInfo info;
  info.model = "tiny-test";
  info.prepared.request.id = id;
  info.prepared.request.prompt = {128000, 791};
  info.prepared.request.max_tokens = max_tokens;
  info.prepared.request.stop_token_ids = {128009};
  info.prepared.stop_strings = std::move(stop);
  return info;
}

// Plays `tokens` (up to max_tokens) into `journal` as the engine does; ends the choice with `reason` (kStop
// when OnToken said stop) and the request with OK.
void Play(StreamJournal& journal, const std::vector<int32_t>& tokens, FinishReason reason) {
  journal.OnCachedTokens(0);
  const int max_tokens = journal.info().prepared.request.max_tokens;
  for (int k = 0; k < static_cast<int>(tokens.size()) && k < max_tokens; ++k) {
    if (journal.OnToken(0, tokens[k])) {
      reason = FinishReason::kStop;
      break;
    }
  }
  journal.OnChoiceEnd(0, reason);
  journal.OnDone(absl::OkStatus());
}

std::string Join(const JournalRead& read) {
  std::string text;
  for (const std::string& t : read.texts) text += t;
  return text + read.tail;
}

TEST(StreamJournalTest, EveryCutGivesTheRestWithoutGapOrDuplicate) {
  StreamJournal journal(Llama31Tokenizer(), Info("r", 100));
  Play(journal, kTokens, FinishReason::kLength);
  const uint64_t reader = journal.Attach(nullptr);
  JournalCursor all;
  const JournalRead whole = journal.Read(reader, all);
  ASSERT_EQ(whole.token_ids, kTokens);
  EXPECT_EQ(Join(whole), kText);
  EXPECT_EQ(whole.texts[5], "");  // the first two pieces of 🦜 complete no character
  EXPECT_EQ(whole.texts[6], "");
  EXPECT_EQ(whole.texts[7], "🦜");
  for (size_t cut = 0; cut <= kTokens.size(); ++cut) {
    SCOPED_TRACE(cut);
    // What a client that has the first `cut` tokens has: their texts (from any grouping into deltas).
    JournalCursor head;
    const JournalRead before = journal.Read(reader, head, absl::ZeroDuration(), cut);
    EXPECT_EQ(before.token_ids.size(), cut);
    EXPECT_FALSE(before.end.has_value());
    EXPECT_FALSE(before.done.has_value());
    JournalCursor cursor;
    cursor.tokens = cut;
    const JournalRead rest = journal.Read(reader, cursor);
    EXPECT_EQ(Join(before) + Join(rest), kText);
    std::vector<int32_t> ids = before.token_ids;
    ids.insert(ids.end(), rest.token_ids.begin(), rest.token_ids.end());
    EXPECT_EQ(ids, kTokens);
    EXPECT_EQ(rest.end, FinishReason::kLength);
    ASSERT_TRUE(rest.done.has_value());
    EXPECT_OK(*rest.done);
    EXPECT_EQ(rest.completion_tokens, static_cast<int>(kTokens.size()));
    // Nothing more for that cursor.
    EXPECT_TRUE(journal.Read(reader, cursor).empty());
  }
}

TEST(StreamJournalTest, ReadsInRandomGroupsConcatenateToTheWholeText) {
  std::mt19937 rng(std::random_device{}());
  StreamJournal journal(Llama31Tokenizer(), Info("r", 100));
  const uint64_t reader = journal.Attach(nullptr);
  JournalCursor cursor;
  std::string text;
  std::vector<int32_t> ids;
  // The engine adds tokens while the reader reads groups of them (as gRPC deltas group them).
  for (size_t k = 0; k < kTokens.size(); ++k) {
    EXPECT_FALSE(journal.OnToken(0, kTokens[k]));
    if (rng() % 3 == 0) {
      JournalRead read = journal.Read(reader, cursor);
      text += Join(read);
      ids.insert(ids.end(), read.token_ids.begin(), read.token_ids.end());
    }
  }
  journal.OnChoiceEnd(0, FinishReason::kLength);
  journal.OnDone(absl::OkStatus());
  JournalRead read = journal.Read(reader, cursor);
  text += Join(read);
  ids.insert(ids.end(), read.token_ids.begin(), read.token_ids.end());
  EXPECT_EQ(text, kText);
  EXPECT_EQ(ids, kTokens);
}

TEST(StreamJournalTest, TheLastTokenCarriesTheTextHeldBackToTheEnd) {
  // max_tokens ends the choice inside 🦜: the held-back bytes become U+FFFD with the last token.
  StreamJournal journal(Llama31Tokenizer(), Info("r", 7));
  Play(journal, kTokens, FinishReason::kLength);
  const uint64_t reader = journal.Attach(nullptr);
  JournalCursor cursor;
  const JournalRead read = journal.Read(reader, cursor);
  ASSERT_EQ(read.token_ids.size(), 7u);
  EXPECT_EQ(read.texts[6], "\xEF\xBF\xBD");
  EXPECT_EQ(read.tail, "");  // resuming after the last token sends no text twice
  EXPECT_EQ(Join(read), Llama31Tokenizer()->Decode({kTokens.begin(), kTokens.begin() + 7}, true).value());
  // A stop string that ends the choice: the text before it, on the token that completed it.
  StreamJournal stopped(Llama31Tokenizer(), Info("s", 100, {"東京"}));
  Play(stopped, kTokens, FinishReason::kLength);
  const uint64_t r2 = stopped.Attach(nullptr);
  JournalCursor c2;
  const JournalRead s = stopped.Read(r2, c2);
  EXPECT_EQ(Join(s), "héllo ");
  EXPECT_EQ(s.token_ids.size(), 4u);  // the token that completed the stop string counts
  EXPECT_EQ(s.end, FinishReason::kStop);
  EXPECT_EQ(s.tail, "");
}

TEST(StreamJournalTest, WithoutItsEndTheTailComesWithTheEnd) {
  // The engine ends the choice at a shorter max_model_len than max_tokens: the journal could not know the
  // last token, so the held-back text comes with the end.
  StreamJournal journal(Llama31Tokenizer(), Info("r", 100));
  for (int k = 0; k < 6; ++k) journal.OnToken(0, kTokens[k]);
  const uint64_t reader = journal.Attach(nullptr);
  JournalCursor cursor;
  EXPECT_EQ(Join(journal.Read(reader, cursor)), "héllo 東京 😀");
  journal.OnChoiceEnd(0, FinishReason::kLength);
  journal.OnDone(absl::OkStatus());
  const JournalRead end = journal.Read(reader, cursor);
  EXPECT_TRUE(end.token_ids.empty());
  EXPECT_EQ(end.tail, "\xEF\xBF\xBD");
  EXPECT_EQ(end.end, FinishReason::kLength);
}

TEST(StreamJournalTest, LogprobsStayAlignedAndTokensAfterTheEndAreIgnored) {
  StreamInfo info = Info("r", 3);
  info.prepared.request.sampling.logprobs = true;
  StreamJournal journal(Llama31Tokenizer(), info);
  for (int k = 0; k < 3; ++k) {
    TokenLogprob lp;
    lp.token = kTokens[k];
    lp.logprob = -static_cast<float>(k);
    journal.OnLogprobs(0, lp);
    journal.OnToken(0, kTokens[k]);
  }
  journal.OnChoiceEnd(0, FinishReason::kLength);
  EXPECT_TRUE(journal.OnToken(0, 5));  // in flight after the end
  EXPECT_TRUE(journal.OnToken(1, 5));  // no such choice
  journal.OnDone(absl::OkStatus());
  const uint64_t reader = journal.Attach(nullptr);
  JournalCursor cursor;
  cursor.tokens = 1;
  const JournalRead read = journal.Read(reader, cursor);
  EXPECT_THAT(read.token_ids, ElementsAre(kTokens[1], kTokens[2]));
  ASSERT_EQ(read.logprobs.size(), 2u);
  EXPECT_EQ(read.logprobs[0].token, kTokens[1]);
  EXPECT_EQ(read.logprobs[1].logprob, -2.0f);
}

TEST(StreamJournalTest, ANewReaderTakesOverAndWakesThePreviousOne) {
  StreamJournal journal(Llama31Tokenizer(), Info("r", 100));
  int first_woken = 0, second_woken = 0;
  const uint64_t first = journal.Attach([&] { ++first_woken; });
  journal.OnToken(0, kTokens[0]);
  EXPECT_EQ(first_woken, 1);
  const uint64_t second = journal.Attach([&] { ++second_woken; });
  EXPECT_EQ(first_woken, 2);  // told to look: it is taken over
  JournalCursor cursor;
  EXPECT_TRUE(journal.Read(first, cursor).taken_over);
  EXPECT_EQ(cursor.tokens, 0u);
  journal.OnToken(0, kTokens[1]);
  EXPECT_EQ(second_woken, 1);
  EXPECT_EQ(first_woken, 2);
  EXPECT_EQ(journal.Read(second, cursor).token_ids.size(), 2u);
  journal.Detach(first);  // a stale reader's detach changes nothing
  EXPECT_EQ(journal.ExpiresAt(absl::Seconds(1)), std::nullopt);
}

// An Engine that records cancels.
class CancelRecorder final : public Engine {
 public:
  absl::Status Submit(GenerationRequest, std::shared_ptr<GenerationObserver>) override {
    return absl::OkStatus();
  }
  absl::Status Cancel(const std::string& id) override {
    cancelled.push_back(id);
    return absl::OkStatus();
  }
  bool ready() const override { return true; }
  std::vector<std::string> cancelled;
};

struct StoreFixture {
  StoreFixture() {
    StreamJournalStoreOptions options;
    options.window = absl::Seconds(10);
    options.clock = [this] { return now; };
    options.sweep_interval = absl::ZeroDuration();
    store = std::make_unique<StreamJournalStore>(engine, options);
  }
  absl::Time now = absl::FromUnixSeconds(1000);
  CancelRecorder engine;
  std::unique_ptr<StreamJournalStore> store;
};

TEST(StreamJournalStoreTest, KeepsAJournalAWindowAfterItsClientLeftThenCancelsItsRequest) {
  StoreFixture f;
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<StreamJournal> journal,
                       f.store->Create(Llama31Tokenizer(), Info("a", 100)));
  const uint64_t reader = journal->Attach(nullptr);
  f.now += absl::Seconds(100);
  EXPECT_EQ(f.store->Sweep(f.now), 0);  // attached: kept however long
  journal->OnToken(0, kTokens[0]);
  journal->Detach(reader);  // the client went away at t = 100 s
  f.now += absl::Seconds(9);
  EXPECT_EQ(f.store->Sweep(f.now), 0);
  EXPECT_OK(f.store->Find("a"));
  f.now += absl::Seconds(1);
  EXPECT_EQ(f.store->Sweep(f.now), 1);
  EXPECT_THAT(f.engine.cancelled, ElementsAre("a"));  // still running: cancelled
  EXPECT_THAT(f.store->Find("a"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("request_id a")));
  EXPECT_EQ(f.store->size(), 0u);
  EXPECT_EQ(f.store->MemoryBytes(), 0u);
}

TEST(StreamJournalStoreTest, AnEndAfterTheDetachMovesTheExpiryAndEndedRequestsAreNotCancelled) {
  StoreFixture f;
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<StreamJournal> journal,
                       f.store->Create(Llama31Tokenizer(), Info("b", 100)));
  journal->Detach(journal->Attach(nullptr));  // left at t0
  f.now += absl::Seconds(5);
  Play(*journal, kTokens, FinishReason::kLength);  // ended at t0 + 5 s
  f.now += absl::Seconds(9);
  EXPECT_EQ(f.store->Sweep(f.now), 0);  // t0 + 14 s: within the window of its end
  // A client resuming now reads it to the end; then the window starts again.
  const uint64_t reader = journal->Attach(nullptr);
  JournalCursor cursor;
  EXPECT_TRUE(journal->Read(reader, cursor).done.has_value());
  journal->Detach(reader);
  f.now += absl::Seconds(9);
  EXPECT_EQ(f.store->Sweep(f.now), 0);
  f.now += absl::Seconds(1);
  EXPECT_EQ(f.store->Sweep(f.now), 1);
  EXPECT_TRUE(f.engine.cancelled.empty());
  EXPECT_EQ(f.store->size(), 0u);
}

TEST(StreamJournalStoreTest, IdsAreUniqueWhileKept) {
  StoreFixture f;
  ASSERT_OK(f.store->Create(Llama31Tokenizer(), Info("c", 100)));
  EXPECT_THAT(f.store->Create(Llama31Tokenizer(), Info("c", 100)),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("request_id c")));
  f.store->Remove("c");
  EXPECT_OK(f.store->Create(Llama31Tokenizer(), Info("c", 100)));
  EXPECT_THAT(f.store->Find("nope"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
}

TEST(StreamJournalStoreTest, MemoryPerTokenFigure) {
  StoreFixture f;
  constexpr int kCount = 4096;
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<StreamJournal> journal,
                       f.store->Create(Llama31Tokenizer(), Info("m", kCount)));
  const size_t empty = f.store->MemoryBytes();
  for (int k = 0; k < kCount; ++k) journal->OnToken(0, 1234 + k % 500);  // ordinary English-ish pieces
  const size_t full = f.store->MemoryBytes();
  std::cout << "journal: " << empty << " bytes empty, " << static_cast<double>(full - empty) / kCount
            << " bytes per token (without logprobs) over " << kCount << " tokens\n";
  EXPECT_GT(full, empty);
}

}  // namespace
}  // namespace tessera
