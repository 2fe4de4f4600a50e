// Streaming detokenization: token ids go in one at a time, text comes out as soon as it is final: complete
// UTF-8 that no later id can change and that cannot be the start of a stop string.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace tessera {

// Contract, for ids a_1..a_n added in order (none rejected) and D(k) = tokenizer.Decode(a_1..a_k,
// skip_special_tokens):
//  - Without stop strings: after k Adds, emitted() (the concatenation of everything Add returned) is a prefix
//  of
//    D(k), and emitted() + Flush() == D(k) exactly (Flush ends the stream). Text is held back only while it
//    ends in an incomplete UTF-8 sequence (at most 3 bytes) that a later byte could complete.
//  - With stop strings: additionally, text that could still be the start of a stop string is held back. As
//  soon
//    as some stop string occurs in the decoded text, stopped() becomes true, emitted() ends right before the
//    earliest occurrence (the first listed stop string wins a tie), and every later Add or Flush returns "".
//    Without a stop, emitted() + Flush() == D(n) as above.
// Not thread-safe: one per stream. The tokenizer must outlive it.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // Sets the stop strings (empty ones are ignored) and how many tokens are added before they count: as vLLM's
  // min_tokens, the text of the first `min_tokens` tokens is neither searched nor held back, and a stop string
  // matches only in the text that follows (one spanning that boundary does not). Call before the first Add.
  void SetStopStrings(std::vector<std::string> stop_strings, int min_tokens = 0);

  // Adds one id and returns the text that became final (possibly ""). Errors: INVALID_ARGUMENT naming an id
  // outside the vocabulary; the state is then unchanged.
  [[nodiscard]] absl::StatusOr<std::string> Add(int32_t id);

  // Ends the stream: returns everything still held back (an incomplete UTF-8 tail becomes U+FFFD as in
  // Decode), or the text before a stop string that the tail completes. Further Adds return "".
  std::string Flush();

  bool stopped() const { return stopped_; }
  // Index in the stop strings of the one that stopped the stream, or -1.
  int stop_string_index() const { return stop_index_; }
  // Everything returned so far by Add and Flush.
  const std::string& emitted() const { return emitted_; }

 private:
  // Moves final text from held_ to the result, honouring stop strings. `at_end`: nothing more will arrive.
  std::string Release(bool at_end);

  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<std::string> stop_strings_;
  std::string pending_bytes_;  // undecoded bytes: an incomplete UTF-8 sequence
  std::string held_;           // decoded text not yet emitted
  std::string emitted_;
  bool stopped_ = false;
  bool flushed_ = false;
  int stop_index_ = -1;
  int min_tokens_ = 0;
  int num_added_ = 0;  // tokens added so far
};

}  // namespace tessera
