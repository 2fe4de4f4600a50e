// Python str semantics on UTF-8 text for the chat-template interpreter: code points, str.isspace, strip /
// split / case mapping as Python does them, and Python's repr() of floats and strings.
// Case mapping covers ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (a subset of Unicode).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::jinja {

// Decodes UTF-8 into code points. Invalid bytes decode as U+FFFD.
[[nodiscard]] std::vector<char32_t> DecodeUtf8(std::string_view text);
// Appends the UTF-8 encoding of `c` to `out`.
void AppendUtf8(char32_t c, std::string& out);
[[nodiscard]] std::string EncodeUtf8(const std::vector<char32_t>& chars, size_t begin, size_t end);
// True when `text` is well-formed UTF-8.
[[nodiscard]] bool IsValidUtf8(std::string_view text);
// Number of code points in UTF-8 `text`.
[[nodiscard]] size_t CodePointCount(std::string_view text);

// str.isspace() of one code point.
[[nodiscard]] bool IsPySpace(char32_t c);
// Length in bytes of the run of Python whitespace starting at text[pos].
[[nodiscard]] size_t SpanPySpace(std::string_view text, size_t pos);
// str.strip / lstrip / rstrip. `chars` null: whitespace; else the code points in *chars.
[[nodiscard]] std::string PyStrip(std::string_view text, bool left, bool right, const std::string* chars);
// str.split(sep, maxsplit) and str.rsplit; `sep` null splits on whitespace runs.
[[nodiscard]] std::vector<std::string> PySplit(std::string_view text, const std::string* sep,
                                               int64_t maxsplit, bool from_right);
// str.replace(old, new, count); count < 0 replaces all.
[[nodiscard]] std::string PyReplace(std::string_view text, std::string_view old_text,
                                    std::string_view new_text, int64_t count);
// str.splitlines() (no keepends).
[[nodiscard]] std::vector<std::string> PySplitLines(std::string_view text);

[[nodiscard]] std::string PyUpper(std::string_view text);
[[nodiscard]] std::string PyLower(std::string_view text);
[[nodiscard]] std::string PyTitle(std::string_view text);       // str.title()
[[nodiscard]] std::string PyCapitalize(std::string_view text);  // str.capitalize()
[[nodiscard]] std::string JinjaTitle(std::string_view text);    // jinja2's `title` filter
[[nodiscard]] bool PyIsLower(std::string_view text);            // str.islower()
[[nodiscard]] bool PyIsUpper(std::string_view text);            // str.isupper()

// repr(float): shortest round-trip digits, "1.0", "1e+16", "1.5e-05", "inf", "nan".
[[nodiscard]] std::string PyFloatRepr(double value);
// repr(str): quotes and escapes as Python does.
[[nodiscard]] std::string PyStrRepr(std::string_view text);

}  // namespace tessera::jinja
