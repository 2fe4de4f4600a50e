// Reads a Hugging Face tokenizer.json into a plain description (TokenizerSpec) of the parts Tessera supports:
// a byte-level BPE model, added tokens, the Split / Digits / ByteLevel pre-tokenizers, the ByteLevel decoder
// and the ByteLevel / TemplateProcessing post-processors. Anything else is refused here, at load time, by
// name.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera::tokenizer_internal {

struct AddedTokenSpec {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// How a Split pre-tokenizer treats the pieces its pattern matches (HF's SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel };
  Kind kind = Kind::kSplit;
  // kSplit (also HF's Digits pre-tokenizer, read as a Split on \p{N}): the pattern as written in the file
  // (Oniguruma syntax) or a literal string.
  std::string pattern;
  bool literal = false;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // kByteLevel
  bool add_prefix_space = false;
  bool use_regex = false;
};

// One element of TemplateProcessing's "single" template: the input sequence, or special-token ids.
struct TemplatePiece {
  bool is_sequence = false;
  std::vector<int32_t> ids;
};

struct TokenizerSpec {
  std::vector<std::pair<std::string, int32_t>> vocab;       // byte-level token strings, e.g. "Ġthe"
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  bool ignore_merges = false;
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  std::vector<AddedTokenSpec> added_tokens;
  std::vector<PreTokenizerStep> pre_tokenizer;                // applied in order; empty = none
  std::optional<std::vector<TemplatePiece>> single_template;  // from TemplateProcessing, if any
};

// Parses tokenizer.json text. Errors are INVALID_ARGUMENT and name source_name and the problem: bad JSON
// (with the byte offset), no model, a model type other than BPE, no vocab, a malformed merge, or an
// unsupported normalizer / pre-tokenizer / decoder / post-processor / model option.
[[nodiscard]] absl::StatusOr<TokenizerSpec> ParseTokenizerJson(std::string_view text,
                                                               std::string_view source_name);

}  // namespace tessera::tokenizer_internal
