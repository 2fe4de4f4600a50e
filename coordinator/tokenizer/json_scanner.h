// A small pull-style JSON reader for the large parts of tokenizer.json (the vocabulary and the merges), which
// nlohmann's DOM parser reads too slowly for the 300 ms load target. Everything else in the file is skipped
// as a raw span and handed to nlohmann.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace tessera::tokenizer_internal {

// Reads JSON tokens from a text it does not own. Errors are INVALID_ARGUMENT naming the byte offset; callers
// prefix the file name. Not thread-safe (one scanner per parse).
class JsonScanner {
 public:
  explicit JsonScanner(std::string_view text) : text_(text) {}

  // Skips whitespace, then consumes `c` if it comes next; returns whether it did.
  bool Consume(char c);
  // Skips whitespace, then requires `c`.
  [[nodiscard]] absl::Status Expect(char c);
  // Skips whitespace and returns the next character (0 at the end of the text), without consuming it.
  char Peek();
  // Reads a string, unescaping it into out (UTF-8).
  [[nodiscard]] absl::Status ReadString(std::string& out);
  // Reads an integer that fits in int64.
  [[nodiscard]] absl::Status ReadInt(int64_t& out);
  // Skips one value of any type, checking its structure; span receives its raw text.
  [[nodiscard]] absl::Status SkipValue(std::string_view& span);
  // Requires that only whitespace remains.
  [[nodiscard]] absl::Status ExpectEnd();
  size_t offset() const { return pos_; }
  absl::Status Error(std::string_view what) const;

 private:
  void SkipWhitespace();
  [[nodiscard]] absl::Status SkipValueAt(int depth);
  [[nodiscard]] absl::Status ReadHex4(uint32_t& value);

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace tessera::tokenizer_internal
