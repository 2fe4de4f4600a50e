// Splits added tokens (e.g. Llama 3's 256 "<|...|>" special tokens) out of the text before pre-tokenization,
// with Hugging Face's AddedVocabulary semantics: leftmost-longest matching, non-normalized tokens first, then
// normalized ones in the remaining text, and the single_word / lstrip / rstrip flags.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "coordinator/tokenizer/tokenizer_json.h"

namespace tessera::tokenizer_internal {

class AddedTokenSplitter {
 public:
  // Builds the matchers. Errors: INTERNAL if the word-character class does not compile (never expected).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<AddedTokenSplitter>> Create(
      const std::vector<AddedTokenSpec>& tokens);
  ~AddedTokenSplitter();

  // Walks `text` (valid UTF-8) in order: on_text for each non-empty stretch of ordinary text, on_token for
  // each added token found. Thread-safe (const).
  void Split(std::string_view text, absl::FunctionRef<void(std::string_view)> on_text,
             absl::FunctionRef<void(int32_t)> on_token) const;

 private:
  // A byte trie over the token contents of one pass, matched leftmost-longest (as aho-corasick's
  // LeftmostLongest).
  struct Matcher {
    absl::flat_hash_map<uint64_t, int32_t> edges;  // (node << 8 | byte) -> child node
    std::vector<int32_t> terminal;                 // node -> index into tokens_, or -1
    bool can_start[256] = {};
    bool empty() const { return terminal.size() <= 1; }
    void Add(std::string_view content, int32_t token_index);
  };
  struct Match {
    int32_t token = -1;  // index into tokens_, -1 for ordinary text
    size_t begin = 0, end = 0;
  };
  AddedTokenSplitter() = default;
  // HF's find_matches: the splits of `text` against one matcher, with the tokens' flags applied.
  void FindSplits(std::string_view text, const Matcher& matcher, std::vector<Match>& splits) const;
  bool StartsWithWord(std::string_view s) const;
  bool EndsWithWord(std::string_view s) const;

  std::vector<AddedTokenSpec> tokens_;
  Matcher non_normalized_, normalized_;
  void* word_char_ = nullptr;  // pcre2_code_8*: Rust regex's Unicode \w, only when a token is single_word
};

}  // namespace tessera::tokenizer_internal
