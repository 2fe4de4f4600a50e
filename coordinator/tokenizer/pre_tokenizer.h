// The pre-tokenizer of a byte-level BPE tokenizer: Split steps (a PCRE2 regex translated from the file's
// Oniguruma pattern, or a literal) and ByteLevel steps (optional prefix space, optional GPT-2 regex split),
// as Hugging Face `tokenizers` applies them. Words come out as raw bytes: the byte-to-character mapping of
// ByteLevel is folded into the vocabulary at load time, so it costs nothing here.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/tokenizer/tokenizer_json.h"

namespace tessera::tokenizer_internal {

class Regex;

// Per-call working memory for PreTokenizer::Run (PCRE2 match data, a JIT stack when one is needed, storage
// for pieces that gained a prefix space). One per thread; not shared.
class PreTokenizerScratch {
 public:
  PreTokenizerScratch();
  ~PreTokenizerScratch();
  PreTokenizerScratch(const PreTokenizerScratch&) = delete;
  PreTokenizerScratch& operator=(const PreTokenizerScratch&) = delete;

 private:
  friend class Regex;
  friend class PreTokenizer;
  void* match_data_ = nullptr;     // pcre2_match_data_8*
  void* match_context_ = nullptr;  // pcre2_match_context_8*
  void* jit_stack_ = nullptr;      // pcre2_jit_stack_8*
  std::deque<std::string> arena_;  // pieces with a prefix space added; they outlive the sink calls
};

// Rewrites an Oniguruma pattern (as tokenizers uses) for PCRE2 with UTF and UCP: identical except that
// PCRE2's \s also matches U+180E, which Oniguruma's (Unicode White_Space) does not; \s and \S, also inside
// classes, are rewritten to exclude / include it.
std::string TranslateOnigurumaPattern(std::string_view pattern);

class PreTokenizer {
 public:
  // Compiles the steps' patterns. Errors: INVALID_ARGUMENT naming source_name, the pattern, PCRE2's message
  // and the offset in the pattern.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(
      const std::vector<PreTokenizerStep>& steps, std::string_view source_name);
  ~PreTokenizer();

  // Splits `text` (valid UTF-8) into words and calls sink for each non-empty one, in order. The views stay
  // valid until scratch is destroyed or reused. Errors: INTERNAL when PCRE2 gives up on a match (resource
  // limits). Thread-safe (const) with one scratch per thread.
  [[nodiscard]] absl::Status Run(std::string_view text, PreTokenizerScratch& scratch,
                                 absl::FunctionRef<void(std::string_view)> sink) const;

 private:
  struct Step {
    PreTokenizerStep spec;
    std::unique_ptr<Regex> regex;  // Split's pattern, or the GPT-2 regex for ByteLevel with use_regex
  };
  PreTokenizer() = default;
  absl::Status RunStep(size_t index, std::string_view piece, PreTokenizerScratch& scratch,
                       absl::FunctionRef<void(std::string_view)> sink) const;

  std::vector<Step> steps_;
};

}  // namespace tessera::tokenizer_internal
