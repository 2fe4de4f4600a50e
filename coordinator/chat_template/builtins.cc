// Tests, str / dict methods and global-function names of the chat-template environment; argument binding.
#include "coordinator/chat_template/builtins.h"

#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/operators.h"
#include "coordinator/chat_template/py_text.h"
#include "core/status_macros.h"

namespace tessera::jinja {
namespace {

using TestResult = absl::StatusOr<bool>;
using Result = absl::StatusOr<Value>;

absl::Status Error(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// The single `other` argument of a comparison test.
absl::StatusOr<Value> Other(std::string_view test, const CallArgs& a) {
  ASSIGN_OR_RETURN(auto p, BindArgs(test, a, {"other"}));
  if (p[0].is_undefined() && a.positional.empty() && a.keywords.empty()) {
    return Error(absl::StrCat("test '", absl::string_view(test.data(), test.size()), "' needs an argument"));
  }
  return p[0];
}

template <Value::Kind... kKinds>
TestResult KindTest(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("test", a, {}).status());
  return ((v.kind() == kKinds) || ...);
}

TestResult Defined(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("defined", a, {}).status());
  return !v.is_undefined();
}

TestResult NumberTest(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("number", a, {}).status());
  return v.is_number();
}

TestResult Iterable(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("iterable", a, {}).status());
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}

TestResult Sequence(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("sequence", a, {}).status());
  return v.is_undefined() || v.is_string() || v.is_dict() || (v.is_list() && !v.list().is_iterator);
}

TestResult TrueTest(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("true", a, {}).status());
  return v.kind() == Value::Kind::kBool && v.as_bool();
}

TestResult FalseTest(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("false", a, {}).status());
  return v.kind() == Value::Kind::kBool && !v.as_bool();
}

TestResult EqualTo(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value other, Other("equalto", a));
  return Equal(v, other);
}

TestResult NotEqual(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value other, Other("ne", a));
  return !Equal(v, other);
}

template <int kSign, bool kOrEqual>
TestResult Ordering(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value other, Other("comparison", a));
  if (v.is_undefined()) return UndefinedError(v);
  if (other.is_undefined()) return UndefinedError(other);
  ASSIGN_OR_RETURN(const int c, Compare(v, other));
  return c == kSign || (kOrEqual && c == 0);
}

TestResult In(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value seq, Other("in", a));
  return Contains(seq, v);
}

TestResult Lower(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("lower", a, {}).status());
  return PyIsLower(Str(v));
}

TestResult Upper(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("upper", a, {}).status());
  return PyIsUpper(Str(v));
}

template <int kRemainder>
TestResult Parity(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("odd/even", a, {}).status());
  ASSIGN_OR_RETURN(const Value r, BinaryOp("%", v, Value::Int(2)));
  return Equal(r, Value::Int(kRemainder));
}

TestResult Callable(const Value& v, const CallArgs& a) {
  RETURN_IF_ERROR(BindArgs("callable", a, {}).status());
  return v.kind() == Value::Kind::kMacro || v.kind() == Value::Kind::kBuiltin;
}

absl::StatusOr<std::vector<std::string>> Affixes(const Value& v) {
  if (v.is_string()) return std::vector<std::string>{v.as_string()};
  if (v.is_list() && v.list().is_tuple) {
    std::vector<std::string> out;
    for (const Value& item : v.list().items) {
      if (!item.is_string()) return Error("tuple for startswith / endswith must only contain str");
      out.push_back(item.as_string());
    }
    return out;
  }
  return Error(
      absl::StrCat("startswith / endswith first arg must be str or a tuple of str, not ", TypeName(v)));
}

