// The filters of the chat-template environment, with jinja2 3.1's signatures and behaviour (and Hugging
// Face's `tojson`).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "coordinator/chat_template/builtins.h"
#include "coordinator/chat_template/json_dump.h"
#include "coordinator/chat_template/operators.h"
#include "coordinator/chat_template/py_text.h"
#include "core/status_macros.h"

namespace tessera::jinja {
namespace {

using Result = absl::StatusOr<Value>;

absl::Status Error(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

bool Given(const Value& v) { return !v.is_undefined(); }

// jinja2's make_attrgetter: "a.b.0" looked up part by part with getitem; an undefined part becomes
// `fallback` when one is given.
Result GetPath(const Value& item, const std::string& path, const Value* fallback = nullptr) {
  Value v = item;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    const bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    ASSIGN_OR_RETURN(v, GetItem(v, digits ? Value::Int(std::atoll(std::string(part).c_str()))
                                          : Value::String(std::string(part))));
    if (fallback != nullptr && v.is_undefined()) v = *fallback;
  }
  return v;
}

// Python float(str): surrounding whitespace, underscores between digits, inf / nan.
bool ParsePyFloat(const std::string& text, double& out) {
  std::string s = PyStrip(text, true, true, nullptr);
  std::string clean;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      if (i == 0 || i + 1 == s.size() || !std::isdigit(static_cast<unsigned char>(s[i - 1])) ||
          !std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
        return false;
      }
      continue;
    }
    if (s[i] == 'x' || s[i] == 'X' || s[i] == 'p' || s[i] == 'P' || s[i] == '(') return false;
    clean += s[i];
  }
  if (clean.empty()) return false;
  char* end = nullptr;
  out = std::strtod(clean.c_str(), &end);
  return end == clean.c_str() + clean.size();
}

// Python int(str, base) for bases 2..36 (no base-0 prefix inference).
bool ParsePyInt(const std::string& text, int64_t base, int64_t& out) {
  std::string s = PyStrip(text, true, true, nullptr);
  size_t i = 0;
  bool negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  if (i + 1 < s.size() && s[i] == '0') {
    const char p = static_cast<char>(s[i + 1] | 0x20);
    if ((p == 'x' && base == 16) || (p == 'o' && base == 8) || (p == 'b' && base == 2)) {
      i += 2;
      if (i < s.size() && s[i] == '_') ++i;
    }
  }
  if (i >= s.size()) return false;
  int64_t value = 0;
  bool last_digit = false;
  for (; i < s.size(); ++i) {
    if (s[i] == '_' && last_digit && i + 1 < s.size() && s[i + 1] != '_') {
      last_digit = false;
      continue;
    }
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
    const int d = c >= '0' && c <= '9' ? c - '0' : (c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99);
    if (d >= base) return false;
    if (__builtin_mul_overflow(value, base, &value) || __builtin_add_overflow(value, d, &value)) return false;
    last_digit = true;
  }
  if (!last_digit) return false;
  out = negative ? -value : value;
  return true;
}

Result Trim(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("trim", a, {"chars"}));
  if (!Given(p[0]) || p[0].is_none()) return Value::String(PyStrip(Str(in), true, true, nullptr));
  if (!p[0].is_string()) return Error("strip arg must be None or str");
  return Value::String(PyStrip(Str(in), true, true, &p[0].as_string()));
}

Result Length(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("length", a, {}).status());
  ASSIGN_OR_RETURN(const int64_t n, Length(in));
  return Value::Int(n);
}

template <std::string (*Fn)(std::string_view)>
Result StringFilter(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("filter", a, {}).status());
  return Value::String(Fn(Str(in)));
}

Result ToJson(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"}));
  JsonDumpOptions options;
  options.ensure_ascii = Truthy(p[0]);
  if (p[1].is_int()) {
    options.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, p[1].as_int())), ' ');
  } else if (p[1].is_string()) {
    options.indent = p[1].as_string();
  } else if (Given(p[1]) && !p[1].is_none()) {
    return Error("tojson: indent must be an int or a string");
  }
  if (Given(p[2]) && !p[2].is_none()) {
    if (!p[2].is_list() || p[2].list().items.size() != 2 || !p[2].list().items[0].is_string() ||
        !p[2].list().items[1].is_string()) {
      return Error("tojson: separators must be a pair of strings");
    }
    options.item_separator = p[2].list().items[0].as_string();
    options.key_separator = p[2].list().items[1].as_string();
  }
  options.sort_keys = Truthy(p[3]);
  ASSIGN_OR_RETURN(std::string json, JsonDumps(in, options));
  return Value::String(std::move(json));
}

Result Join(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("join", a, {"d", "attribute"}));
  const std::string separator = Given(p[0]) ? Str(p[0]) : "";
  ASSIGN_OR_RETURN(const std::vector<Value> items, Iterate(in));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    if (Given(p[1]) && !p[1].is_none()) {
      ASSIGN_OR_RETURN(const Value v, GetPath(items[i], Str(p[1])));
      out += Str(v);
    } else {
      out += Str(items[i]);
    }
  }
  return Value::String(std::move(out));
}

