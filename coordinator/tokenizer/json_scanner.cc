// JsonScanner: strings, integers and structural skipping, strict about the JSON grammar it reads.
#include "coordinator/tokenizer/json_scanner.h"

#include "coordinator/tokenizer/utf8.h"
#include "core/status_macros.h"

namespace tessera::tokenizer_internal {
namespace {
constexpr int kMaxDepth = 512;
}  // namespace

absl::Status JsonScanner::Error(std::string_view what) const {
  return absl::InvalidArgumentError(Cat("invalid JSON at byte offset ", pos_, ": ", what));
}

void JsonScanner::SkipWhitespace() {
  while (pos_ < text_.size()) {
    const char c = text_[pos_];
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
    ++pos_;
  }
}

bool JsonScanner::Consume(char c) {
  SkipWhitespace();
  if (pos_ < text_.size() && text_[pos_] == c) {
    ++pos_;
    return true;
  }
  return false;
}

absl::Status JsonScanner::Expect(char c) {
  if (Consume(c)) return absl::OkStatus();
  return Error(Cat("expected '", std::string(1, c), "'"));
}

char JsonScanner::Peek() {
  SkipWhitespace();
  return pos_ < text_.size() ? text_[pos_] : '\0';
}

absl::Status JsonScanner::ExpectEnd() {
  SkipWhitespace();
  if (pos_ != text_.size()) return Error("unexpected text after the top-level value");
  return absl::OkStatus();
}

absl::Status JsonScanner::ReadHex4(uint32_t& value) {
  if (pos_ + 4 > text_.size()) return Error("truncated \\u escape");
  value = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = text_[pos_++];
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= static_cast<uint32_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      value |= static_cast<uint32_t>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      value |= static_cast<uint32_t>(c - 'A' + 10);
    } else {
      return Error("bad hex digit in \\u escape");
    }
  }
  return absl::OkStatus();
}

absl::Status JsonScanner::ReadString(std::string& out) {
  RETURN_IF_ERROR(Expect('"'));
  out.clear();
  while (true) {
    // Copy the run up to the next quote, backslash or control character in one go.
    size_t end = pos_;
    while (end < text_.size() && text_[end] != '"' && text_[end] != '\\' &&
           static_cast<uint8_t>(text_[end]) >= 0x20) {
      ++end;
    }
    out.append(text_.data() + pos_, end - pos_);
    pos_ = end;
    if (pos_ >= text_.size()) return Error("unterminated string");
    const char c = text_[pos_++];
    if (c == '"') break;
    if (c != '\\') return Error("control character in string");
    if (pos_ >= text_.size()) return Error("unterminated escape");
    const char e = text_[pos_++];
    switch (e) {
      case '"':
      case '\\':
      case '/':
        out.push_back(e);
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'u': {
        uint32_t cp = 0;
        RETURN_IF_ERROR(ReadHex4(cp));
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t low = 0;
          if (pos_ + 2 > text_.size() || text_[pos_] != '\\' || text_[pos_ + 1] != 'u') {
            return Error("unpaired surrogate in \\u escape");
          }
          pos_ += 2;
          RETURN_IF_ERROR(ReadHex4(low));
          if (low < 0xDC00 || low > 0xDFFF) return Error("unpaired surrogate in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          return Error("unpaired surrogate in \\u escape");
        }
        AppendCodePoint(static_cast<char32_t>(cp), out);
        break;
      }
      default:
        return Error("unknown escape");
    }
  }
  return absl::OkStatus();
}

absl::Status JsonScanner::ReadInt(int64_t& out) {
  SkipWhitespace();
  bool negative = false;
  if (pos_ < text_.size() && text_[pos_] == '-') {
    negative = true;
    ++pos_;
  }
  const size_t start = pos_;
  uint64_t value = 0;
  while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
    value = value * 10 + static_cast<uint64_t>(text_[pos_] - '0');
    if (value > (1ull << 62)) return Error("integer out of range");
    ++pos_;
  }
  if (pos_ == start) return Error("expected an integer");
  if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
    return Error("expected an integer, found a fraction");
  }
  out = negative ? -static_cast<int64_t>(value) : static_cast<int64_t>(value);
  return absl::OkStatus();
}

absl::Status JsonScanner::SkipValue(std::string_view& span) {
  SkipWhitespace();
  const size_t start = pos_;
  RETURN_IF_ERROR(SkipValueAt(0));
  span = text_.substr(start, pos_ - start);
  return absl::OkStatus();
}

absl::Status JsonScanner::SkipValueAt(int depth) {
  if (depth > kMaxDepth) return Error("nesting too deep");
  const char c = Peek();
  std::string scratch;
  if (c == '"') return ReadString(scratch);
  if (c == '{') {
    ++pos_;
    if (Consume('}')) return absl::OkStatus();
    do {
      RETURN_IF_ERROR(ReadString(scratch));
      RETURN_IF_ERROR(Expect(':'));
      RETURN_IF_ERROR(SkipValueAt(depth + 1));
    } while (Consume(','));
    return Expect('}');
  }
  if (c == '[') {
    ++pos_;
    if (Consume(']')) return absl::OkStatus();
    do {
      RETURN_IF_ERROR(SkipValueAt(depth + 1));
    } while (Consume(','));
    return Expect(']');
  }
  for (std::string_view literal : {"true", "false", "null"}) {
    if (text_.substr(pos_, literal.size()) == literal) {
      pos_ += literal.size();
      return absl::OkStatus();
    }
  }
  // A number: -?digits[.digits][(e|E)[+-]digits]
  const size_t start = pos_;
  if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
  const auto digits = [&] {
    const size_t s = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    return pos_ > s;
  };
  if (!digits()) {
    pos_ = start;
    return Error("expected a value");
  }
  if (pos_ < text_.size() && text_[pos_] == '.') {
    ++pos_;
    if (!digits()) return Error("bad number");
  }
  if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
    ++pos_;
    if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
    if (!digits()) return Error("bad number");
  }
  return absl::OkStatus();
}

}  // namespace tessera::tokenizer_internal
