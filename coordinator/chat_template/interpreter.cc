#include "coordinator/chat_template/interpreter.h"

#include <ctime>

#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/builtins.h"
#include "coordinator/chat_template/operators.h"
#include "core/status_macros.h"

namespace tessera::jinja {
namespace {

constexpr int kMaxCallDepth = 100;
constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox MAX_RANGE

// Adds the position to an error that does not carry one yet.
absl::Status At(Pos pos, const absl::Status& status) { return ErrorAt(pos, std::string(status.message())); }

#define RETURN_AT(pos, expr)                                             \
  do {                                                                   \
    auto tessera_result_ = (expr);                                       \
    if (!tessera_result_.ok()) return At(pos, tessera_result_.status()); \
    return std::move(tessera_result_).value();                           \
  } while (0)

}  // namespace

absl::Status Interpreter::Render(const StmtList& body, std::string& out) {
  Scope root;
  root_ = &root;
  auto flow = ExecList(body, root, out);
  root_ = nullptr;
  return flow.status();
}

Value Interpreter::Lookup(const std::string& name, const Scope& scope) const {
  for (const Scope* s = &scope; s != nullptr; s = s->parent) {
    const auto it = s->vars.find(name);
    if (it != s->vars.end()) return it->second;
  }
  if (const Value* v = context_.Find(name)) return *v;
  if (auto builtin = FindGlobalFunction(name)) return Value::BuiltinFunction(*builtin);
  return Value::Undefined(absl::StrCat("'", name, "' is undefined"));
}

absl::StatusOr<Interpreter::Flow> Interpreter::ExecList(const StmtList& body, Scope& scope,
                                                        std::string& out) {
  for (const StmtPtr& stmt : body) {
    ASSIGN_OR_RETURN(const Flow flow, Exec(*stmt, scope, out));
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

absl::StatusOr<Interpreter::Flow> Interpreter::Exec(const Stmt& stmt, Scope& scope, std::string& out) {
  switch (stmt.kind) {
    case StmtKind::kText:
      out += stmt.text;
      return Flow::kNormal;
    case StmtKind::kOutput: {
      ASSIGN_OR_RETURN(const Value v, Eval(*stmt.expr, scope));
      out += Str(v);
      return Flow::kNormal;
    }
    case StmtKind::kIf:
      for (const auto& [cond, body] : stmt.branches) {
        bool taken = cond == nullptr;
        if (!taken) {
          ASSIGN_OR_RETURN(const Value v, Eval(*cond, scope));
          taken = Truthy(v);
        }
        if (taken) return ExecList(body, scope, out);
      }
      return Flow::kNormal;
    case StmtKind::kFor:
      return ExecFor(stmt, scope, out);
    case StmtKind::kSet: {
      ASSIGN_OR_RETURN(const Value v, Eval(*stmt.expr, scope));
      if (stmt.attr.empty()) {
        RETURN_IF_ERROR(Assign(stmt.targets, v, scope, stmt.pos));
        return Flow::kNormal;
      }
      const Value ns = Lookup(stmt.targets[0], scope);
      if (ns.kind() != Value::Kind::kNamespace) {
        return ErrorAt(stmt.pos, "cannot assign attribute on non-namespace object");
      }
      ns.mutable_namespace().Set(stmt.attr, v);
      return Flow::kNormal;
    }
    case StmtKind::kSetBlock: {
      std::string text;
      RETURN_IF_ERROR(ExecList(stmt.body, scope, text).status());
      scope.vars[stmt.targets[0]] = Value::String(std::move(text));
      return Flow::kNormal;
    }
    case StmtKind::kMacro:
      scope.vars[stmt.text] = Value::Macro(&stmt);
      return Flow::kNormal;
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
    case StmtKind::kScope:
      return ExecList(stmt.body, scope, out);
  }
  return Flow::kNormal;
}

absl::Status Interpreter::Assign(const std::vector<std::string>& targets, const Value& value, Scope& scope,
                                 Pos pos) {
  if (targets.size() == 1) {
    scope.vars[targets[0]] = value;
    return absl::OkStatus();
  }
  auto items = Iterate(value);
  if (!items.ok()) return At(pos, items.status());
  if (items->size() != targets.size()) {
    return ErrorAt(pos, items->size() > targets.size()
                            ? absl::StrCat("too many values to unpack (expected ", targets.size(), ")")
                            : absl::StrCat("not enough values to unpack (expected ", targets.size(), ", got ",
                                           items->size(), ")"));
  }
  for (size_t i = 0; i < targets.size(); ++i) scope.vars[targets[i]] = (*items)[i];
  return absl::OkStatus();
}

absl::StatusOr<Interpreter::Flow> Interpreter::ExecFor(const Stmt& stmt, Scope& scope, std::string& out) {
  ASSIGN_OR_RETURN(const Value iterable, Eval(*stmt.expr, scope));
  auto all = Iterate(iterable);
  if (!all.ok()) return At(stmt.expr->pos, all.status());
  std::vector<Value> items;
  if (stmt.cond == nullptr) {
    items = std::move(all).value();
  } else {
    for (Value& item : *all) {
      Scope filter_scope;
      filter_scope.parent = &scope;
      RETURN_IF_ERROR(Assign(stmt.targets, item, filter_scope, stmt.pos));
      ASSIGN_OR_RETURN(const Value keep, Eval(*stmt.cond, filter_scope));
      if (Truthy(keep)) items.push_back(std::move(item));
    }
  }
  if (items.empty()) return ExecList(stmt.else_body, scope, out);
  const auto n = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < n; ++i) {
    Scope iteration;
    iteration.parent = &scope;
    RETURN_IF_ERROR(Assign(stmt.targets, items[i], iteration, stmt.pos));
    auto loop = std::make_shared<DictData>();
    loop->items = {{"index", Value::Int(i + 1)},    {"index0", Value::Int(i)},
                   {"revindex", Value::Int(n - i)}, {"revindex0", Value::Int(n - i - 1)},
                   {"first", Value::Bool(i == 0)},  {"last", Value::Bool(i == n - 1)},
                   {"length", Value::Int(n)},       {"depth", Value::Int(1)},
                   {"depth0", Value::Int(0)}};
    if (i > 0) loop->items.emplace_back("previtem", items[i - 1]);
    if (i + 1 < n) loop->items.emplace_back("nextitem", items[i + 1]);
    iteration.vars["loop"] = Value::Dict(std::move(loop));
    ASSIGN_OR_RETURN(const Flow flow, ExecList(stmt.body, iteration, out));
    if (flow == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

absl::StatusOr<CallArgs> Interpreter::EvalArgs(const Expr& expr, size_t first_arg, const Scope& scope) {
  CallArgs args;
  for (size_t i = first_arg; i < expr.args.size(); ++i) {
    ASSIGN_OR_RETURN(Value v, Eval(*expr.args[i], scope));
    args.positional.push_back(std::move(v));
  }
  for (const auto& [key, value_expr] : expr.kwargs) {
    ASSIGN_OR_RETURN(Value v, Eval(*value_expr, scope));
    args.keywords.emplace_back(key, std::move(v));
  }
  return args;
}

absl::StatusOr<Value> Interpreter::Eval(const Expr& expr, const Scope& scope) {
  switch (expr.kind) {
    case ExprKind::kLiteral:
      return expr.literal;
    case ExprKind::kName:
      return Lookup(expr.name, scope);
    case ExprKind::kList:
    case ExprKind::kTuple: {
      ASSIGN_OR_RETURN(CallArgs items, EvalArgs(expr, 0, scope));
      return expr.kind == ExprKind::kList ? Value::List(std::move(items.positional))
                                          : Value::Tuple(std::move(items.positional));
    }
    case ExprKind::kDict: {
      auto dict = std::make_shared<DictData>();
      for (size_t i = 0; i + 1 < expr.args.size(); i += 2) {
        ASSIGN_OR_RETURN(const Value key, Eval(*expr.args[i], scope));
        if (!key.is_string())
          return ErrorAt(expr.args[i]->pos, "unsupported: a dict key that is not a string");
        ASSIGN_OR_RETURN(Value value, Eval(*expr.args[i + 1], scope));
        dict->Set(key.as_string(), std::move(value));
      }
      return Value::Dict(std::move(dict));
    }
    case ExprKind::kGetAttr: {
      ASSIGN_OR_RETURN(const Value object, Eval(*expr.args[0], scope));
      RETURN_AT(expr.pos, GetAttr(object, expr.name));
    }
    case ExprKind::kGetItem: {
      ASSIGN_OR_RETURN(const Value object, Eval(*expr.args[0], scope));
      ASSIGN_OR_RETURN(const Value key, Eval(*expr.args[1], scope));
      RETURN_AT(expr.pos, GetItem(object, key));
    }
    case ExprKind::kSlice: {
      ASSIGN_OR_RETURN(const Value object, Eval(*expr.args[0], scope));
      Value bounds[3];
      for (int i = 0; i < 3; ++i) {
        if (expr.args[i + 1] != nullptr) {
          ASSIGN_OR_RETURN(bounds[i], Eval(*expr.args[i + 1], scope));
        }
      }
      RETURN_AT(expr.pos, GetSlice(object, bounds[0], bounds[1], bounds[2]));
    }
    case ExprKind::kCall:
      return Call(expr, scope);
    case ExprKind::kMethod: {
      ASSIGN_OR_RETURN(const Value object, Eval(*expr.args[0], scope));
      ASSIGN_OR_RETURN(const CallArgs args, EvalArgs(expr, 1, scope));
      RETURN_AT(expr.pos, CallMethod(object, expr.name, args));
    }
    case ExprKind::kFilter: {
      ASSIGN_OR_RETURN(const Value input, Eval(*expr.args[0], scope));
      ASSIGN_OR_RETURN(const CallArgs args, EvalArgs(expr, 1, scope));
      RETURN_AT(expr.pos, expr.filter(input, args));
    }
    case ExprKind::kTest: {
      ASSIGN_OR_RETURN(const Value input, Eval(*expr.args[0], scope));
      ASSIGN_OR_RETURN(const CallArgs args, EvalArgs(expr, 1, scope));
      auto result = expr.test(input, args);
      if (!result.ok()) return At(expr.pos, result.status());
      return Value::Bool(*result != expr.negated);
    }
    case ExprKind::kNot: {
      ASSIGN_OR_RETURN(const Value v, Eval(*expr.args[0], scope));
      return Value::Bool(!Truthy(v));
    }
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      ASSIGN_OR_RETURN(const Value v, Eval(*expr.args[0], scope));
      RETURN_AT(expr.pos, UnaryOp(expr.kind == ExprKind::kNeg ? "-" : "+", v));
    }
    case ExprKind::kBinary: {
      ASSIGN_OR_RETURN(const Value a, Eval(*expr.args[0], scope));
      ASSIGN_OR_RETURN(const Value b, Eval(*expr.args[1], scope));
      RETURN_AT(expr.pos, BinaryOp(expr.name, a, b));
    }
    case ExprKind::kCompare:
      return EvalCompare(expr, scope);
    case ExprKind::kAnd:
    case ExprKind::kOr: {
      ASSIGN_OR_RETURN(Value a, Eval(*expr.args[0], scope));
      if (Truthy(a) == (expr.kind == ExprKind::kOr)) return a;
      return Eval(*expr.args[1], scope);
    }
    case ExprKind::kCondition: {
      ASSIGN_OR_RETURN(const Value cond, Eval(*expr.args[1], scope));
      if (Truthy(cond)) return Eval(*expr.args[0], scope);
      if (expr.args[2] == nullptr)
        return Value::Undefined(
            "the inline if-expression evaluated to false and no else section was defined.");
      return Eval(*expr.args[2], scope);
    }
  }
  return Value();
}

absl::StatusOr<Value> Interpreter::EvalCompare(const Expr& expr, const Scope& scope) {
  ASSIGN_OR_RETURN(Value left, Eval(*expr.args[0], scope));
  for (size_t i = 0; i < expr.ops.size(); ++i) {
    ASSIGN_OR_RETURN(Value right, Eval(*expr.args[i + 1], scope));
    const std::string& op = expr.ops[i];
    bool result;
    if (op == "==" || op == "!=") {
      result = Equal(left, right) == (op == "==");
    } else if (op == "in" || op == "notin") {
      auto contains = Contains(right, left);
      if (!contains.ok()) return At(expr.pos, contains.status());
      result = *contains == (op == "in");
    } else {
      if (left.is_undefined()) return At(expr.pos, UndefinedError(left));
      if (right.is_undefined()) return At(expr.pos, UndefinedError(right));
      auto c = Compare(left, right);
      if (!c.ok()) {
        return ErrorAt(expr.pos, absl::StrCat("'", op, "' not supported between instances of '",
                                              TypeName(left), "' and '", TypeName(right), "'"));
      }
      result = op == "<" ? *c < 0 : op == "<=" ? *c <= 0 : op == ">" ? *c > 0 : *c >= 0;
    }
    if (!result) return Value::Bool(false);
    left = std::move(right);
  }
  return Value::Bool(true);
}

absl::StatusOr<Value> Interpreter::Call(const Expr& expr, const Scope& scope) {
  const Value callee = Lookup(expr.name, scope);
  ASSIGN_OR_RETURN(const CallArgs args, EvalArgs(expr, 0, scope));
  if (callee.kind() == Value::Kind::kMacro) return CallMacro(*callee.macro(), args, expr.pos);
  if (callee.kind() == Value::Kind::kBuiltin) return CallBuiltin(callee.builtin(), args, expr.pos);
  if (callee.is_undefined()) return At(expr.pos, UndefinedError(callee));
  return ErrorAt(expr.pos, absl::StrCat("'", TypeName(callee), "' object is not callable"));
}

absl::StatusOr<Value> Interpreter::CallMacro(const Stmt& macro, const CallArgs& args, Pos pos) {
  if (call_depth_ >= kMaxCallDepth) return ErrorAt(pos, "macro calls are nested too deeply");
  Scope scope;
  scope.parent = root_;
  std::vector<bool> used_keywords(args.keywords.size(), false);
  for (size_t i = 0; i < macro.params.size(); ++i) {
    const auto& [name, default_expr] = macro.params[i];
    Value value = Value::Undefined(absl::StrCat("parameter '", name, "' was not provided"));
    bool bound = false;
    if (i < args.positional.size()) {
      value = args.positional[i];
      bound = true;
    }
    for (size_t k = 0; k < args.keywords.size(); ++k) {
      if (args.keywords[k].first != name) continue;
      if (bound)
        return ErrorAt(
            pos, absl::StrCat("macro '", macro.text, "' got multiple values for argument '", name, "'"));
      value = args.keywords[k].second;
      used_keywords[k] = bound = true;
    }
    if (!bound && default_expr != nullptr) {
      ASSIGN_OR_RETURN(value, Eval(*default_expr, scope));
    }
    scope.vars[name] = std::move(value);
  }
  std::vector<Value> extra;
  for (size_t i = macro.params.size(); i < args.positional.size(); ++i) extra.push_back(args.positional[i]);
  if (!extra.empty() && !macro.uses_varargs) {
    return ErrorAt(pos, absl::StrCat("macro '", macro.text, "' takes not more than ", macro.params.size(),
                                     " argument(s)"));
  }
  if (macro.uses_varargs) scope.vars["varargs"] = Value::Tuple(std::move(extra));
  auto kwargs = std::make_shared<DictData>();
  for (size_t k = 0; k < args.keywords.size(); ++k) {
    if (used_keywords[k]) continue;
    if (!macro.uses_kwargs) {
      return ErrorAt(pos, absl::StrCat("macro '", macro.text, "' takes no keyword argument '",
                                       args.keywords[k].first, "'"));
    }
    kwargs->Set(args.keywords[k].first, args.keywords[k].second);
  }
  if (macro.uses_kwargs) scope.vars["kwargs"] = Value::Dict(std::move(kwargs));
  std::string out;
  ++call_depth_;
  auto flow = ExecList(macro.body, scope, out);
  --call_depth_;
  RETURN_IF_ERROR(flow.status());
  return Value::String(std::move(out));
}

absl::StatusOr<Value> Interpreter::CallBuiltin(Builtin builtin, const CallArgs& args, Pos pos) {
  switch (builtin) {
    case Builtin::kRaiseException: {
      auto bound = BindArgs("raise_exception", args, {"message"});
      if (!bound.ok()) return At(pos, bound.status());
      return absl::InvalidArgumentError(Str((*bound)[0]));
    }
    case Builtin::kStrftimeNow: {
      auto bound = BindArgs("strftime_now", args, {"format"});
      if (!bound.ok()) return At(pos, bound.status());
      if (!(*bound)[0].is_string()) return ErrorAt(pos, "strftime_now() argument must be str");
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buf[512];
      const size_t n = std::strftime(buf, sizeof(buf), (*bound)[0].as_string().c_str(), &local);
      return Value::String(std::string(buf, n));
    }
    case Builtin::kRange: {
      if (!args.keywords.empty() || args.positional.empty() || args.positional.size() > 3) {
        return ErrorAt(pos, "range() takes 1 to 3 positional arguments");
      }
      for (const Value& v : args.positional) {
        if (!v.is_int())
          return ErrorAt(pos, absl::StrCat("'", TypeName(v), "' object cannot be interpreted as an integer"));
      }
      const auto& a = args.positional;
      const int64_t start = a.size() == 1 ? 0 : a[0].as_int();
      const int64_t stop = a.size() == 1 ? a[0].as_int() : a[1].as_int();
      const int64_t step = a.size() == 3 ? a[2].as_int() : 1;
      if (step == 0) return ErrorAt(pos, "range() arg 3 must not be zero");
      std::vector<Value> items;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (static_cast<int64_t>(items.size()) >= kMaxRange) {
          return ErrorAt(pos, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        }
        items.push_back(Value::Int(i));
      }
      return Value::List(std::move(items));
    }
    case Builtin::kNamespace:
    case Builtin::kDict: {
      auto dict = std::make_shared<DictData>();
      if (args.positional.size() > 1 || (args.positional.size() == 1 && !args.positional[0].is_dict())) {
        return ErrorAt(pos, "namespace() / dict() take keyword arguments or one dict");
      }
      if (!args.positional.empty()) dict->items = args.positional[0].dict().items;
      for (const auto& [key, value] : args.keywords) dict->Set(key, value);
      return builtin == Builtin::kDict ? Value::Dict(std::move(dict)) : Value::Namespace(std::move(dict));
    }
  }
  return Value();
}

}  // namespace tessera::jinja
