// CompletionObserver: engine-thread events into per-choice state; the RPC thread takes what is new.
#include "coordinator/completion_observer.h"

namespace tessera {

CompletionObserver::CompletionObserver(std::shared_ptr<const Tokenizer> tokenizer, int n, int min_tokens,
                                       const std::vector<std::string>& stop_strings,
                                       const std::vector<int32_t>& stop_token_ids)
    : tokenizer_(std::move(tokenizer)) {
  choices_.reserve(n);
  for (int i = 0; i < n; ++i) {
    choices_.emplace_back(CompletionText(tokenizer_.get(), stop_strings, stop_token_ids, min_tokens));
  }
}

bool CompletionObserver::OnToken(int index, int32_t token) {
  if (index < 0 || index >= static_cast<int>(choices_.size())) return true;
  Choice& choice = choices_[index];
  // Only this thread uses `completion` and `next_logprob`. A token after a stop (one already in flight) is
  // not part of the choice, nor is its logprob.
  const bool has_logprob = choice.has_next_logprob;
  TokenLogprob logprob = std::move(choice.next_logprob);
  choice.has_next_logprob = false;
  if (choice.completion.stopped()) return true;
  {
    absl::MutexLock lock(&mu_);
    if (choice.ended) return true;
  }
  CompletionText::Delta delta = choice.completion.Add(token);  // outside the lock
  absl::MutexLock lock(&mu_);
  choice.token_ids.push_back(token);
  if (has_logprob) choice.logprobs.push_back(std::move(logprob));
  choice.text += delta.text;
  news_ = true;
  return delta.stop;
}

void CompletionObserver::OnLogprobs(int index, const TokenLogprob& logprob) {
  if (index < 0 || index >= static_cast<int>(choices_.size())) return;
  choices_[index].next_logprob = logprob;
  choices_[index].has_next_logprob = true;
}

void CompletionObserver::OnPromptLogprobs(const std::vector<TokenLogprob>& entries) {
  absl::MutexLock lock(&mu_);
  if (prompt_logprobs_ != nullptr) return;
  prompt_logprobs_ = std::make_shared<const std::vector<TokenLogprob>>(entries);
  news_ = true;
}

void CompletionObserver::OnCachedTokens(int cached_tokens) {
  absl::MutexLock lock(&mu_);
  cached_tokens_ = cached_tokens;
}

void CompletionObserver::OnChoiceEnd(int index, FinishReason reason) {
  if (index < 0 || index >= static_cast<int>(choices_.size())) return;
  Choice& choice = choices_[index];
  {
    absl::MutexLock lock(&mu_);
    if (choice.ended) return;
  }
  std::string rest = choice.completion.Finish();
  absl::MutexLock lock(&mu_);
  choice.text += rest;
  choice.ended = true;
  choice.finish_reason = reason;
  news_ = true;
}

void CompletionObserver::OnDone(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (done_.has_value()) return;
  done_ = status;
  news_ = true;
}

CompletionObserver::Events CompletionObserver::Take(absl::Duration timeout) {
  Events events;
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&news_), timeout);
  news_ = false;
  if (prompt_logprobs_ != nullptr && !prompt_logprobs_taken_) {
    events.prompt_logprobs = prompt_logprobs_;
    prompt_logprobs_taken_ = true;
  }
  for (size_t i = 0; i < choices_.size(); ++i) {
    Choice& choice = choices_[i];
    const bool new_end = choice.ended && !choice.end_taken;
    if (choice.tokens_taken == choice.token_ids.size() && choice.logprobs_taken == choice.logprobs.size() &&
        choice.text_taken == choice.text.size() && !new_end) {
      continue;
    }
    ChoiceEvents& out = events.choices.emplace_back();
    out.index = static_cast<int>(i);
    out.token_ids.assign(choice.token_ids.begin() + choice.tokens_taken, choice.token_ids.end());
    out.logprobs.assign(choice.logprobs.begin() + choice.logprobs_taken, choice.logprobs.end());
    out.text = choice.text.substr(choice.text_taken);
    if (new_end) out.end = choice.finish_reason;
    out.completion_tokens = static_cast<int>(choice.token_ids.size());
    choice.tokens_taken = choice.token_ids.size();
    choice.logprobs_taken = choice.logprobs.size();
    choice.text_taken = choice.text.size();
    choice.end_taken = choice.ended;
  }
  events.done = done_;
  return events;
}

std::optional<absl::Status> CompletionObserver::WaitDone(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_.has_value(); };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return done_;
}

std::vector<CompletionObserver::ChoiceResult> CompletionObserver::Results() const {
  absl::MutexLock lock(&mu_);
  std::vector<ChoiceResult> results(choices_.size());
  for (size_t i = 0; i < choices_.size(); ++i) {
    results[i].token_ids = choices_[i].token_ids;
    results[i].logprobs = choices_[i].logprobs;
    results[i].text = choices_[i].text;
    results[i].finish_reason = choices_[i].finish_reason;
  }
  return results;
}

int CompletionObserver::CompletionTokens() const {
  absl::MutexLock lock(&mu_);
  int total = 0;
  for (const Choice& choice : choices_) total += static_cast<int>(choice.token_ids.size());
  return total;
}

std::vector<TokenLogprob> CompletionObserver::PromptLogprobs() const {
  absl::MutexLock lock(&mu_);
  return prompt_logprobs_ != nullptr ? *prompt_logprobs_ : std::vector<TokenLogprob>();
}

int CompletionObserver::CachedTokens() const {
  absl::MutexLock lock(&mu_);
  return cached_tokens_;
}

}  // namespace tessera
