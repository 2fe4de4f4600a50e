// StreamJournal: what a resumable stream has produced, so that a client whose connection dropped can reattach
// and receive the rest without gaps or duplicates. It is the request's GenerationObserver: on the engine
// thread it turns tokens into text (CompletionText) and records, per token, the id, the text that became
// final with it and its logprob; a reader (the gRPC or HTTP stream of the client attached now) reads on from
// a cursor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/completion_request.h"
#include "coordinator/completion_text.h"
#include "coordinator/engine.h"

namespace tessera {

// The API a resumable stream was started on: it decides the shape of the resumed stream (a completion's
// TokenDelta / "text_completion" chunks or a chat's ChatDelta / "chat.completion.chunk" chunks).
enum class StreamKind { kCompletion, kChat };

// What a resumed stream needs to say again besides the generated tokens.
struct StreamInfo {
  StreamKind kind = StreamKind::kCompletion;
  std::string model;            // the served model's id
  int64_t created = 0;          // HTTP: the chunks' "created" (unix seconds)
  bool include_usage = false;   // HTTP: stream_options.include_usage (the usage chunk before [DONE])
  PreparedCompletion prepared;  // n == 1, no echo; request.id is the stream's id
};

// Where a reader is in the journal: tokens [0, tokens) and, when set, the choice's end and the request's end
// have been read.
struct JournalCursor {
  size_t tokens = 0;
  bool end_read = false;
  bool done_read = false;
};

// What a Read found past its cursor.
struct JournalRead {
  std::vector<int32_t> token_ids;
  std::vector<std::string> texts;      // per token: the text that became final with it (often "")
  std::vector<TokenLogprob> logprobs;  // with logprobs: one per token
  // With `end`: text released at the choice's end that no token carried (held back until then; usually empty,
  // since the journal gives that text to the last token when it knows the token is the last).
  std::string tail;
  std::optional<FinishReason> end;   // the choice ended (set once per cursor)
  std::optional<absl::Status> done;  // the request is over (set once per cursor; nothing follows)
  int completion_tokens = 0;         // tokens generated so far
  int cached_tokens = 0;             // prompt tokens served from the prefix cache
  bool taken_over = false;           // another reader attached: this one must stop (nothing else is set)
  bool empty() const { return token_ids.empty() && !end && !done && !taken_over; }
};

// Thread-safe. One choice (resumable requests have n == 1). At most one reader at a time: Attach hands the
// journal to a new reader, and the previous one's next Read says taken_over.
class StreamJournal final : public GenerationObserver {
 public:
  // `clock` stamps the end of the request and detaches (the store's expiry).
  StreamJournal(std::shared_ptr<const Tokenizer> tokenizer, StreamInfo info,
                std::function<absl::Time()> clock = absl::Now);

  const StreamInfo& info() const { return info_; }
  const std::string& id() const { return info_.prepared.request.id; }

  // GenerationObserver, on the engine thread. Calls for a choice other than 0, or after its end, are ignored
  // (OnToken then answers true).
  bool OnToken(int index, int32_t token) override;
  void OnLogprobs(int index, const TokenLogprob& logprob) override;
  void OnCachedTokens(int cached_tokens) override;
  void OnChoiceEnd(int index, FinishReason reason) override;
  void OnDone(const absl::Status& status) override;

  // Makes the caller the reader; returns its reader id. `wake` (may be empty) is called, never under the
  // journal's lock, whenever something new is recorded or another reader takes over; it must return quickly.
  // The previous reader's wake is called once more, so that it sees taken_over.
  uint64_t Attach(std::function<void()> wake);
  // The reader leaves (its client went away, or it read the end): the journal is detached from now on, unless
  // `reader` is no longer the reader (then nothing changes).
  void Detach(uint64_t reader);

  // Waits up to `wait` for something past `cursor` (or a take-over), then returns it and moves the cursor.
  // With a `limit`, reads tokens below it and nothing else (no end, no done); without, end and done come once
  // the cursor is past every token.
  JournalRead Read(uint64_t reader, JournalCursor& cursor, absl::Duration wait = absl::ZeroDuration(),
                   size_t limit = SIZE_MAX);

  // Tokens recorded so far.
  size_t tokens() const;
  bool done() const;
  // When the journal may be dropped: `window` after its detach or the request's end, whichever is later;
  // nullopt while a reader is attached.
  std::optional<absl::Time> ExpiresAt(absl::Duration window) const;
  // Bytes this journal holds (its vectors' capacities, the text and the prompt), for figures and tests.
  size_t MemoryBytes() const;

 private:
  void Wake();  // calls the reader's wake, outside the lock

  const std::shared_ptr<const Tokenizer> tokenizer_;  // kept alive for completion_
  const StreamInfo info_;
  const std::function<absl::Time()> clock_;
  // Engine thread only.
  CompletionText completion_;
  TokenLogprob next_logprob_;
  bool has_next_logprob_ = false;
  bool ended_on_engine_ = false;
  int tokens_on_engine_ = 0;

  mutable absl::Mutex mu_;  // taken after StreamJournalStore's when both are held (its Sweep)
  std::vector<int32_t> token_ids_ ABSL_GUARDED_BY(mu_);
  std::string text_ ABSL_GUARDED_BY(mu_);                // every token's text, then the tail
  std::vector<uint32_t> text_end_ ABSL_GUARDED_BY(mu_);  // per token: where its text ends in text_
  std::vector<TokenLogprob> logprobs_ ABSL_GUARDED_BY(mu_);
  std::optional<FinishReason> end_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> done_ ABSL_GUARDED_BY(mu_);
  absl::Time done_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int cached_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reader_ ABSL_GUARDED_BY(mu_) = 0;  // the attached reader's id (0: none ever)
  bool attached_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time detach_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::shared_ptr<const std::function<void()>> wake_ ABSL_GUARDED_BY(mu_);  // null: none
};

}  // namespace tessera
