// PreTokenizer: PCRE2 (UTF + UCP, JIT) matching with Oniguruma's find-iteration rules and HF's Split
// behaviours.
#include "coordinator/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "coordinator/tokenizer/utf8.h"
#include "core/status_macros.h"

namespace tessera::tokenizer_internal {

// The regex HF's ByteLevel pre-tokenizer splits with when use_regex is true (GPT-2's).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A compiled pattern, shareable between threads (matching state lives in PreTokenizerScratch).
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal,
                                                        std::string_view source_name) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    // Compile the file's own pattern first so that an error's offset refers to what the user wrote.
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                     &error, &offset, nullptr);
    if (code != nullptr && !literal) {
      pcre2_code_free(code);
      const std::string translated = TranslateOnigurumaPattern(pattern);
      code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options,
                           &error, &offset, nullptr);
    }
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(Cat(source_name, ": pre_tokenizer regex '", pattern,
                                            "' does not compile: ", reinterpret_cast<const char*>(message),
                                            " at offset ", offset));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter where JIT is unavailable
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }

  // Calls fn(start, end) for each match in s, in order, as rust-onig's find_iter yields them: the search
  // resumes at the end of each match; an empty match right where the previous match ended is skipped by one
  // character.
  template <typename F>
  absl::Status FindIter(std::string_view s, PreTokenizerScratch& scratch, F&& fn) const {
    size_t last_end = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    while (last_end <= s.size()) {
      size_t begin = 0, end = 0;
      bool found = false;
      RETURN_IF_ERROR(Match(s, last_end, scratch, found, begin, end));
      if (!found) break;
      if (begin == end && have_last && last_match_end == end) {
        const size_t n = last_end < s.size() ? ValidSequenceLength(s, last_end) : 0;
        last_end += n == 0 ? 1 : n;
        continue;
      }
      last_end = end;
      have_last = true;
      last_match_end = end;
      fn(begin, end);
    }
    return absl::OkStatus();
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}

  absl::Status Match(std::string_view s, size_t start, PreTokenizerScratch& scratch, bool& found,
                     size_t& begin, size_t& end) const {
    auto* md = static_cast<pcre2_match_data*>(scratch.match_data_);
    auto* mctx = static_cast<pcre2_match_context*>(scratch.match_context_);
    int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK,
                         md, mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && scratch.jit_stack_ == nullptr) {
      scratch.jit_stack_ = pcre2_jit_stack_create(32 * 1024, 256 * 1024 * 1024, nullptr);
      pcre2_jit_stack_assign(mctx, nullptr, scratch.jit_stack_);
      rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK, md,
                       mctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
      found = false;
      return absl::OkStatus();
    }
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      return absl::InternalError(Cat("pre_tokenizer regex failed at byte ", start, " of a ", s.size(),
                                     "-byte piece: ", reinterpret_cast<const char*>(message)));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md);
    found = true;
    begin = ovector[0];
    end = ovector[1];
    return absl::OkStatus();
  }

  pcre2_code* code_;
};

PreTokenizerScratch::PreTokenizerScratch() {
  match_data_ = pcre2_match_data_create(1, nullptr);
  auto* context = pcre2_match_context_create(nullptr);
  // The defaults (10 million backtracking steps, 20 MB of heap) are too small for a 10 MB run of one
  // character class, which the pattern's alternatives scan once each: allow whatever the input needs.
  pcre2_set_match_limit(context, UINT32_MAX);
  pcre2_set_depth_limit(context, UINT32_MAX);
  pcre2_set_heap_limit(context, UINT32_MAX);
  match_context_ = context;
}

PreTokenizerScratch::~PreTokenizerScratch() {
  pcre2_match_data_free(static_cast<pcre2_match_data*>(match_data_));
  pcre2_match_context_free(static_cast<pcre2_match_context*>(match_context_));
  if (jit_stack_ != nullptr) pcre2_jit_stack_free(static_cast<pcre2_jit_stack*>(jit_stack_));
}

