// AddedTokenSplitter: two trie passes and HF's single_word / lstrip / rstrip handling.
#include "coordinator/tokenizer/added_tokens.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "coordinator/tokenizer/utf8.h"

namespace tessera::tokenizer_internal {
namespace {

// Unicode White_Space, which Rust's regex \s matches (lstrip / rstrip use it).
bool IsWhiteSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Start of the whitespace run that ends s (s.size() if none).
size_t TrailingSpaceStart(std::string_view s) {
  size_t pos = s.size();
  while (pos > 0) {
    size_t start = pos - 1;
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    if (!IsWhiteSpace(DecodeCodePoint(s, start, pos - start))) break;
    pos = start;
  }
  return pos;
}

// Length of the whitespace run that starts s.
size_t LeadingSpaceLength(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t n = ValidSequenceLength(s, pos);
    if (n == 0 || !IsWhiteSpace(DecodeCodePoint(s, pos, n))) break;
    pos += n;
  }
  return pos;
}

}  // namespace

void AddedTokenSplitter::Matcher::Add(std::string_view content, int32_t token_index) {
  if (terminal.empty()) terminal.push_back(-1);
  int32_t node = 0;
  for (char c : content) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
    auto it = edges.find(key);
    if (it == edges.end()) {
      it = edges.emplace(key, static_cast<int32_t>(terminal.size())).first;
      terminal.push_back(-1);
    }
    node = it->second;
  }
  terminal[node] = token_index;  // a later token with the same content wins, as in HF's content -> id map
  can_start[static_cast<uint8_t>(content[0])] = true;
}

absl::StatusOr<std::unique_ptr<AddedTokenSplitter>> AddedTokenSplitter::Create(
    const std::vector<AddedTokenSpec>& tokens) {
  std::unique_ptr<AddedTokenSplitter> splitter(new AddedTokenSplitter());
  splitter->tokens_ = tokens;
  bool any_single_word = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].content.empty()) continue;
    Matcher& m = tokens[i].normalized ? splitter->normalized_ : splitter->non_normalized_;
    m.Add(tokens[i].content, static_cast<int32_t>(i));
    any_single_word |= tokens[i].single_word;
  }
  if (any_single_word) {
    constexpr std::string_view kWordChar = R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])";
    int error = 0;
    PCRE2_SIZE offset = 0;
    splitter->word_char_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kWordChar.data()), kWordChar.size(),
                                         PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &error, &offset, nullptr);
    if (splitter->word_char_ == nullptr) return absl::InternalError("word-character class does not compile");
  }
  return splitter;
}

AddedTokenSplitter::~AddedTokenSplitter() { pcre2_code_free(static_cast<pcre2_code*>(word_char_)); }

bool AddedTokenSplitter::StartsWithWord(std::string_view s) const {
  if (s.empty()) return false;
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  const int rc = pcre2_match(static_cast<pcre2_code*>(word_char_), reinterpret_cast<PCRE2_SPTR>(s.data()),
                             s.size(), 0, PCRE2_NO_UTF_CHECK, md, nullptr);
  pcre2_match_data_free(md);
  return rc >= 0;
}

bool AddedTokenSplitter::EndsWithWord(std::string_view s) const {
  if (s.empty()) return false;
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  return StartsWithWord(s.substr(start));
}

void AddedTokenSplitter::FindSplits(std::string_view text, const Matcher& m,
                                    std::vector<Match>& splits) const {
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!m.can_start[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest token starting at pos.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      auto it = m.edges.find((static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[i]));
      if (it == m.edges.end()) break;
      node = it->second;
      if (m.terminal[node] >= 0) {
        best = m.terminal[node];
        best_end = i + 1;
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedTokenSpec& token = tokens_[best];
    size_t start = pos, stop = best_end;
    pos = best_end;  // matches never overlap, whatever the flags do below
    if (token.single_word) {
      const bool start_space = start == 0 || !EndsWithWord(text.substr(0, start));
      const bool stop_space = stop == text.size() || !StartsWithWord(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) start = std::max(TrailingSpaceStart(text.substr(0, start)), start_offset);
    if (token.rstrip) stop += LeadingSpaceLength(text.substr(stop));
    if (start_offset < start) splits.push_back(Match{-1, start_offset, start});
    splits.push_back(Match{best, start, stop});
    start_offset = stop;
  }
  if (start_offset < text.size()) splits.push_back(Match{-1, start_offset, text.size()});
}

void AddedTokenSplitter::Split(std::string_view text, absl::FunctionRef<void(std::string_view)> on_text,
                               absl::FunctionRef<void(int32_t)> on_token) const {
  if (text.empty()) return;
  if (non_normalized_.empty() && normalized_.empty()) {
    on_text(text);
    return;
  }
  std::vector<Match> outer, inner;
  FindSplits(text, non_normalized_, outer);
  for (const Match& o : outer) {
    if (o.token >= 0) {
      on_token(tokens_[o.token].id);
      continue;
    }
    const std::string_view piece = text.substr(o.begin, o.end - o.begin);
    inner.clear();
    FindSplits(piece, normalized_, inner);
    for (const Match& i : inner) {
      if (i.token >= 0) {
        on_token(tokens_[i.token].id);
      } else if (i.end > i.begin) {
        on_text(piece.substr(i.begin, i.end - i.begin));
      }
    }
  }
}

}  // namespace tessera::tokenizer_internal
