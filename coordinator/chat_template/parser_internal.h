// Internal to the chat-template parser: the recursive-descent Parser shared by parser.cc (statements) and
// parse_expr.cc (expressions).
#pragma once

#include <initializer_list>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/chat_template/ast.h"
#include "coordinator/chat_template/lexer.h"

namespace tessera::jinja {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  absl::StatusOr<StmtList> ParseTemplate();

 private:
  // Statements (parser.cc).
  absl::StatusOr<StmtList> ParseBody(std::initializer_list<std::string_view> ends, std::string* found_end,
                                     Pos opener, std::string_view opener_name);
  absl::StatusOr<StmtPtr> ParseStatement(const std::string& tag, Pos pos);
  absl::StatusOr<StmtPtr> ParseIf(Pos pos);
  absl::StatusOr<StmtPtr> ParseFor(Pos pos);
  absl::StatusOr<StmtPtr> ParseSet(Pos pos);
  absl::StatusOr<StmtPtr> ParseMacro(Pos pos);
  absl::Status ExpectBlockEnd();

  // Expressions (parse_expr.cc).
  absl::StatusOr<ExprPtr> ParseTuple();  // an expression, or a tuple of them without parentheses
  absl::StatusOr<ExprPtr> ParseExpression();
  absl::StatusOr<ExprPtr> ParseOr();
  absl::StatusOr<ExprPtr> ParseAnd();
  absl::StatusOr<ExprPtr> ParseNot();
  absl::StatusOr<ExprPtr> ParseCompare();
  absl::StatusOr<ExprPtr> ParseAdditive();
  absl::StatusOr<ExprPtr> ParseConcat();
  absl::StatusOr<ExprPtr> ParseMultiplicative();
  absl::StatusOr<ExprPtr> ParsePow();
  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter);
  absl::StatusOr<ExprPtr> ParsePrimary();
  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseFilter(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseTest(ExprPtr node);
  absl::Status ParseCallArgs(Expr& call);  // after '(' is consumed: args, kwargs and ')'
  absl::Status CheckCallableNames(const Expr& call);

  // Token helpers.
  const Token& Peek(size_t ahead = 0) const { return tokens_[std::min(index_ + ahead, tokens_.size() - 1)]; }
  const Token& Next() { return tokens_[index_ < tokens_.size() - 1 ? index_++ : index_]; }
  bool IsOp(std::string_view op, size_t ahead = 0) const {
    return Peek(ahead).type == TokenType::kOperator && Peek(ahead).text == op;
  }
  bool IsName(std::string_view name, size_t ahead = 0) const {
    return Peek(ahead).type == TokenType::kName && Peek(ahead).text == name;
  }
  absl::Status Expect(std::string_view op);
  absl::StatusOr<std::string> ExpectName(std::string_view what);
  absl::Status Unexpected(std::string_view expected) const;
  absl::Status Deeper();  // guards recursion depth

  static ExprPtr MakeExpr(ExprKind kind, Pos pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }

  std::vector<Token> tokens_;
  size_t index_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;
  Stmt* current_macro_ = nullptr;                   // the macro being parsed, for varargs / kwargs
  std::vector<std::pair<std::string, Pos>> calls_;  // name(...) calls, checked once macros are known
  std::set<std::string> macros_;
};

// Decrements Parser::depth_ on scope exit.
class DepthGuard {
 public:
  explicit DepthGuard(int& depth) : depth_(depth) {}
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;

 private:
  int& depth_;
};

}  // namespace tessera::jinja
