#include "coordinator/chat_template/operators.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/py_text.h"
#include "core/status_macros.h"

namespace tessera::jinja {
namespace {

absl::Status TypeError(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

std::string MissingAttr(const Value& object, const std::string& name) {
  return absl::StrCat("'", TypeName(object), " object' has no attribute '", name, "'");
}

absl::Status OperandError(std::string_view op, const Value& a, const Value& b) {
  return TypeError(absl::StrCat("unsupported operand type(s) for ", absl::string_view(op.data(), op.size()),
                                ": '", TypeName(a), "' and '", TypeName(b), "'"));
}

bool IsSequence(const Value& v) { return v.is_list() && !v.list().is_iterator; }

Value Repeat(const Value& seq, int64_t times) {
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < times; ++i) out += seq.as_string();
    return Value::String(std::move(out));
  }
  std::vector<Value> items;
  for (int64_t i = 0; i < times; ++i)
    items.insert(items.end(), seq.list().items.begin(), seq.list().items.end());
  return seq.list().is_tuple ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
}

// Python's float floor division and modulo (Objects/floatobject.c).
void FloatDivMod(double vx, double wx, double& floordiv, double& mod) {
  mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod != 0) {
    if ((wx < 0) != (mod < 0)) {
      mod += wx;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, wx);
  }
  if (div != 0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, vx / wx);
  }
}

absl::StatusOr<Value> Arithmetic(std::string_view op, const Value& a, const Value& b) {
  const bool ints = a.is_int() && b.is_int();
  const int64_t x = a.as_int(), y = b.as_int();
  const double fx = a.as_number(), fy = b.as_number();
  int64_t r = 0;
  if (op == "+" || op == "-" || op == "*") {
    if (ints) {
      const bool overflow = op == "+"   ? __builtin_add_overflow(x, y, &r)
                            : op == "-" ? __builtin_sub_overflow(x, y, &r)
                                        : __builtin_mul_overflow(x, y, &r);
      if (overflow) return TypeError("integer overflow");
      return Value::Int(r);
    }
    return Value::Float(op == "+" ? fx + fy : op == "-" ? fx - fy : fx * fy);
  }
  if (op == "/") {
    if (fy == 0) return TypeError("division by zero");
    return Value::Float(fx / fy);
  }
  if (op == "//" || op == "%") {
    if (ints) {
      if (y == 0) return TypeError("integer division or modulo by zero");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        m += y;
        q -= 1;
      }
      return Value::Int(op == "//" ? q : m);
    }
    if (fy == 0) return TypeError("float division by zero");
    double q, m;
    FloatDivMod(fx, fy, q, m);
    return Value::Float(op == "//" ? q : m);
  }
  // "**"
  if (ints && y >= 0) {
    int64_t result = 1, base = x;
    for (int64_t e = y; e > 0; e >>= 1) {
      if ((e & 1) && __builtin_mul_overflow(result, base, &result)) return TypeError("integer overflow");
      if (e > 1 && __builtin_mul_overflow(base, base, &base)) return TypeError("integer overflow");
    }
    return Value::Int(result);
  }
  if (fx == 0 && fy < 0) return TypeError("0.0 cannot be raised to a negative power");
  if (fx < 0 && std::floor(fy) != fy)
    return TypeError("unsupported: a negative number raised to a fractional power");
  return Value::Float(std::pow(fx, fy));
}

}  // namespace

absl::Status UndefinedError(const Value& undefined) {
  return absl::InvalidArgumentError(undefined.as_string().empty() ? "value is undefined"
                                                                  : undefined.as_string());
}

absl::StatusOr<Value> GetAttr(const Value& object, const std::string& name) {
  if (object.is_undefined()) return UndefinedError(object);
  if (object.kind() == Value::Kind::kDict || object.kind() == Value::Kind::kNamespace) {
    if (const Value* v = object.dict().Find(name)) return *v;
  }
  return Value::Undefined(MissingAttr(object, name));
}

absl::StatusOr<Value> GetItem(const Value& object, const Value& key) {
  if (object.is_undefined()) return UndefinedError(object);
  if (object.kind() == Value::Kind::kDict || object.kind() == Value::Kind::kNamespace) {
    if (key.is_string()) return GetAttr(object, key.as_string());
    return Value::Undefined(absl::StrCat("'", TypeName(object), " object' has no attribute ", Repr(key)));
  }
  if (key.is_int() && (object.is_string() || IsSequence(object))) {
    int64_t index = key.as_int();
    if (object.is_string()) {
      const std::vector<char32_t> chars = DecodeUtf8(object.as_string());
      const auto n = static_cast<int64_t>(chars.size());
      if (index < 0) index += n;
      if (index >= 0 && index < n) return Value::String(EncodeUtf8(chars, index, index + 1));
    } else {
      const auto n = static_cast<int64_t>(object.list().items.size());
      if (index < 0) index += n;
      if (index >= 0 && index < n) return object.list().items[index];
    }
    return Value::Undefined(absl::StrCat("'", TypeName(object), " object' has no element ", key.as_int()));
  }
  if (key.is_string()) return GetAttr(object, key.as_string());
  return Value::Undefined(absl::StrCat("'", TypeName(object), " object' has no element ", Repr(key)));
}