Result Replace(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("replace", a, {"old", "new", "count"}));
  if (!Given(p[0]) || !Given(p[1])) return Error("replace() missing required argument 'old' or 'new'");
  int64_t count = -1;
  if (Given(p[2]) && !p[2].is_none()) {
    if (!p[2].is_int()) return Error("replace(): count must be an integer");
    count = p[2].as_int();
  }
  return Value::String(PyReplace(Str(in), Str(p[0]), Str(p[1]), count));
}

Result First(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("first", a, {}).status());
  ASSIGN_OR_RETURN(const std::vector<Value> items, Iterate(in));
  if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
  return items.front();
}

Result Last(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("last", a, {}).status());
  if (in.is_list() && in.list().is_iterator) return Error("'generator' object is not reversible");
  ASSIGN_OR_RETURN(const std::vector<Value> items, Iterate(in));
  if (items.empty()) return Value::Undefined("No last item, sequence was empty.");
  return items.back();
}

Result Default(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("default", a, {"default_value", "boolean"}));
  if (in.is_undefined() || (Truthy(p[1]) && !Truthy(in))) return Given(p[0]) ? p[0] : Value::String("");
  return in;
}

Result String(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("string", a, {}).status());
  return Value::String(Str(in));
}

Result Int(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("int", a, {"default", "base"}));
  const Value fallback = Given(p[0]) ? p[0] : Value::Int(0);
  const int64_t base = p[1].is_int() ? p[1].as_int() : 10;
  if (in.is_undefined()) return UndefinedError(in);
  if (in.is_int()) return Value::Int(in.as_int());
  double d;
  if (in.is_string()) {
    int64_t i;
    if (base >= 2 && base <= 36 && ParsePyInt(in.as_string(), base, i)) return Value::Int(i);
    if (!ParsePyFloat(in.as_string(), d)) return fallback;
  } else if (in.kind() == Value::Kind::kFloat) {
    d = in.as_number();
  } else {
    return fallback;
  }
  if (std::isnan(d)) return fallback;
  if (std::isinf(d)) return Error("cannot convert float infinity to integer");
  if (std::fabs(d) >= 9.2e18) return Error("integer overflow");
  return Value::Int(static_cast<int64_t>(std::trunc(d)));
}

Result Float(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("float", a, {"default"}));
  const Value fallback = Given(p[0]) ? p[0] : Value::Float(0.0);
  if (in.is_undefined()) return UndefinedError(in);
  if (in.is_number()) return Value::Float(in.as_number());
  double d;
  if (in.is_string() && ParsePyFloat(in.as_string(), d)) return Value::Float(d);
  return fallback;
}

Result List(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("list", a, {}).status());
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(in));
  return Value::List(std::move(items));
}

Result Items(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("items", a, {}).status());
  if (in.is_undefined()) return Value::Iterator({});
  if (!in.is_dict()) return Error("Can only get item pairs from a mapping.");
  std::vector<Value> pairs;
  for (const auto& [k, v] : in.dict().items) pairs.push_back(Value::Tuple({Value::String(k), v}));
  return Value::Iterator(std::move(pairs));
}

Result SelectOrReject(const Value& in, const CallArgs& a, bool lookup_attr, bool keep_when) {
  const std::vector<Value>& pos = a.positional;
  const size_t off = lookup_attr ? 1 : 0;
  if (lookup_attr && pos.empty()) return Error("Missing parameter for attribute name");
  TestFn test = nullptr;
  CallArgs test_args;
  if (pos.size() > off) {
    const std::string name = Str(pos[off]);
    test = FindTest(name);
    if (test == nullptr) return Error(absl::StrCat("No test named '", name, "'."));
    test_args.positional.assign(pos.begin() + off + 1, pos.end());
    test_args.keywords = a.keywords;
  }
  ASSIGN_OR_RETURN(const std::vector<Value> items, Iterate(in));
  std::vector<Value> kept;
  for (const Value& item : items) {
    Value v = item;
    if (lookup_attr) {
      ASSIGN_OR_RETURN(v, GetPath(item, Str(pos[0])));
    }
    bool ok;
    if (test != nullptr) {
      ASSIGN_OR_RETURN(ok, test(v, test_args));
    } else {
      ok = Truthy(v);
    }
    if (ok == keep_when) kept.push_back(item);
  }
  return Value::Iterator(std::move(kept));
}

Result Select(const Value& in, const CallArgs& a) { return SelectOrReject(in, a, false, true); }
Result Reject(const Value& in, const CallArgs& a) { return SelectOrReject(in, a, false, false); }
Result SelectAttr(const Value& in, const CallArgs& a) { return SelectOrReject(in, a, true, true); }
Result RejectAttr(const Value& in, const CallArgs& a) { return SelectOrReject(in, a, true, false); }

