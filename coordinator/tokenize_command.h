// `tessera tokenize` and `tessera detokenize`: the tokenizer of a model directory (tokenizer.json, optional
// tokenizer_config.json; no weights needed) on text from the command line or files, JSON lines out.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

struct TokenizeOptions {
  std::string model_dir;
  // Exactly one of the three inputs is set (non-empty); an empty --text counts as not set.
  std::string text;         // one text: prints {"ids": [...]}
  std::string input_jsonl;  // a file of {"text": ...} lines: prints one {"ids": [...]} per line, in order
  std::string file;         // a file encoded as one text: prints {"count": N}
  bool add_special_tokens = false;
  bool stats = false;  // one JSON line on `err`: load_s, encode_s, mb_per_s (plus bytes, tokens)
};

// Runs the tokenize command. Errors: INVALID_ARGUMENT for not exactly one input, a --input-jsonl line that is
// not a JSON object with a string "text" (naming the file and the line number; blank lines are skipped) or
// text that is not valid UTF-8 (naming the offset); NOT_FOUND for a file that cannot be read; the tokenizer's
// loading errors.
[[nodiscard]] absl::Status RunTokenize(const TokenizeOptions& options, std::ostream& out, std::ostream& err);

struct DetokenizeOptions {
  std::string model_dir;
  std::vector<int32_t> ids;
  bool skip_special_tokens = false;
};

// Runs the detokenize command: prints {"text": ...}. Errors: INVALID_ARGUMENT naming an id outside the
// vocabulary; the tokenizer's loading errors.
[[nodiscard]] absl::Status RunDetokenize(const DetokenizeOptions& options, std::ostream& out);

}  // namespace tessera
