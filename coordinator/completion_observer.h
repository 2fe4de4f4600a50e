// CompletionObserver: one completion call's GenerationObserver. On the engine thread it turns each choice's
// tokens into text (CompletionText, which also answers OnToken's "stop now"), pairs each token with its
// logprob, and records the events under a mutex; the RPC thread waits for them and takes what is new
// (streaming) or the whole result (unary).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/completion_text.h"
#include "coordinator/engine.h"

namespace tessera {

class CompletionObserver final : public GenerationObserver {
 public:
  // `n` choices, each with its own CompletionText over `tokenizer` (may be null: no text) and the stops (stop
  // strings count only after `min_tokens` tokens). The
  // observer keeps the tokenizer alive (the engine may hold it after the call is over).
  CompletionObserver(std::shared_ptr<const Tokenizer> tokenizer, int n, int min_tokens,
                     const std::vector<std::string>& stop_strings,
                     const std::vector<int32_t>& stop_token_ids);

  // GenerationObserver, called on the engine thread. Calls for an out-of-range index or an ended or stopped
  // choice are ignored (OnToken then answers true). A logprob belongs to the next OnToken of its choice and
  // is kept only when that token is: a choice's logprobs stay aligned with its token ids.
  bool OnToken(int index, int32_t token) override;
  void OnLogprobs(int index, const TokenLogprob& logprob) override;
  void OnPromptLogprobs(const std::vector<TokenLogprob>& entries) override;
  void OnCachedTokens(int cached_tokens) override;
  void OnChoiceEnd(int index, FinishReason reason) override;
  void OnDone(const absl::Status& status) override;

  // What is new in one choice since the previous Take.
  struct ChoiceEvents {
    int index = 0;
    std::vector<int32_t> token_ids;
    std::vector<TokenLogprob> logprobs;  // with logprobs: one per token id
    std::string text;
    std::optional<FinishReason> end;  // set once, when the choice ended
    int completion_tokens = 0;        // the choice's tokens so far
  };
  struct Events {
    // OnPromptLogprobs' entries, in the first Take after they came (before any choice's first tokens).
    // (A shared pointer, not an optional vector: GCC 12 -O1 reports a false maybe-uninitialized on the latter.)
    std::shared_ptr<const std::vector<TokenLogprob>> prompt_logprobs;
    std::vector<ChoiceEvents> choices;  // choices with news, by index
    std::optional<absl::Status> done;   // OnDone's status, once it came (and in every later Take)
  };
  // Waits up to `timeout` for something new, then takes everything new (possibly nothing). For one reader.
  Events Take(absl::Duration timeout);

  // Waits up to `timeout` for OnDone; returns its status, or nullopt on timeout.
  std::optional<absl::Status> WaitDone(absl::Duration timeout);

  struct ChoiceResult {
    std::vector<int32_t> token_ids;
    std::vector<TokenLogprob> logprobs;  // with logprobs: one per token id
    std::string text;
    FinishReason finish_reason = FinishReason::kLength;
  };
  // Every choice's tokens and text so far, by index (complete once OnDone came).
  std::vector<ChoiceResult> Results() const;
  // Tokens generated over every choice so far.
  int CompletionTokens() const;
  // OnPromptLogprobs' entries (prompt tokens 1..L-1), empty until they came.
  std::vector<TokenLogprob> PromptLogprobs() const;
  // OnCachedTokens' count, 0 until it came.
  int CachedTokens() const;

 private:
  // One choice: `completion` belongs to the engine thread, the rest is guarded by mu_.
  struct Choice {
    explicit Choice(CompletionText text) : completion(std::move(text)) {}
    CompletionText completion;
    // Engine thread: OnLogprobs' entry for the next OnToken.
    TokenLogprob next_logprob;
    bool has_next_logprob = false;
    std::vector<int32_t> token_ids;
    std::vector<TokenLogprob> logprobs;
    std::string text;
    bool ended = false;
    FinishReason finish_reason = FinishReason::kLength;
    // What Take has handed out.
    size_t tokens_taken = 0;
    size_t logprobs_taken = 0;
    size_t text_taken = 0;
    bool end_taken = false;
  };

  const std::shared_ptr<const Tokenizer> tokenizer_;
  mutable absl::Mutex mu_;
  std::vector<Choice> choices_;             // fixed size
  bool news_ ABSL_GUARDED_BY(mu_) = false;  // something changed since the last Take
  std::optional<absl::Status> done_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::vector<TokenLogprob>> prompt_logprobs_ ABSL_GUARDED_BY(mu_);
  bool prompt_logprobs_taken_ ABSL_GUARDED_BY(mu_) = false;
  int cached_tokens_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tessera
