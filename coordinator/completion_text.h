// CompletionText: the text of one generated choice, built token by token as the engine samples them. It holds
// text back at an incomplete UTF-8 character and while the tail could be the start of a stop string, and it
// decides when the choice must end (a stop string appeared, or a stop token id was sampled), as vLLM does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "coordinator/tokenizer/incremental_detokenizer.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace tessera {

// Semantics (vLLM's, skip_special_tokens on):
//  - A stop string ends the choice as soon as it appears in the decoded text; the final text is everything
//    before its earliest occurrence (the stop string and anything after it are not returned).
//  - A stop token id (the eos ids unless ignore_eos, and the request's stop_token_ids) ends the choice; its
//  own
//    text is not returned, the text held back before it is (by Finish).
//  - Otherwise the concatenation of every Add's text and Finish's equals tokenizer.Decode(tokens, true).
//  - An id outside the tokenizer's vocabulary adds no text (as Hugging Face's decode drops it).
// Not thread-safe: one per choice. The tokenizer must outlive it.
class CompletionText {
 public:
  // `tokenizer` may be null (the model has no tokenizer.json): then there is no text, and only stop token ids
  // end the choice (stop strings cannot match). Empty stop strings are ignored.
  // `min_tokens`: stop strings do not end the choice within its first min_tokens tokens (vLLM's min_tokens;
  // the engine keeps stop token ids from being sampled that early).
  CompletionText(const Tokenizer* tokenizer, std::vector<std::string> stop_strings,
                 const std::vector<int32_t>& stop_token_ids, int min_tokens = 0);

  struct Delta {
    std::string text;   // text that became final with this token (often "")
    bool stop = false;  // the choice ends with this token (it still counts as generated)
  };

  // Adds the choice's next token. After a stop, every later call returns {"", true}.
  Delta Add(int32_t token);

  // Ends the choice (after a stop, at max_tokens or the context length): returns the text still held back.
  // Later calls return "".
  std::string Finish();

  bool stopped() const { return stopped_; }
  // Everything Add and Finish have returned.
  const std::string& text() const { return text_; }

 private:
  std::optional<IncrementalDetokenizer> detokenizer_;  // empty without a tokenizer
  std::unordered_set<int32_t> stop_token_ids_;
  std::string text_;
  bool stopped_ = false;
  bool finished_ = false;
};

}  // namespace tessera
