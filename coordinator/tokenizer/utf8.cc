// UTF-8 validation, Rust-compatible lossy decoding and the GPT-2 byte-level alphabet.
#include "coordinator/tokenizer/utf8.h"

namespace tessera::tokenizer_internal {
namespace {

// Sequence width announced by a lead byte (0 for bytes that cannot start a sequence), as Rust's
// utf8_char_width: C0, C1 and F5..FF are never valid.
int LeadWidth(uint8_t b) {
  if (b < 0x80) return 1;
  if (b < 0xC2) return 0;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  if (b < 0xF5) return 4;
  return 0;
}

// Whether c may follow lead byte `lead` as the second byte of a sequence.
bool ValidSecond(uint8_t lead, uint8_t c) {
  switch (lead) {
    case 0xE0:
      return c >= 0xA0 && c <= 0xBF;
    case 0xED:
      return c >= 0x80 && c <= 0x9F;
    case 0xF0:
      return c >= 0x90 && c <= 0xBF;
    case 0xF4:
      return c >= 0x80 && c <= 0x8F;
    default:
      return c >= 0x80 && c <= 0xBF;
  }
}

bool IsContinuation(uint8_t c) { return (c & 0xC0) == 0x80; }

// Scans the sequence at s[pos]: returns its length when well-formed, else sets *bad to the length of the
// maximal ill-formed subpart (at least 1) and returns 0.
size_t Scan(std::string_view s, size_t pos, size_t* bad) {
  const uint8_t lead = static_cast<uint8_t>(s[pos]);
  const int width = LeadWidth(lead);
  if (width == 1) return 1;
  *bad = 1;
  if (width == 0) return 0;
  size_t i = pos + 1;
  if (i >= s.size() || !ValidSecond(lead, static_cast<uint8_t>(s[i]))) return 0;
  for (int k = 2; k < width; ++k) {
    ++i;
    *bad = static_cast<size_t>(k);
    if (i >= s.size() || !IsContinuation(static_cast<uint8_t>(s[i]))) return 0;
  }
  return static_cast<size_t>(width);
}

}  // namespace

size_t ValidSequenceLength(std::string_view s, size_t pos) {
  size_t bad = 0;
  return Scan(s, pos, &bad);
}

size_t FindInvalidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t bad = 0;
    const size_t n = Scan(s, pos, &bad);
    if (n == 0) return pos;
    pos += n;
  }
  return std::string_view::npos;
}

void AppendUtf8Lossy(std::string_view bytes, std::string& out) {
  size_t pos = 0, run_start = 0;
  while (pos < bytes.size()) {
    if (static_cast<uint8_t>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t bad = 0;
    const size_t n = Scan(bytes, pos, &bad);
    if (n > 0) {
      pos += n;
      continue;
    }
    out.append(bytes.data() + run_start, pos - run_start);
    out.append("\xEF\xBF\xBD");
    pos += bad;
    run_start = pos;
  }
  out.append(bytes.data() + run_start, bytes.size() - run_start);
}

size_t IncompleteUtf8Suffix(std::string_view s) {
  for (size_t k = 1; k <= 3 && k <= s.size(); ++k) {
    const size_t start = s.size() - k;
    const uint8_t b = static_cast<uint8_t>(s[start]);
    if (IsContinuation(b)) continue;
    const int width = LeadWidth(b);
    if (width <= static_cast<int>(k)) return 0;
    if (k >= 2 && !ValidSecond(b, static_cast<uint8_t>(s[start + 1]))) return 0;
    return k;  // bytes after the second are continuations (checked by the loop above)
  }
  return 0;
}

char32_t DecodeCodePoint(std::string_view s, size_t pos, size_t length) {
  const auto b = [&](size_t i) { return static_cast<char32_t>(static_cast<uint8_t>(s[pos + i])); };
  switch (length) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendCodePoint(char32_t c, std::string& out) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

ByteLevelTable::ByteLevelTable() {
  char_to_byte.fill(-1);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    byte_to_char[b] = printable ? static_cast<char32_t>(b) : next++;
    char_to_byte[byte_to_char[b]] = static_cast<int16_t>(b);
  }
}

const ByteLevelTable& GetByteLevelTable() {
  static const ByteLevelTable* table = new ByteLevelTable();
  return *table;
}

bool ByteLevelToBytes(std::string_view token, std::string& raw) {
  const ByteLevelTable& table = GetByteLevelTable();
  raw.clear();
  size_t pos = 0;
  while (pos < token.size()) {
    const uint8_t b = static_cast<uint8_t>(token[pos]);
    if (b < 0x80) {  // ASCII byte-level characters map to themselves (the others are never ASCII)
      if (table.char_to_byte[b] < 0) return false;
      raw.push_back(static_cast<char>(b));
      ++pos;
      continue;
    }
    const size_t n = ValidSequenceLength(token, pos);
    if (n == 0) return false;
    const char32_t c = DecodeCodePoint(token, pos, n);
    if (c >= table.char_to_byte.size() || table.char_to_byte[c] < 0) return false;
    raw.push_back(static_cast<char>(table.char_to_byte[c]));
    pos += n;
  }
  return true;
}

}  // namespace tessera::tokenizer_internal
