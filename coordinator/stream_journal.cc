// StreamJournal: a resumable request's tokens, texts and ends, recorded on the engine thread, read from
// cursors.
#include "coordinator/stream_journal.h"

#include <algorithm>

namespace tessera {

StreamJournal::StreamJournal(std::shared_ptr<const Tokenizer> tokenizer, StreamInfo info,
                             std::function<absl::Time()> clock)
    : tokenizer_(std::move(tokenizer)),
      info_(std::move(info)),
      clock_(std::move(clock)),
      completion_(tokenizer_.get(), info_.prepared.stop_strings, info_.prepared.request.stop_token_ids,
                  info_.prepared.request.sampling.min_tokens) {
  absl::MutexLock lock(&mu_);
  detach_time_ = clock_();  // a journal nobody attaches to expires a window after its creation
}

bool StreamJournal::OnToken(int index, int32_t token) {
  if (index != 0) return true;
  const bool has_logprob = has_next_logprob_;
  has_next_logprob_ = false;
  if (ended_on_engine_ || completion_.stopped()) return true;  // a token in flight after a stop
  CompletionText::Delta delta = completion_.Add(token);
  ++tokens_on_engine_;
  std::string text = std::move(delta.text);
  // The last token (a stop, or max_tokens) carries the text held back until the end, so that a client that
  // has this token has all of the choice's text: a resumed stream then never needs to guess whether the
  // client got a token-less tail. (The engine may still end a choice at a shorter max_model_len; then the
  // tail comes with the end.)
  if (delta.stop || tokens_on_engine_ >= info_.prepared.request.max_tokens) text += completion_.Finish();
  {
    absl::MutexLock lock(&mu_);
    token_ids_.push_back(token);
    text_ += text;
    text_end_.push_back(static_cast<uint32_t>(text_.size()));
    if (has_logprob) logprobs_.push_back(std::move(next_logprob_));
  }
  Wake();
  return delta.stop;
}

void StreamJournal::OnLogprobs(int index, const TokenLogprob& logprob) {
  if (index != 0) return;
  next_logprob_ = logprob;
  has_next_logprob_ = true;
}

void StreamJournal::OnCachedTokens(int cached_tokens) {
  absl::MutexLock lock(&mu_);
  cached_tokens_ = cached_tokens;
}

void StreamJournal::OnChoiceEnd(int index, FinishReason reason) {
  if (index != 0 || ended_on_engine_) return;
  ended_on_engine_ = true;
  std::string rest = completion_.Finish();  // "" when the last token took it
  {
    absl::MutexLock lock(&mu_);
    text_ += rest;
    end_ = completion_.stopped() ? FinishReason::kStop : reason;
  }
  Wake();
}

void StreamJournal::OnDone(const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (done_.has_value()) return;
    done_ = status;
    done_time_ = clock_();
  }
  Wake();
}

void StreamJournal::Wake() {
  std::shared_ptr<const std::function<void()>> wake;
  {
    absl::MutexLock lock(&mu_);
    wake = wake_;
  }
  if (wake != nullptr) (*wake)();
}

uint64_t StreamJournal::Attach(std::function<void()> wake) {
  std::shared_ptr<const std::function<void()>> previous;
  uint64_t reader = 0;
  {
    absl::MutexLock lock(&mu_);
    previous = std::move(wake_);
    wake_ = wake ? std::make_shared<const std::function<void()>>(std::move(wake)) : nullptr;
    reader = ++reader_;
    attached_ = true;
  }
  if (previous != nullptr) (*previous)();  // the previous reader sees taken_over
  return reader;
}

void StreamJournal::Detach(uint64_t reader) {
  absl::MutexLock lock(&mu_);
  if (reader != reader_ || !attached_) return;
  attached_ = false;
  detach_time_ = clock_();
  wake_ = nullptr;
}

JournalRead StreamJournal::Read(uint64_t reader, JournalCursor& cursor, absl::Duration wait, size_t limit) {
  JournalRead out;
  absl::MutexLock lock(&mu_);
  auto news = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reader != reader_) return true;
    if (cursor.tokens < std::min(limit, token_ids_.size())) return true;
    if (cursor.tokens < token_ids_.size() || limit != SIZE_MAX) return false;  // the rest is past the limit
    return (end_.has_value() && !cursor.end_read) || (done_.has_value() && !cursor.done_read);
  };
  if (wait > absl::ZeroDuration()) mu_.AwaitWithTimeout(absl::Condition(&news), wait);
  if (reader != reader_) {
    out.taken_over = true;
    return out;
  }
  const size_t begin = cursor.tokens;
  const size_t end = std::max(begin, std::min(limit, token_ids_.size()));
  out.token_ids.assign(token_ids_.begin() + begin, token_ids_.begin() + end);
  out.texts.reserve(end - begin);
  for (size_t k = begin; k < end; ++k) {
    const size_t from = k == 0 ? 0 : text_end_[k - 1];
    out.texts.push_back(text_.substr(from, text_end_[k] - from));
  }
  if (!logprobs_.empty()) {
    const size_t lp_end = std::min(end, logprobs_.size());
    if (begin < lp_end) out.logprobs.assign(logprobs_.begin() + begin, logprobs_.begin() + lp_end);
  }
  cursor.tokens = end;
  if (end == token_ids_.size() && limit == SIZE_MAX) {
    if (end_.has_value() && !cursor.end_read) {
      out.end = end_;
      out.tail = text_.substr(token_ids_.empty() ? 0 : text_end_.back());
      cursor.end_read = true;
    }
    // The request's end after the choice's (a request without its choice's end, cancelled or failed, has
    // none).
    if (done_.has_value() && !cursor.done_read && (cursor.end_read || !end_.has_value())) {
      out.done = done_;
      cursor.done_read = true;
    }
  }
  out.completion_tokens = static_cast<int>(token_ids_.size());
  out.cached_tokens = cached_tokens_;
  return out;
}

size_t StreamJournal::tokens() const {
  absl::MutexLock lock(&mu_);
  return token_ids_.size();
}

bool StreamJournal::done() const {
  absl::MutexLock lock(&mu_);
  return done_.has_value();
}

std::optional<absl::Time> StreamJournal::ExpiresAt(absl::Duration window) const {
  absl::MutexLock lock(&mu_);
  if (attached_) return std::nullopt;
  return std::max(detach_time_, done_time_) + window;
}

size_t StreamJournal::MemoryBytes() const {
  absl::MutexLock lock(&mu_);
  size_t bytes = sizeof(*this) + token_ids_.capacity() * sizeof(int32_t) + text_.capacity() +
                 text_end_.capacity() * sizeof(uint32_t) + logprobs_.capacity() * sizeof(TokenLogprob) +
                 info_.prepared.request.prompt.capacity() * sizeof(int32_t);
  for (const TokenLogprob& lp : logprobs_) bytes += lp.top.capacity() * sizeof(lp.top[0]);
  return bytes;
}

}  // namespace tessera
