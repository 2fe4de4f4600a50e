#include "coordinator/chat_template/py_text.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace tessera::jinja {
namespace {

constexpr char32_t kReplacement = 0xFFFD;
constexpr char32_t kSharpS = 0xDF;

// Decodes one code point at text[pos]; advances pos. Invalid sequences yield U+FFFD and advance one byte.
char32_t DecodeOne(std::string_view text, size_t& pos) {
  const auto b0 = static_cast<unsigned char>(text[pos]);
  if (b0 < 0x80) {
    ++pos;
    return b0;
  }
  int len = 0;
  char32_t c = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, c = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, c = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, c = b0 & 0x07;
  } else {
    ++pos;
    return kReplacement;
  }
  if (pos + len > text.size()) {
    ++pos;
    return kReplacement;
  }
  for (int i = 1; i < len; ++i) {
    const auto b = static_cast<unsigned char>(text[pos + i]);
    if ((b & 0xC0) != 0x80) {
      ++pos;
      return kReplacement;
    }
    c = (c << 6) | (b & 0x3F);
  }
  static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < kMin[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
    ++pos;
    return kReplacement;
  }
  pos += len;
  return c;
}

// Single code point case mappings over the covered ranges; identity elsewhere.
char32_t LowerOf(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0xC0) return c;
  if (c <= 0xDE) return c == 0xD7 ? c : c + 32;
  if (c >= 0x100 && c <= 0x137) return (c % 2 == 0 && c != 0x130) ? c + 1 : c;
  if (c >= 0x139 && c <= 0x148) return c % 2 == 1 ? c + 1 : c;
  if (c >= 0x14A && c <= 0x177) return c % 2 == 0 ? c + 1 : c;
  if (c == 0x178) return 0xFF;
  if (c >= 0x179 && c <= 0x17E) return c % 2 == 1 ? c + 1 : c;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF)) return c % 2 == 0 ? c + 1 : c;
  return c;
}

char32_t UpperOf(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0xB5) return c;
  if (c == 0xB5) return 0x39C;
  if (c >= 0xE0 && c <= 0xFE) return c == 0xF7 ? c : c - 32;
  if (c == 0xFF) return 0x178;
  if (c >= 0x101 && c <= 0x137) return (c % 2 == 1 && c != 0x131) ? c - 1 : (c == 0x131 ? 'I' : c);
  if (c >= 0x13A && c <= 0x148) return c % 2 == 0 ? c - 1 : c;
  if (c >= 0x14B && c <= 0x177) return c % 2 == 1 ? c - 1 : c;
  if (c >= 0x17A && c <= 0x17E) return c % 2 == 0 ? c - 1 : c;
  if (c == 0x17F) return 'S';
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 37;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 63;
  if (c == 0x3C2) return 0x3A3;
  if (c >= 0x3B1 && c <= 0x3C9) return c - 32;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  if ((c >= 0x461 && c <= 0x481) || (c >= 0x48B && c <= 0x4BF)) return c % 2 == 1 ? c - 1 : c;
  return c;
}

bool IsLowerChar(char32_t c) { return c == kSharpS || UpperOf(c) != c; }
bool IsUpperChar(char32_t c) { return LowerOf(c) != c; }
bool IsCased(char32_t c) { return IsLowerChar(c) || IsUpperChar(c); }

void AppendUpper(char32_t c, std::string& out) {
  if (c == kSharpS) {
    out += "SS";
  } else {
    AppendUtf8(UpperOf(c), out);
  }
}

void AppendTitle(char32_t c, std::string& out) {
  if (c == kSharpS) {
    out += "Ss";
  } else {
    AppendUtf8(UpperOf(c), out);
  }
}

bool IsLineBreak(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

bool IsPrintable(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return false;
  if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB))
    return false;
  if ((c >= 0xD800 && c <= 0xF8FF) || c >= 0xF0000) return false;
  return true;
}

}  // namespace

std::vector<char32_t> DecodeUtf8(std::string_view text) {
  std::vector<char32_t> out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) out.push_back(DecodeOne(text, pos));
  return out;
}

void AppendUtf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::string EncodeUtf8(const std::vector<char32_t>& chars, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) AppendUtf8(chars[i], out);
  return out;
}