std::string TranslateOnigurumaPattern(std::string_view p) {
  constexpr std::string_view kMongolianVowelSeparator = "\\x{180E}";
  std::string out;
  size_t i = 0;
  while (i < p.size()) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      if (p[i + 1] == 's') {
        out += Cat("(?:(?!", kMongolianVowelSeparator, ")\\s)");
      } else if (p[i + 1] == 'S') {
        out += Cat("(?:\\S|", kMongolianVowelSeparator, ")");
      } else {
        out.append(p.substr(i, 2));
      }
      i += 2;
      continue;
    }
    if (p[i] != '[') {
      out.push_back(p[i++]);
      continue;
    }
    // A character class: collect its items, noting \s and \S.
    size_t j = i + 1;
    const bool negated = j < p.size() && p[j] == '^';
    if (negated) ++j;
    std::string rest;  // the class body without \s / \S
    bool has_s = false, has_not_s = false;
    bool first = true;
    while (j < p.size() && (p[j] != ']' || first)) {
      first = false;
      if (p[j] == '\\' && j + 1 < p.size()) {
        if (p[j + 1] == 's') {
          has_s = true;
        } else if (p[j + 1] == 'S') {
          has_not_s = true;
        } else {
          rest.append(p.substr(j, 2));
        }
        j += 2;
      } else if (p[j] == '[' && j + 1 < p.size() && p[j + 1] == ':') {  // [:posix:]
        const size_t close = p.find(":]", j + 2);
        const size_t stop = close == std::string_view::npos ? p.size() : close + 2;
        rest.append(p.substr(j, stop - j));
        j = stop;
      } else {
        rest.push_back(p[j++]);
      }
    }
    if (j >= p.size() || has_s == has_not_s) {  // unterminated (PCRE2 reports it), or neither / both
      const size_t stop = std::min(p.size(), j + 1);
      out.append(p.substr(i, stop - i));
      i = stop;
      continue;
    }
    const std::string body(p.substr(i + 1 + (negated ? 1 : 0), j - i - 1 - (negated ? 1 : 0)));
    const std::string m(kMongolianVowelSeparator);
    if (has_s && !negated) {  // (\s minus U+180E) or rest
      out += Cat("(?:(?!", m, ")[", body, "]", rest.empty() ? "" : Cat("|(?=", m, ")[", rest, "]"), ")");
    } else if (has_s) {  // not ((\s minus U+180E) or rest)
      out += Cat("(?:[^", body, "]|", rest.empty() ? m : Cat("(?=", m, ")[^", rest, "]"), ")");
    } else if (!negated) {  // \S or U+180E or rest
      out += Cat("(?:[", body, "]|", m, ")");
    } else {  // not (\S or U+180E or rest)
      out += Cat("(?:(?!", m, ")[^", body, "])");
    }
    i = j + 1;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(const std::vector<PreTokenizerStep>& steps,
                                                                   std::string_view source_name) {
  std::unique_ptr<PreTokenizer> pre(new PreTokenizer());
  for (const PreTokenizerStep& spec : steps) {
    Step step;
    step.spec = spec;
    if (spec.kind == PreTokenizerStep::Kind::kSplit) {
      ASSIGN_OR_RETURN(step.regex, Regex::Compile(spec.pattern, spec.literal, source_name));
    } else if (spec.use_regex) {
      ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2Pattern, false, source_name));
    }
    pre->steps_.push_back(std::move(step));
  }
  return pre;
}

PreTokenizer::~PreTokenizer() = default;

absl::Status PreTokenizer::Run(std::string_view text, PreTokenizerScratch& scratch,
                               absl::FunctionRef<void(std::string_view)> sink) const {
  if (text.empty()) return absl::OkStatus();
  return RunStep(0, text, scratch, sink);
}

namespace {

// Folds the (span, is_match) pieces of one Split into output pieces per HF's SplitDelimiterBehavior,
// streaming: at most one piece is held back. Spans are contiguous; emit(begin, end) receives the pieces
// (maybe empty).
template <typename Emit>
class BehaviorFolder {
 public:
  BehaviorFolder(SplitBehavior behavior, Emit& emit) : behavior_(behavior), emit_(emit) {}

  void Add(size_t begin, size_t end, bool is_match) {
    switch (behavior_) {
      case SplitBehavior::kIsolated:
        emit_(begin, end);
        break;
      case SplitBehavior::kRemoved:
        if (!is_match) emit_(begin, end);
        break;
      case SplitBehavior::kMergedWithPrevious:
        if (is_match && !previous_match_ && has_pending_) {
          pending_end_ = end;
        } else {
          Hold(begin, end);
        }
        break;
      case SplitBehavior::kContiguous:
        if (is_match == previous_match_ && has_pending_) {
          pending_end_ = end;
        } else {
          Hold(begin, end);
        }
        break;
      case SplitBehavior::kMergedWithNext:  // a match joins the non-match after it
        if (is_match) {
          Hold(begin, end);
        } else if (has_pending_ && previous_match_) {
          emit_(pending_begin_, end);
          has_pending_ = false;
        } else {
          Flush();
          emit_(begin, end);
        }
        break;
    }
    previous_match_ = is_match;
  }

  void Flush() {
    if (has_pending_) emit_(pending_begin_, pending_end_);
    has_pending_ = false;
  }

 private:
  void Hold(size_t begin, size_t end) {
    Flush();
    has_pending_ = true;
    pending_begin_ = begin;
    pending_end_ = end;
  }

  SplitBehavior behavior_;
  Emit& emit_;
  bool previous_match_ = false;
  bool has_pending_ = false;
  size_t pending_begin_ = 0, pending_end_ = 0;
};

}  // namespace

absl::Status PreTokenizer::RunStep(size_t index, std::string_view piece, PreTokenizerScratch& scratch,
                                   absl::FunctionRef<void(std::string_view)> sink) const {
  if (index == steps_.size()) {
    sink(piece);
    return absl::OkStatus();
  }
  const Step& step = steps_[index];
  if (step.spec.kind == PreTokenizerStep::Kind::kByteLevel && step.spec.add_prefix_space && piece[0] != ' ') {
    scratch.arena_.push_back(Cat(" ", piece));
    piece = scratch.arena_.back();
  }
  if (step.regex == nullptr) return RunStep(index + 1, piece, scratch, sink);

  const SplitBehavior behavior =
      step.spec.kind == PreTokenizerStep::Kind::kSplit ? step.spec.behavior : SplitBehavior::kIsolated;
  const bool invert = step.spec.kind == PreTokenizerStep::Kind::kSplit && step.spec.invert;
  absl::Status status;
  auto emit = [&](size_t begin, size_t end) {
    if (end > begin && status.ok())
      status = RunStep(index + 1, piece.substr(begin, end - begin), scratch, sink);
  };
  BehaviorFolder<decltype(emit)> folder(behavior, emit);
  size_t previous_end = 0;
  RETURN_IF_ERROR(step.regex->FindIter(piece, scratch, [&](size_t begin, size_t end) {
    if (begin > previous_end) folder.Add(previous_end, begin, invert);
    folder.Add(begin, end, !invert);
    previous_end = end;
  }));
  if (previous_end < piece.size()) folder.Add(previous_end, piece.size(), invert);
  folder.Flush();
  return status;
}

}  // namespace tessera::tokenizer_internal
