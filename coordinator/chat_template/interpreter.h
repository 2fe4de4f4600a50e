// Renders a parsed chat template: executes statements and evaluates expressions with jinja2's scoping
// (a for-loop iteration and a macro call get their own scope; `if` does not), loop variables, macros,
// namespaces, break / continue and the environment's global functions.
#pragma once

#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/ast.h"
#include "coordinator/chat_template/value.h"

namespace tessera::jinja {

class Interpreter {
 public:
  // `context` is the dict of render arguments (messages, add_generation_prompt, ...).
  explicit Interpreter(const DictData& context) : context_(context) {}

  // Renders `body` into `out`. Errors: INVALID_ARGUMENT; raise_exception(msg) yields exactly `msg`, other
  // runtime errors name the template's line:column.
  [[nodiscard]] absl::Status Render(const StmtList& body, std::string& out);

 private:
  struct Scope {
    std::unordered_map<std::string, Value> vars;
    const Scope* parent = nullptr;
  };
  enum class Flow { kNormal, kBreak, kContinue };

  absl::StatusOr<Flow> ExecList(const StmtList& body, Scope& scope, std::string& out);
  absl::StatusOr<Flow> Exec(const Stmt& stmt, Scope& scope, std::string& out);
  absl::StatusOr<Flow> ExecFor(const Stmt& stmt, Scope& scope, std::string& out);
  absl::Status Assign(const std::vector<std::string>& targets, const Value& value, Scope& scope, Pos pos);
  absl::StatusOr<Value> Eval(const Expr& expr, const Scope& scope);
  absl::StatusOr<Value> EvalCompare(const Expr& expr, const Scope& scope);
  absl::StatusOr<CallArgs> EvalArgs(const Expr& expr, size_t first_arg, const Scope& scope);
  absl::StatusOr<Value> Call(const Expr& expr, const Scope& scope);
  absl::StatusOr<Value> CallMacro(const Stmt& macro, const CallArgs& args, Pos pos);
  absl::StatusOr<Value> CallBuiltin(Builtin builtin, const CallArgs& args, Pos pos);
  Value Lookup(const std::string& name, const Scope& scope) const;

  const DictData& context_;
  const Scope* root_ = nullptr;
  int call_depth_ = 0;
};

}  // namespace tessera::jinja