bool IsValidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t before = pos;
    if (DecodeOne(text, pos) == kReplacement &&
        !(pos - before == 3 && text.substr(before, 3) == "\xEF\xBF\xBD")) {
      return false;
    }
  }
  return true;
}

size_t CodePointCount(std::string_view text) {
  size_t n = 0;
  for (char ch : text) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

bool IsPySpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

size_t SpanPySpace(std::string_view text, size_t pos) {
  size_t p = pos;
  while (p < text.size()) {
    size_t next = p;
    if (!IsPySpace(DecodeOne(text, next))) break;
    p = next;
  }
  return p - pos;
}

std::string PyStrip(std::string_view text, bool left, bool right, const std::string* chars) {
  const std::vector<char32_t> cs = DecodeUtf8(text);
  std::vector<char32_t> strip_set;
  if (chars != nullptr) strip_set = DecodeUtf8(*chars);
  auto strip = [&](char32_t c) {
    return chars == nullptr ? IsPySpace(c)
                            : std::find(strip_set.begin(), strip_set.end(), c) != strip_set.end();
  };
  size_t begin = 0, end = cs.size();
  if (left) {
    while (begin < end && strip(cs[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strip(cs[end - 1])) --end;
  }
  return EncodeUtf8(cs, begin, end);
}

std::vector<std::string> PySplit(std::string_view text, const std::string* sep, int64_t maxsplit,
                                 bool from_right) {
  std::vector<std::string> parts;
  if (maxsplit < 0) maxsplit = INT64_MAX;
  if (sep != nullptr) {
    if (!from_right) {
      size_t pos = 0;
      while (maxsplit-- > 0) {
        const size_t hit = text.find(*sep, pos);
        if (hit == std::string_view::npos) break;
        parts.emplace_back(text.substr(pos, hit - pos));
        pos = hit + sep->size();
      }
      parts.emplace_back(text.substr(pos));
      return parts;
    }
    size_t end = text.size();
    while (maxsplit-- > 0 && end >= sep->size()) {
      const size_t hit = text.rfind(*sep, end - sep->size());
      if (hit == std::string_view::npos) break;
      parts.emplace_back(text.substr(hit + sep->size(), end - hit - sep->size()));
      end = hit;
    }
    parts.emplace_back(text.substr(0, end));
    std::reverse(parts.begin(), parts.end());
    return parts;
  }
  std::vector<char32_t> cs = DecodeUtf8(text);
  if (from_right) std::reverse(cs.begin(), cs.end());
  size_t i = 0;
  const size_t n = cs.size();
  while (true) {
    while (i < n && IsPySpace(cs[i])) ++i;
    if (i == n) break;
    if (maxsplit-- <= 0) {
      size_t end = n;
      std::vector<char32_t> rest(cs.begin() + i, cs.begin() + end);
      if (from_right) std::reverse(rest.begin(), rest.end());
      parts.push_back(EncodeUtf8(rest, 0, rest.size()));
      break;
    }
    size_t j = i;
    while (j < n && !IsPySpace(cs[j])) ++j;
    std::vector<char32_t> word(cs.begin() + i, cs.begin() + j);
    if (from_right) std::reverse(word.begin(), word.end());
    parts.push_back(EncodeUtf8(word, 0, word.size()));
    i = j;
  }
  if (from_right) std::reverse(parts.begin(), parts.end());
  return parts;
}

std::string PyReplace(std::string_view text, std::string_view old_text, std::string_view new_text,
                      int64_t count) {
  if (count < 0) count = INT64_MAX;
  std::string out;
  if (old_text.empty()) {
    const std::vector<char32_t> cs = DecodeUtf8(text);
    for (size_t i = 0; i <= cs.size(); ++i) {
      if (count > 0) {
        out += new_text;
        --count;
      }
      if (i < cs.size()) AppendUtf8(cs[i], out);
    }
    return out;
  }
  size_t pos = 0;
  while (count-- > 0) {
    const size_t hit = text.find(old_text, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(new_text);
    pos = hit + old_text.size();
  }
  out.append(text.substr(pos));
  return out;
}

std::vector<std::string> PySplitLines(std::string_view text) {
  const std::vector<char32_t> cs = DecodeUtf8(text);
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < cs.size(); ++i) {
    if (!IsLineBreak(cs[i])) continue;
    lines.push_back(EncodeUtf8(cs, start, i));
    if (cs[i] == '\r' && i + 1 < cs.size() && cs[i + 1] == '\n') ++i;
    start = i + 1;
  }
  if (start < cs.size()) lines.push_back(EncodeUtf8(cs, start, cs.size()));
  return lines;
}

std::string PyUpper(std::string_view text) {
  std::string out;
  for (char32_t c : DecodeUtf8(text)) AppendUpper(c, out);
  return out;
}

std::string PyLower(std::string_view text) {
  std::string out;
  for (char32_t c : DecodeUtf8(text)) AppendUtf8(LowerOf(c), out);
  return out;
}

std::string PyTitle(std::string_view text) {
  std::string out;
  bool previous_is_cased = false;
  for (char32_t c : DecodeUtf8(text)) {
    if (previous_is_cased) {
      AppendUtf8(LowerOf(c), out);
    } else {
      AppendTitle(c, out);
    }
    previous_is_cased = IsCased(c);
  }
  return out;
}

std::string PyCapitalize(std::string_view text) {
  const std::vector<char32_t> cs = DecodeUtf8(text);
  std::string out;
  for (size_t i = 0; i < cs.size(); ++i) {
    if (i == 0) {
      AppendTitle(cs[i], out);
    } else {
      AppendUtf8(LowerOf(cs[i]), out);
    }
  }
  return out;
}

std::string JinjaTitle(std::string_view text) {
  // re.split(r"([-\s({\[<]+)") then item[0].upper() + item[1:].lower() for every item.
  const std::vector<char32_t> cs = DecodeUtf8(text);
  auto is_sep = [](char32_t c) {
    return IsPySpace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
  };
  std::string out;
  size_t i = 0;
  while (i < cs.size()) {
    const bool sep = is_sep(cs[i]);
    size_t j = i;
    while (j < cs.size() && is_sep(cs[j]) == sep) ++j;
    AppendUpper(cs[i], out);
    for (size_t k = i + 1; k < j; ++k) AppendUtf8(LowerOf(cs[k]), out);
    i = j;
  }
  return out;
}

bool PyIsLower(std::string_view text) {
  bool cased = false;
  for (char32_t c : DecodeUtf8(text)) {
    if (IsUpperChar(c)) return false;
    cased = cased || IsLowerChar(c);
  }
  return cased;
}

bool PyIsUpper(std::string_view text) {
  bool cased = false;
  for (char32_t c : DecodeUtf8(text)) {
    if (IsLowerChar(c)) return false;
    cased = cased || IsUpperChar(c);
  }
  return cased;
}

std::string PyFloatRepr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::scientific);
  const std::string sci(buf, result.ptr);  // e.g. "-1.2345e+17"
  const size_t e = sci.find('e');
  std::string mantissa = sci.substr(0, e);
  const int exponent = std::stoi(sci.substr(e + 1));
  std::string sign;
  if (mantissa[0] == '-') {
    sign = "-";
    mantissa.erase(0, 1);
  }
  std::string digits;
  for (char ch : mantissa) {
    if (ch != '.') digits += ch;
  }
  if (exponent < -4 || exponent >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + exp_buf;
  }
  std::string out = sign;
  if (exponent < 0) {
    out += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else if (static_cast<size_t>(exponent) + 1 >= digits.size()) {
    out += digits + std::string(exponent + 1 - digits.size(), '0') + ".0";
  } else {
    out += digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
  }
  return out;
}

std::string PyStrRepr(std::string_view text) {
  const bool has_single = text.find('\'') != std::string_view::npos;
  const bool has_double = text.find('"') != std::string_view::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : DecodeUtf8(text)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (IsPrintable(c)) {
      AppendUtf8(c, out);
    } else {
      char buf[16];
      if (c < 0x100) {
        std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(c));
      } else if (c < 0x10000) {
        std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
      } else {
        std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(c));
      }
      out += buf;
    }
  }
  out += quote;
  return out;
}

}  // namespace tessera::jinja