Result StringMethod(const std::string& s, std::string_view name, const CallArgs& a) {
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"chars"}));
    if (!p[0].is_undefined() && !p[0].is_none() && !p[0].is_string())
      return Error("strip arg must be None or str");
    return Value::String(
        PyStrip(s, name != "rstrip", name != "lstrip", p[0].is_string() ? &p[0].as_string() : nullptr));
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" || name == "splitlines") {
    RETURN_IF_ERROR(BindArgs(name, a, {}).status());
    if (name == "upper") return Value::String(PyUpper(s));
    if (name == "lower") return Value::String(PyLower(s));
    if (name == "title") return Value::String(PyTitle(s));
    if (name == "capitalize") return Value::String(PyCapitalize(s));
    std::vector<Value> lines;
    for (std::string& line : PySplitLines(s)) lines.push_back(Value::String(std::move(line)));
    return Value::List(std::move(lines));
  }
  if (name == "replace") {
    ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"old", "new", "count"}));
    if (!p[0].is_string() || !p[1].is_string()) return Error("replace() arguments must be str");
    if (!p[2].is_undefined() && !p[2].is_int()) return Error("replace() count must be an integer");
    return Value::String(
        PyReplace(s, p[0].as_string(), p[1].as_string(), p[2].is_int() ? p[2].as_int() : -1));
  }
  if (name == "split" || name == "rsplit") {
    ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"sep", "maxsplit"}));
    if (!p[0].is_undefined() && !p[0].is_none() && !p[0].is_string()) return Error("must be str or None");
    if (p[0].is_string() && p[0].as_string().empty()) return Error("empty separator");
    if (!p[1].is_undefined() && !p[1].is_int()) return Error("maxsplit must be an integer");
    std::vector<Value> parts;
    for (std::string& part : PySplit(s, p[0].is_string() ? &p[0].as_string() : nullptr,
                                     p[1].is_int() ? p[1].as_int() : -1, name == "rsplit")) {
      parts.push_back(Value::String(std::move(part)));
    }
    return Value::List(std::move(parts));
  }
  if (name == "startswith" || name == "endswith") {
    ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"prefix"}));
    ASSIGN_OR_RETURN(const std::vector<std::string> affixes, Affixes(p[0]));
    for (const std::string& affix : affixes) {
      if (affix.size() > s.size()) continue;
      if (name == "startswith" ? s.compare(0, affix.size(), affix) == 0
                               : s.compare(s.size() - affix.size(), affix.size(), affix) == 0) {
        return Value::Bool(true);
      }
    }
    return Value::Bool(false);
  }
  if (name == "join") {
    ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"iterable"}));
    if (p[0].is_undefined()) return Error("join() takes exactly one argument");
    ASSIGN_OR_RETURN(const std::vector<Value> items, Iterate(p[0]));
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) {
        return Error(
            absl::StrCat("sequence item ", i, ": expected str instance, ", TypeName(items[i]), " found"));
      }
      if (i > 0) out += s;
      out += items[i].as_string();
    }
    return Value::String(std::move(out));
  }
  if (name == "find" || name == "count") {
    ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"sub"}));
    if (!p[0].is_string()) return Error(absl::StrCat("must be str, not ", TypeName(p[0])));
    const std::string& sub = p[0].as_string();
    if (name == "find") {
      const size_t hit = s.find(sub);
      return Value::Int(hit == std::string::npos ? -1
                                                 : static_cast<int64_t>(CodePointCount(s.substr(0, hit))));
    }
    if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePointCount(s)) + 1);
    int64_t n = 0;
    for (size_t pos = s.find(sub); pos != std::string::npos; pos = s.find(sub, pos + sub.size())) ++n;
    return Value::Int(n);
  }
  return Error(
      absl::StrCat("'str' object has no attribute '", absl::string_view(name.data(), name.size()), "'"));
}

Result DictMethod(const DictData& d, std::string_view name, const CallArgs& a) {
  if (name == "get") {
    ASSIGN_OR_RETURN(auto p, BindArgs(name, a, {"key", "default"}));
    if (p[0].is_string()) {
      if (const Value* v = d.Find(p[0].as_string())) return *v;
    } else if (p[0].is_list() || p[0].is_dict()) {
      return Error(absl::StrCat("unhashable type: '", TypeName(p[0]), "'"));
    }
    return p[1].is_undefined() ? Value::None() : p[1];
  }
  RETURN_IF_ERROR(BindArgs(name, a, {}).status());
  std::vector<Value> out;
  for (const auto& [key, value] : d.items) {
    if (name == "items") {
      out.push_back(Value::Tuple({Value::String(key), value}));
    } else if (name == "keys") {
      out.push_back(Value::String(key));
    } else if (name == "values") {
      out.push_back(value);
    } else {
      return Error(
          absl::StrCat("'dict' object has no attribute '", absl::string_view(name.data(), name.size()), "'"));
    }
  }
  if (name != "items" && name != "keys" && name != "values") {
    return Error(
        absl::StrCat("'dict' object has no attribute '", absl::string_view(name.data(), name.size()), "'"));
  }
  return Value::List(std::move(out));
}

}  // namespace

