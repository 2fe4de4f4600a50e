// CompletionText: IncrementalDetokenizer plus the stop decisions of one choice.
#include "coordinator/completion_text.h"

namespace tessera {

CompletionText::CompletionText(const Tokenizer* tokenizer, std::vector<std::string> stop_strings,
                               const std::vector<int32_t>& stop_token_ids, int min_tokens)
    : stop_token_ids_(stop_token_ids.begin(), stop_token_ids.end()) {
  if (tokenizer != nullptr) {
    detokenizer_.emplace(*tokenizer, /*skip_special_tokens=*/true);
    detokenizer_->SetStopStrings(std::move(stop_strings), min_tokens);
  }
}

CompletionText::Delta CompletionText::Add(int32_t token) {
  Delta delta;
  if (stopped_ || finished_) {
    delta.stop = stopped_;
    return delta;
  }
  if (stop_token_ids_.contains(token)) {
    // The stop token's own text is not returned; what was held back before it is, by Finish.
    stopped_ = true;
    delta.stop = true;
    return delta;
  }
  if (detokenizer_) {
    // An id outside the vocabulary is rejected with the state unchanged: it adds no text.
    absl::StatusOr<std::string> text = detokenizer_->Add(token);
    if (text.ok()) delta.text = *std::move(text);
    if (detokenizer_->stopped()) stopped_ = true;
  }
  delta.stop = stopped_;
  text_ += delta.text;
  return delta;
}

std::string CompletionText::Finish() {
  if (finished_) return std::string();
  finished_ = true;
  if (!detokenizer_) return std::string();
  std::string rest = detokenizer_->Flush();
  text_ += rest;
  return rest;
}

}  // namespace tessera
