// Values of the chat-template interpreter: the Python objects a Jinja template sees (undefined, None, bool,
// int, float, str, list / tuple, dict, namespace, macro, builtin function), with Python's truthiness,
// equality, ordering, str() and repr(). Lists and dicts are shared and immutable (the sandbox is immutable);
// a namespace is shared and mutable.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera::jinja {

class Value;
struct Stmt;

// Global functions of the environment.
enum class Builtin { kRange, kNamespace, kDict, kRaiseException, kStrftimeNow };

struct ListData {
  std::vector<Value> items;
  bool is_tuple = false;
  // A one-shot iterator (generator, reversed(...)): iterable but without len(), indexing or falsiness.
  bool is_iterator = false;
};

// Insertion-ordered string-keyed mapping (Python dict order).
struct DictData {
  std::vector<std::pair<std::string, Value>> items;
  [[nodiscard]] const Value* Find(std::string_view key) const;
  void Set(const std::string& key, Value value);
};

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kMacro,
    kBuiltin
  };

  Value() = default;  // undefined
  [[nodiscard]] static Value Undefined(std::string hint);
  [[nodiscard]] static Value None();
  [[nodiscard]] static Value Bool(bool b);
  [[nodiscard]] static Value Int(int64_t i);
  [[nodiscard]] static Value Float(double d);
  [[nodiscard]] static Value String(std::string s);
  [[nodiscard]] static Value List(std::vector<Value> items);
  [[nodiscard]] static Value Tuple(std::vector<Value> items);
  [[nodiscard]] static Value Iterator(std::vector<Value> items);
  [[nodiscard]] static Value Dict(std::shared_ptr<DictData> dict);
  [[nodiscard]] static Value Namespace(std::shared_ptr<DictData> attrs);
  [[nodiscard]] static Value Macro(const Stmt* macro);
  [[nodiscard]] static Value BuiltinFunction(Builtin builtin);
  // JSON -> Value (objects keep their key order).
  [[nodiscard]] static Value FromJson(const nlohmann::ordered_json& json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_int() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }  // bool is an int in Python
  bool is_number() const { return is_int() || kind_ == Kind::kFloat; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }
  double as_number() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return str_; }  // string; the hint for undefined
  const ListData& list() const { return *list_; }
  const DictData& dict() const { return *dict_; }  // dict or namespace
  DictData& mutable_namespace() const { return *dict_; }
  const Stmt* macro() const { return macro_; }
  Builtin builtin() const { return static_cast<Builtin>(int_); }

 private:
  Kind kind_ = Kind::kUndefined;
  int64_t int_ = 0;  // bool, int, builtin id
  double float_ = 0;
  std::string str_;
  std::shared_ptr<ListData> list_;
  std::shared_ptr<DictData> dict_;
  const Stmt* macro_ = nullptr;
};

// Python bool(value). Undefined is false; iterators are always true.
[[nodiscard]] bool Truthy(const Value& v);
// Python type name: "str", "int", "NoneType", "dict", ...
[[nodiscard]] std::string TypeName(const Value& v);
// Python str(value); undefined prints as "".
[[nodiscard]] std::string Str(const Value& v);
// Python repr(value).
[[nodiscard]] std::string Repr(const Value& v);
// Python ==.
[[nodiscard]] bool Equal(const Value& a, const Value& b);
// Python ordering: returns <0, 0, >0. Errors: a TypeError message for unorderable types.
[[nodiscard]] absl::StatusOr<int> Compare(const Value& a, const Value& b);
// The items that iterating `v` yields (str: characters, dict: keys, undefined: nothing).
// Errors: a TypeError message for non-iterables.
[[nodiscard]] absl::StatusOr<std::vector<Value>> Iterate(const Value& v);
// len(v). Errors: a TypeError message where Python has no len().
[[nodiscard]] absl::StatusOr<int64_t> Length(const Value& v);

}  // namespace tessera::jinja
