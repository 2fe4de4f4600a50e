// UTF-8 helpers for the tokenizer: validation with the offset of the first bad byte, Rust-compatible lossy
// decoding (what Hugging Face `tokenizers` uses to turn decoded bytes into text), and GPT-2's byte-level
// byte <-> character mapping.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/str_cat.h"

namespace tessera::tokenizer_internal {

// Length in bytes of the valid UTF-8 sequence starting at s[pos], or 0 when the bytes there are not a
// complete, well-formed sequence (overlong forms, surrogates and code points above U+10FFFF are ill-formed).
size_t ValidSequenceLength(std::string_view s, size_t pos);

// Byte offset of the first ill-formed UTF-8 sequence in s, or std::string_view::npos when s is valid.
size_t FindInvalidUtf8(std::string_view s);

// Appends bytes to out, replacing each maximal ill-formed subsequence with U+FFFD exactly as Rust's
// String::from_utf8_lossy does (the Unicode "substitution of maximal subparts" practice).
void AppendUtf8Lossy(std::string_view bytes, std::string& out);

// Number of trailing bytes of s (0..3) that form a proper prefix of a well-formed sequence: bytes that a
// later byte could still complete. Decoding s minus that suffix is final: later bytes never change it.
size_t IncompleteUtf8Suffix(std::string_view s);

// Decodes the code point of the valid sequence at s[pos] (ValidSequenceLength(s, pos) must be > 0).
char32_t DecodeCodePoint(std::string_view s, size_t pos, size_t length);

// Appends the UTF-8 encoding of a code point.
void AppendCodePoint(char32_t c, std::string& out);

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100 + n in byte order.
struct ByteLevelTable {
  ByteLevelTable();
  std::array<char32_t, 256> byte_to_char;
  // Inverse map over U+0000..U+01FF: the byte, or -1 when the character is not a byte-level character.
  std::array<int16_t, 512> char_to_byte;
};
const ByteLevelTable& GetByteLevelTable();

// Maps a byte-level token string (e.g. "Ġthe") to its raw bytes (" the"). Returns false (and leaves raw
// unspecified) when the string is not valid UTF-8 or has a character outside the byte-level alphabet.
bool ByteLevelToBytes(std::string_view token, std::string& raw);

}  // namespace tessera::tokenizer_internal