absl::StatusOr<std::vector<Value>> BindArgs(std::string_view function, const CallArgs& args,
                                            std::initializer_list<std::string_view> names) {
  std::vector<Value> bound(names.size());
  std::vector<bool> set(names.size(), false);
  const absl::string_view fn(function.data(), function.size());
  if (args.positional.size() > names.size()) {
    return Error(absl::StrCat(fn, "() takes at most ", names.size(), " argument(s) (", args.positional.size(),
                              " given)"));
  }
  for (size_t i = 0; i < args.positional.size(); ++i) {
    bound[i] = args.positional[i];
    set[i] = true;
  }
  for (const auto& [key, value] : args.keywords) {
    size_t i = 0;
    for (std::string_view name : names) {
      if (name == key) break;
      ++i;
    }
    if (i == names.size())
      return Error(absl::StrCat(fn, "() got an unexpected keyword argument '", key, "'"));
    if (set[i]) return Error(absl::StrCat(fn, "() got multiple values for argument '", key, "'"));
    bound[i] = value;
    set[i] = true;
  }
  return bound;
}

TestFn FindTest(std::string_view name) {
  static const std::pair<std::string_view, TestFn> kTests[] = {
      {"defined", Defined},
      {"undefined",
       [](const Value& v, const CallArgs& a) -> TestResult {
         ASSIGN_OR_RETURN(const bool defined, Defined(v, a));
         return !defined;
       }},
      {"none", KindTest<Value::Kind::kNone>},
      {"string", KindTest<Value::Kind::kString>},
      {"mapping", KindTest<Value::Kind::kDict>},
      {"boolean", KindTest<Value::Kind::kBool>},
      {"integer", KindTest<Value::Kind::kInt>},
      {"float", KindTest<Value::Kind::kFloat>},
      {"number", NumberTest},
      {"iterable", Iterable},
      {"sequence", Sequence},
      {"true", TrueTest},
      {"false", FalseTest},
      {"equalto", EqualTo},
      {"eq", EqualTo},
      {"==", EqualTo},
      {"ne", NotEqual},
      {"!=", NotEqual},
      {"gt", Ordering<1, false>},
      {">", Ordering<1, false>},
      {"greaterthan", Ordering<1, false>},
      {"ge", Ordering<1, true>},
      {">=", Ordering<1, true>},
      {"lt", Ordering<-1, false>},
      {"<", Ordering<-1, false>},
      {"lessthan", Ordering<-1, false>},
      {"le", Ordering<-1, true>},
      {"<=", Ordering<-1, true>},
      {"in", In},
      {"lower", Lower},
      {"upper", Upper},
      {"odd", Parity<1>},
      {"even", Parity<0>},
      {"callable", Callable},
  };
  for (const auto& [n, fn] : kTests) {
    if (n == name) return fn;
  }
  return nullptr;
}

std::optional<Builtin> FindGlobalFunction(std::string_view name) {
  if (name == "range") return Builtin::kRange;
  if (name == "namespace") return Builtin::kNamespace;
  if (name == "dict") return Builtin::kDict;
  if (name == "raise_exception") return Builtin::kRaiseException;
  if (name == "strftime_now") return Builtin::kStrftimeNow;
  return std::nullopt;
}

bool IsMethodName(std::string_view name) {
  for (std::string_view m :
       {"strip",   "lstrip",     "rstrip", "upper",      "lower",    "title", "capitalize",
        "replace", "split",      "rsplit", "startswith", "endswith", "join",  "find",
        "count",   "splitlines", "items",  "keys",       "values",   "get"}) {
    if (m == name) return true;
  }
  return false;
}

absl::StatusOr<Value> CallMethod(const Value& object, std::string_view name, const CallArgs& args) {
  if (object.is_undefined()) return UndefinedError(object);
  if (object.is_string()) return StringMethod(object.as_string(), name, args);
  if (object.is_dict()) return DictMethod(object.dict(), name, args);
  return Error(absl::StrCat("'", TypeName(object), "' object has no attribute '",
                            absl::string_view(name.data(), name.size()), "'"));
}

}  // namespace tessera::jinja
