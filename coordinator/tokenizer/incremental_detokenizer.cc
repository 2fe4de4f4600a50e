// IncrementalDetokenizer: UTF-8 completion and stop-string hold-back over the tokenizer's decoded bytes.
#include "coordinator/tokenizer/incremental_detokenizer.h"

#include <algorithm>

#include "coordinator/tokenizer/utf8.h"
#include "core/status_macros.h"

namespace tessera {

void IncrementalDetokenizer::SetStopStrings(std::vector<std::string> stop_strings, int min_tokens) {
  min_tokens_ = min_tokens;
  stop_strings_.clear();
  for (std::string& s : stop_strings) {
    if (!s.empty()) stop_strings_.push_back(std::move(s));
  }
}

absl::StatusOr<std::string> IncrementalDetokenizer::Add(int32_t id) {
  ASSIGN_OR_RETURN(std::string_view bytes, tokenizer_.DecodedBytes(id, skip_special_tokens_));
  if (stopped_ || flushed_) return std::string();
  ++num_added_;
  pending_bytes_.append(bytes);
  const size_t tail = tokenizer_internal::IncompleteUtf8Suffix(pending_bytes_);
  tokenizer_internal::AppendUtf8Lossy(
      std::string_view(pending_bytes_).substr(0, pending_bytes_.size() - tail), held_);
  pending_bytes_.erase(0, pending_bytes_.size() - tail);
  return Release(false);
}

std::string IncrementalDetokenizer::Flush() {
  if (stopped_ || flushed_) return std::string();
  tokenizer_internal::AppendUtf8Lossy(pending_bytes_, held_);
  pending_bytes_.clear();
  std::string out = Release(true);
  flushed_ = true;
  return out;
}

std::string IncrementalDetokenizer::Release(bool at_end) {
  // Earliest complete stop string in held_ (none can start in emitted text: its start would have been held).
  // Within the first min_tokens tokens, stop strings do not count yet.
  const bool checking = num_added_ > min_tokens_;
  size_t stop_pos = std::string::npos;
  for (size_t i = 0; checking && i < stop_strings_.size(); ++i) {
    const size_t pos = held_.find(stop_strings_[i]);
    if (pos < stop_pos) {
      stop_pos = pos;
      stop_index_ = static_cast<int>(i);
    }
  }
  std::string out;
  if (stop_pos != std::string::npos) {
    out = held_.substr(0, stop_pos);
    stopped_ = true;
    held_.clear();
    pending_bytes_.clear();
  } else {
    // Hold back the longest suffix of held_ that is a proper prefix of a stop string.
    size_t keep = 0;
    if (!at_end && checking) {
      for (const std::string& stop : stop_strings_) {
        for (size_t len = std::min(stop.size() - 1, held_.size()); len > keep; --len) {
          if (held_.compare(held_.size() - len, len, stop, 0, len) == 0) {
            keep = len;
            break;
          }
        }
      }
    }
    out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
  }
  emitted_ += out;
  return out;
}

}  // namespace tessera