Result Map(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(const std::vector<Value> items, Iterate(in));
  std::vector<Value> out;
  const Value* attribute = nullptr;
  const Value* fallback = nullptr;
  for (const auto& [key, value] : a.keywords) {
    if (key == "attribute") attribute = &value;
    if (key == "default") fallback = &value;
  }
  if (a.positional.empty() && attribute != nullptr) {
    for (const auto& [key, value] : a.keywords) {
      if (key != "attribute" && key != "default")
        return Error(absl::StrCat("Unexpected keyword argument '", key, "'"));
    }
    for (const Value& item : items) {
      const bool has_default = fallback != nullptr && !fallback->is_none();
      ASSIGN_OR_RETURN(Value v, GetPath(item, Str(*attribute), has_default ? fallback : nullptr));
      out.push_back(std::move(v));
    }
    return Value::Iterator(std::move(out));
  }
  if (a.positional.empty()) return Error("map requires a filter argument");
  const std::string name = Str(a.positional[0]);
  const FilterFn filter = FindFilter(name);
  if (filter == nullptr) return Error(absl::StrCat("No filter named '", name, "'."));
  CallArgs filter_args;
  filter_args.positional.assign(a.positional.begin() + 1, a.positional.end());
  filter_args.keywords = a.keywords;
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value v, filter(item, filter_args));
    out.push_back(std::move(v));
  }
  return Value::Iterator(std::move(out));
}

Result Reverse(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("reverse", a, {}).status());
  if (in.is_string()) {
    std::vector<char32_t> chars = DecodeUtf8(in.as_string());
    std::reverse(chars.begin(), chars.end());
    return Value::String(EncodeUtf8(chars, 0, chars.size()));
  }
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(in));
  std::reverse(items.begin(), items.end());
  if (in.is_list() && in.list().is_iterator) return Value::List(std::move(items));
  return Value::Iterator(std::move(items));
}

Result Unique(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("unique", a, {"case_sensitive", "attribute"}));
  ASSIGN_OR_RETURN(const std::vector<Value> items, Iterate(in));
  std::vector<Value> seen, out;
  for (const Value& item : items) {
    Value key = item;
    if (Given(p[1]) && !p[1].is_none()) {
      ASSIGN_OR_RETURN(key, GetPath(item, Str(p[1])));
    }
    if (!Truthy(p[0]) && key.is_string()) key = Value::String(PyLower(key.as_string()));
    if (key.is_list() || key.is_dict()) return Error(absl::StrCat("unhashable type: '", TypeName(key), "'"));
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return Equal(s, key); })) {
      seen.push_back(std::move(key));
      out.push_back(item);
    }
  }
  return Value::Iterator(std::move(out));
}

Result Safe(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("safe", a, {}).status());
  return Value::String(Str(in));
}

Result Indent(const Value& in, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs("indent", a, {"width", "first", "blank"}));
  std::string indention = "    ";
  if (p[0].is_string()) {
    indention = p[0].as_string();
  } else if (p[0].is_int()) {
    indention = std::string(static_cast<size_t>(std::max<int64_t>(0, p[0].as_int())), ' ');
  } else if (Given(p[0])) {
    return Error("indent: width must be an int or a string");
  }
  const std::vector<std::string> lines = PySplitLines(Str(in) + "\n");
  std::string out;
  if (Truthy(p[2])) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) out.append("\n").append(indention);
      out.append(lines[i]);
    }
  } else {
    out = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      out.append("\n");
      if (!lines[i].empty()) out.append(indention);
      out.append(lines[i]);
    }
  }
  if (Truthy(p[1])) out.insert(0, indention);
  return Value::String(std::move(out));
}

Result Abs(const Value& in, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("abs", a, {}).status());
  if (in.is_undefined()) return UndefinedError(in);
  if (in.is_int()) {
    if (in.as_int() == INT64_MIN) return Error("integer overflow");
    return Value::Int(std::abs(in.as_int()));
  }
  if (in.is_number()) return Value::Float(std::fabs(in.as_number()));
  return Error(absl::StrCat("bad operand type for abs(): '", TypeName(in), "'"));
}

}  // namespace

FilterFn FindFilter(std::string_view name) {
  static const std::pair<std::string_view, FilterFn> kFilters[] = {
      {"trim", Trim},
      {"length", Length},
      {"count", Length},
      {"upper", StringFilter<PyUpper>},
      {"lower", StringFilter<PyLower>},
      {"title", StringFilter<JinjaTitle>},
      {"capitalize", StringFilter<PyCapitalize>},
      {"tojson", ToJson},
      {"join", Join},
      {"replace", Replace},
      {"first", First},
      {"last", Last},
      {"default", Default},
      {"d", Default},
      {"string", String},
      {"int", Int},
      {"float", Float},
      {"list", List},
      {"items", Items},
      {"select", Select},
      {"reject", Reject},
      {"selectattr", SelectAttr},
      {"rejectattr", RejectAttr},
      {"map", Map},
      {"reverse", Reverse},
      {"unique", Unique},
      {"safe", Safe},
      {"indent", Indent},
      {"abs", Abs},
  };
  for (const auto& [n, fn] : kFilters) {
    if (n == name) return fn;
  }
  return nullptr;
}

}  // namespace tessera::jinja
