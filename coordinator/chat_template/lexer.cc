#include "coordinator/chat_template/lexer.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/py_text.h"
#include "core/status_macros.h"

namespace tessera::jinja {

absl::Status ErrorAt(Pos pos, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("chat template: line ", pos.line, ", column ", pos.column,
                                                 ": ", absl::string_view(message.data(), message.size())));
}

namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }
int HexValue(char c) {
  if (IsDigit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// jinja2 normalizes \r\n and \r to \n and drops one trailing newline.
std::string Normalize(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(Normalize(source)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t start = pos;
      while (true) {
        start = src_.find('{', start);
        if (start == std::string::npos || start + 1 >= src_.size()) {
          start = std::string::npos;
          break;
        }
        const char k = src_[start + 1];
        if (k == '{' || k == '%' || k == '#') break;
        ++start;
      }
      if (start == std::string::npos) {
        Emit(TokenType::kData, src_.substr(pos), pos);
        break;
      }
      const char kind = src_[start + 1];
      const char sign =
          start + 2 < src_.size() && (src_[start + 2] == '-' || src_[start + 2] == '+') ? src_[start + 2] : 0;
      std::string text = src_.substr(pos, start - pos);
      Strip(text, sign, kind != '{');
      if (!text.empty()) Emit(TokenType::kData, std::move(text), pos);
      size_t after = start + 2 + (sign ? 1 : 0);
      if (kind == '%') {
        const size_t raw_end = MatchRawBegin(after);
        if (raw_end != std::string::npos) {
          line_starting_ = src_[raw_end - 1] == '\n';
          ASSIGN_OR_RETURN(pos, LexRaw(start, raw_end));
          continue;
        }
      }
      line_starting_ = false;
      if (kind == '#') {
        ASSIGN_OR_RETURN(pos, SkipComment(start, after));
        continue;
      }
      Emit(kind == '{' ? TokenType::kVariableBegin : TokenType::kBlockBegin, std::string(src_, start, 2),
           start);
      ASSIGN_OR_RETURN(pos, LexTag(start, after, kind == '%'));
    }
    Emit(TokenType::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  Pos PosOf(size_t offset) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    const size_t line = static_cast<size_t>(it - line_starts_.begin());
    const size_t line_start = line_starts_[line - 1];
    const std::string_view before(src_.data() + line_start, offset - line_start);
    return Pos{static_cast<int>(line), static_cast<int>(CodePointCount(before)) + 1};
  }

  Token& Emit(TokenType type, std::string text, size_t offset) {
    Token token;
    token.type = type;
    token.text = std::move(text);
    token.pos = PosOf(offset);
    tokens_.push_back(std::move(token));
    return tokens_.back();
  }

  // Whitespace control on the text before a tag: `-` strips all trailing whitespace; otherwise lstrip_blocks
  // removes spaces between the line start and a block or comment tag (not `{{`, not with `+`).
  void Strip(std::string& text, char sign, bool lstrip_applies) const {
    if (sign == '-') {
      text = PyStrip(text, false, true, nullptr);
    } else if (sign != '+' && lstrip_applies) {
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && l_pos < text.size() &&
          SpanPySpace(text, l_pos) == text.size() - l_pos) {
        text.resize(l_pos);
      }
    }
  }

  size_t SkipSpaces(size_t pos) const { return pos + SpanPySpace(src_, pos); }

  bool At(size_t pos, std::string_view s) const { return src_.compare(pos, s.size(), s) == 0; }

  // `{%[-+]?\s*raw\s*(-%}\s*|%})` from after the sign; returns the end offset or npos.
  size_t MatchRawBegin(size_t pos) const {
    pos = SkipSpaces(pos);
    if (!At(pos, "raw")) return std::string::npos;
    pos = SkipSpaces(pos + 3);
    if (At(pos, "-%}")) return SkipSpaces(pos + 3);
    if (At(pos, "%}")) return pos + 2;
    return std::string::npos;
  }

  absl::StatusOr<size_t> LexRaw(size_t tag_start, size_t pos) {
    for (size_t search = pos;; ++search) {
      search = src_.find("{%", search);
      if (search == std::string::npos) return ErrorAt(PosOf(tag_start), "missing end of raw directive");
      size_t p = search + 2;
      const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      p = SkipSpaces(p);
      if (!At(p, "endraw")) continue;
      p = SkipSpaces(p + 6);
      size_t end;
      if (At(p, "+%}")) {
        end = p + 3;
      } else if (At(p, "-%}")) {
        end = SkipSpaces(p + 3);
      } else if (At(p, "%}")) {
        end = p + 2 + (At(p + 2, "\n") ? 1 : 0);
      } else {
        continue;
      }
      std::string text = src_.substr(pos, search - pos);
      Strip(text, sign, true);
      if (!text.empty()) Emit(TokenType::kData, std::move(text), pos);
      line_starting_ = src_[end - 1] == '\n';
      return end;
    }
  }

  absl::StatusOr<size_t> SkipComment(size_t tag_start, size_t pos) {
    const size_t close = src_.find("#}", pos);
    if (close == std::string::npos) return ErrorAt(PosOf(tag_start), "unterminated comment '{#'");
    size_t end = close + 2;
    const char sign = close > pos ? src_[close - 1] : 0;
    if (sign == '-') {
      end = SkipSpaces(end);
    } else if (sign != '+' && At(end, "\n")) {
      ++end;
    }
    line_starting_ = src_[end - 1] == '\n';
    return end;
  }

  // Digits separated by single underscores: (\d+_)*\d+. Returns the end, or `pos` when there are none.
  size_t ScanDigits(size_t pos) const {
    size_t p = pos;
    while (p < src_.size() && IsDigit(src_[p])) {
      ++p;
      if (p + 1 < src_.size() && src_[p] == '_' && IsDigit(src_[p + 1])) ++p;
    }
    return p;
  }

  absl::StatusOr<size_t> LexNumber(size_t pos) {
    const size_t int_end = ScanDigits(pos);
    size_t end = int_end;
    bool is_float = false;
    if (pos == 0 || src_[pos - 1] != '.') {
      if (At(end, ".") && ScanDigits(end + 1) > end + 1) {
        end = ScanDigits(end + 1);
        is_float = true;
      }
      if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
        size_t p = end + 1;
        if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
        if (ScanDigits(p) > p) {
          end = ScanDigits(p);
          is_float = true;
        }
      }
    }
    std::string digits;
    if (is_float) {
      for (size_t i = pos; i < end; ++i) {
        if (src_[i] != '_') digits += src_[i];
      }
      Emit(TokenType::kFloat, digits, pos).float_value = std::strtod(digits.c_str(), nullptr);
      return end;
    }
    int base = 10;
    end = pos;
    if (src_[pos] == '0' && pos + 1 < src_.size()) {
      const char p = static_cast<char>(src_[pos + 1] | 0x20);
      base = p == 'b' ? 2 : p == 'o' ? 8 : p == 'x' ? 16 : 10;
    }
    if (base != 10) {
      size_t p = pos + 2;
      while (p < src_.size()) {
        size_t q = p + (src_[p] == '_' ? 1 : 0);
        const int v = q < src_.size() ? HexValue(src_[q]) : -1;
        if (v < 0 || v >= base) break;
        digits += src_[q];
        p = q + 1;
      }
      if (digits.empty()) base = 10;  // just "0"
      end = p;
    }
    if (base == 10) {
      if (src_[pos] == '0') {
        end = pos + 1;
        while (end + 1 < src_.size() && src_[end] == '_' && src_[end + 1] == '0') end += 2;
        while (end < src_.size() && src_[end] == '0') ++end;
        digits.assign(1, '0');
      } else {
        end = int_end;
        digits.clear();
        for (size_t i = pos; i < end; ++i) {
          if (src_[i] != '_') digits += src_[i];
        }
      }
    }
    errno = 0;
    const long long value = std::strtoll(digits.c_str(), nullptr, base);
    if (errno == ERANGE) return ErrorAt(PosOf(pos), "integer literal is too large");
    Emit(TokenType::kInteger, src_.substr(pos, end - pos), pos).int_value = value;
    return end;
  }

  absl::StatusOr<size_t> LexString(size_t pos) {
    const char quote = src_[pos];
    size_t p = pos + 1;
    while (p < src_.size() && src_[p] != quote) p += src_[p] == '\\' ? 2 : 1;
    if (p >= src_.size()) return ErrorAt(PosOf(pos), "unterminated string");
    ASSIGN_OR_RETURN(std::string value, Unescape(pos, std::string_view(src_).substr(pos + 1, p - pos - 1)));
    Emit(TokenType::kString, std::move(value), pos);
    return p + 1;
  }

  // Python's unicode-escape decoding of a string literal's body.
  absl::StatusOr<std::string> Unescape(size_t pos, std::string_view body) const {
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] != '\\') {
        out += body[i];
        continue;
      }
      const char e = body[++i];
      auto hex = [&](int n) -> absl::StatusOr<char32_t> {
        char32_t v = 0;
        for (int k = 1; k <= n; ++k) {
          const int h = i + k < body.size() ? HexValue(body[i + k]) : -1;
          if (h < 0) return ErrorAt(PosOf(pos), "truncated escape sequence in string");
          v = v * 16 + static_cast<char32_t>(h);
        }
        i += n;
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
          return ErrorAt(PosOf(pos), "unsupported escape sequence in string (surrogate or out of range)");
        }
        return v;
      };
      switch (e) {
        case '\n':
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
        case 'u':
        case 'U': {
          ASSIGN_OR_RETURN(const char32_t c, hex(e == 'x' ? 2 : e == 'u' ? 4 : 8));
          AppendUtf8(c, out);
          break;
        }
        case 'N':
          return ErrorAt(PosOf(pos), "unsupported escape '\\N{...}' in string");
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = static_cast<char32_t>(e - '0');
            for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) {
              v = v * 8 + static_cast<char32_t>(body[++i] - '0');
            }
            AppendUtf8(v, out);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    return out;
  }

  absl::StatusOr<size_t> LexTag(size_t tag_start, size_t pos, bool block) {
    std::vector<char> balance;
    while (true) {
      if (pos >= src_.size()) {
        return ErrorAt(PosOf(tag_start), block ? "unterminated tag '{%'" : "unterminated tag '{{'");
      }
      if (balance.empty()) {
        size_t end = std::string::npos;
        if (block) {
          if (At(pos, "+%}")) {
            end = pos + 3;
          } else if (At(pos, "-%}")) {
            end = SkipSpaces(pos + 3);
          } else if (At(pos, "%}")) {
            end = pos + 2 + (At(pos + 2, "\n") ? 1 : 0);
          }
        } else if (At(pos, "-}}")) {
          end = SkipSpaces(pos + 3);
        } else if (At(pos, "}}")) {
          end = pos + 2;
        }
        if (end != std::string::npos) {
          Emit(block ? TokenType::kBlockEnd : TokenType::kVariableEnd, "", pos);
          line_starting_ = src_[end - 1] == '\n';
          return end;
        }
      }
      const char c = src_[pos];
      if (const size_t ws = SpanPySpace(src_, pos); ws > 0) {
        pos += ws;
      } else if (IsDigit(c)) {
        ASSIGN_OR_RETURN(pos, LexNumber(pos));
      } else if (IsNameStart(c)) {
        size_t end = pos;
        while (end < src_.size() && IsNameChar(src_[end])) ++end;
        Emit(TokenType::kName, src_.substr(pos, end - pos), pos);
        pos = end;
      } else if (c == '\'' || c == '"') {
        ASSIGN_OR_RETURN(pos, LexString(pos));
      } else {
        static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
        std::string op;
        for (std::string_view two : kTwo) {
          if (At(pos, two)) op = std::string(two);
        }
        if (op.empty() && std::string_view("+-/*%~[](){}><=.:|,;").find(c) != std::string_view::npos) {
          op = std::string(1, c);
        }
        if (op.empty()) {
          std::string shown;
          size_t p = pos;
          AppendUtf8(DecodeUtf8(std::string_view(src_).substr(p, 4)).front(), shown);
          return ErrorAt(PosOf(pos), absl::StrCat("unexpected character '", shown, "'"));
        }
        if (op == "(" || op == "[" || op == "{") {
          balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          if (balance.empty()) return ErrorAt(PosOf(pos), absl::StrCat("unexpected '", op, "'"));
          if (balance.back() != op[0]) {
            return ErrorAt(PosOf(pos), absl::StrCat("unexpected '", op, "', expected '",
                                                    std::string(1, balance.back()), "'"));
          }
          balance.pop_back();
        }
        Emit(TokenType::kOperator, op, pos);
        pos += op.size();
      }
    }
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
  bool line_starting_ = true;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source) {
  if (!IsValidUtf8(source)) return absl::InvalidArgumentError("chat template: the source is not valid UTF-8");
  return Lexer(source).Run();
}

}  // namespace tessera::jinja
