// The syntax tree of a parsed chat template: expressions and statements, each carrying its source position.
// Filters, tests and methods are resolved to their implementations at parse time.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/chat_template/value.h"

namespace tessera::jinja {

struct Pos {
  int line = 1;
  int column = 1;
};

// INVALID_ARGUMENT "chat template: line L, column C: message".
[[nodiscard]] absl::Status ErrorAt(Pos pos, std::string_view message);

// Positional and keyword arguments of a filter, test, method or function call, evaluated.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
};

using FilterFn = absl::StatusOr<Value> (*)(const Value& input, const CallArgs& args);
using TestFn = absl::StatusOr<bool> (*)(const Value& input, const CallArgs& args);

enum class ExprKind {
  kLiteral,    // literal
  kName,       // name
  kList,       // args: elements
  kTuple,      // args: elements
  kDict,       // args: key0, value0, key1, value1, ...
  kGetAttr,    // args[0].name
  kGetItem,    // args[0][args[1]]
  kSlice,      // args[0][args[1]:args[2]:args[3]] (null parts allowed)
  kCall,       // name(args, kwargs): a macro or a global function
  kMethod,     // args[0].name(args[1:], kwargs)
  kFilter,     // args[0] | name(args[1:], kwargs)
  kTest,       // args[0] is [not] name(args[1:], kwargs)
  kNot,        // not args[0]
  kNeg,        // -args[0]
  kPos,        // +args[0]
  kBinary,     // args[0] op args[1]; op in + - * / // % ** ~
  kCompare,    // args[0] ops[0] args[1] ops[1] args[2] ...; ops in == != < <= > >= in notin
  kAnd,        // args[0] and args[1]
  kOr,         // args[0] or args[1]
  kCondition,  // args[0] if args[1] else args[2] (args[2] may be null)
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind = ExprKind::kLiteral;
  Pos pos;
  std::string name;  // variable, attribute, filter, test, method, function or operator
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare
  bool negated = false;          // kTest: `is not`
  FilterFn filter = nullptr;
  TestFn test = nullptr;
};

enum class StmtKind {
  kText,      // text
  kOutput,    // {{ expr }}
  kIf,        // branches
  kFor,       // for targets in expr [if cond]: body [else: else_body]
  kSet,       // set targets = expr, or set targets[0].attr = expr (namespace)
  kSetBlock,  // set targets[0]: body
  kMacro,     // macro name(params): body
  kBreak,
  kContinue,
  kScope,  // body run in place (generation blocks)
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using StmtList = std::vector<StmtPtr>;

struct Stmt {
  StmtKind kind = StmtKind::kText;
  Pos pos;
  std::string text;                  // kText; kMacro: the macro's name
  ExprPtr expr;                      // kOutput, kFor (iterable), kSet (value)
  ExprPtr cond;                      // kFor: loop filter
  std::vector<std::string> targets;  // kFor, kSet, kSetBlock
  std::string attr;                  // kSet: namespace attribute
  std::vector<std::pair<ExprPtr, StmtList>>
      branches;  // kIf: (condition, body); the else branch has no condition
  StmtList body;
  StmtList else_body;
  std::vector<std::pair<std::string, ExprPtr>> params;  // kMacro: name and default (may be null)
  bool uses_varargs = false;                            // kMacro: the body refers to `varargs` / `kwargs`
  bool uses_kwargs = false;
};

}  // namespace tessera::jinja