absl::StatusOr<Value> GetSlice(const Value& object, const Value& start, const Value& stop,
                               const Value& step) {
  if (object.is_undefined()) return UndefinedError(object);
  if (!object.is_string() && !IsSequence(object)) return Value::Undefined("unsliceable object");
  for (const Value* bound : {&start, &stop, &step}) {
    if (!bound->is_undefined() && !bound->is_none() && !bound->is_int()) {
      return TypeError("slice indices must be integers or None or have an __index__ method");
    }
  }
  const int64_t s = step.is_int() ? step.as_int() : 1;
  if (s == 0) return TypeError("slice step cannot be zero");
  std::vector<char32_t> chars;
  if (object.is_string()) chars = DecodeUtf8(object.as_string());
  const auto n = static_cast<int64_t>(object.is_string() ? chars.size() : object.list().items.size());
  auto adjust = [&](const Value& bound, int64_t absent) {
    if (!bound.is_int()) return absent;
    int64_t i = bound.as_int();
    if (i < 0) {
      i += n;
      if (i < 0) i = s < 0 ? -1 : 0;
    } else if (i >= n) {
      i = s < 0 ? n - 1 : n;
    }
    return i;
  };
  const int64_t begin = adjust(start, s < 0 ? n - 1 : 0);
  const int64_t end = adjust(stop, s < 0 ? -1 : n);
  std::vector<int64_t> picks;
  for (int64_t i = begin; s > 0 ? i < end : i > end; i += s) picks.push_back(i);
  if (object.is_string()) {
    std::string out;
    for (int64_t i : picks) AppendUtf8(chars[i], out);
    return Value::String(std::move(out));
  }
  std::vector<Value> items;
  for (int64_t i : picks) items.push_back(object.list().items[i]);
  return object.list().is_tuple ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
}

absl::StatusOr<Value> BinaryOp(std::string_view op, const Value& a, const Value& b) {
  if (op == "~") return Value::String(Str(a) + Str(b));
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  if (a.is_number() && b.is_number()) return Arithmetic(op, a, b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value::String(a.as_string() + b.as_string());
    if (IsSequence(a) && IsSequence(b) && a.list().is_tuple == b.list().is_tuple) {
      std::vector<Value> items = a.list().items;
      items.insert(items.end(), b.list().items.begin(), b.list().items.end());
      return a.list().is_tuple ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
    }
    if (a.is_string() || IsSequence(a)) {
      return TypeError(absl::StrCat("can only concatenate ", TypeName(a), " (not \"", TypeName(b), "\") to ",
                                    TypeName(a)));
    }
  }
  if (op == "*") {
    if ((a.is_string() || IsSequence(a)) && b.is_int()) return Repeat(a, b.as_int());
    if ((b.is_string() || IsSequence(b)) && a.is_int()) return Repeat(b, a.as_int());
  }
  if (op == "%" && a.is_string()) return TypeError("unsupported: printf-style string formatting with '%'");
  return OperandError(op, a, b);
}

absl::StatusOr<Value> UnaryOp(std::string_view op, const Value& a) {
  if (a.is_undefined()) return UndefinedError(a);
  if (!a.is_number()) {
    return TypeError(absl::StrCat("bad operand type for unary ", absl::string_view(op.data(), op.size()),
                                  ": '", TypeName(a), "'"));
  }
  if (op == "+") return a.kind() == Value::Kind::kBool ? Value::Int(a.as_int()) : a;
  if (a.is_int()) {
    if (a.as_int() == INT64_MIN) return TypeError("integer overflow");
    return Value::Int(-a.as_int());
  }
  return Value::Float(-a.as_number());
}

absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        return TypeError(absl::StrCat("'in <string>' requires string as left operand, not ", TypeName(item)));
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& v : container.list().items) {
        if (Equal(v, item)) return true;
      }
      return false;
    case Value::Kind::kDict:
      if (item.is_list() || item.is_dict())
        return TypeError(absl::StrCat("unhashable type: '", TypeName(item), "'"));
      return item.is_string() && container.dict().Find(item.as_string()) != nullptr;
    default:
      return TypeError(absl::StrCat("argument of type '", TypeName(container), "' is not iterable"));
  }
}

}  // namespace tessera::jinja
