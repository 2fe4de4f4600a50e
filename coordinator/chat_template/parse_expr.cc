// Expression grammar of the chat-template parser (jinja2's parse_* functions and precedence).
#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/builtins.h"
#include "coordinator/chat_template/parser_internal.h"
#include "core/status_macros.h"

namespace tessera::jinja {
namespace {

constexpr int kMaxDepth = 200;

std::string Describe(const Token& token) {
  switch (token.type) {
    case TokenType::kEof:
      return "end of template";
    case TokenType::kVariableEnd:
    case TokenType::kBlockEnd:
      return "end of tag";
    case TokenType::kData:
      return "text";
    case TokenType::kString:
      return "string";
    case TokenType::kInteger:
    case TokenType::kFloat:
      return "number";
    default:
      return absl::StrCat("'", token.text, "'");
  }
}

bool IsTupleEnd(const Token& token) {
  return token.type == TokenType::kVariableEnd || token.type == TokenType::kBlockEnd ||
         (token.type == TokenType::kOperator &&
          (token.text == ")" || token.text == "]" || token.text == "}"));
}

}  // namespace

absl::Status Parser::Expect(std::string_view op) {
  if (!IsOp(op)) return Unexpected(absl::StrCat("'", absl::string_view(op.data(), op.size()), "'"));
  Next();
  return absl::OkStatus();
}

absl::StatusOr<std::string> Parser::ExpectName(std::string_view what) {
  if (Peek().type != TokenType::kName) return Unexpected(what);
  return Next().text;
}

absl::Status Parser::Unexpected(std::string_view expected) const {
  return ErrorAt(Peek().pos, absl::StrCat("expected ", absl::string_view(expected.data(), expected.size()),
                                          ", got ", Describe(Peek())));
}

absl::Status Parser::Deeper() {
  if (++depth_ > kMaxDepth) return ErrorAt(Peek().pos, "template is nested too deeply");
  return absl::OkStatus();
}

absl::StatusOr<ExprPtr> Parser::ParseTuple() {
  const Pos pos = Peek().pos;
  ASSIGN_OR_RETURN(ExprPtr first, ParseExpression());
  if (!IsOp(",")) return first;
  ExprPtr tuple = MakeExpr(ExprKind::kTuple, pos);
  tuple->args.push_back(std::move(first));
  while (IsOp(",")) {
    Next();
    if (IsTupleEnd(Peek())) break;
    ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
    tuple->args.push_back(std::move(item));
  }
  return tuple;
}

absl::StatusOr<ExprPtr> Parser::ParseExpression() {
  RETURN_IF_ERROR(Deeper());
  DepthGuard guard(depth_);
  ASSIGN_OR_RETURN(ExprPtr node, ParseOr());
  while (IsName("if")) {
    ExprPtr cond = MakeExpr(ExprKind::kCondition, Next().pos);
    ASSIGN_OR_RETURN(ExprPtr test, ParseOr());
    ExprPtr otherwise;
    if (IsName("else")) {
      Next();
      ASSIGN_OR_RETURN(otherwise, ParseExpression());
    }
    cond->args.push_back(std::move(node));
    cond->args.push_back(std::move(test));
    cond->args.push_back(std::move(otherwise));
    node = std::move(cond);
  }
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParseOr() {
  ASSIGN_OR_RETURN(ExprPtr node, ParseAnd());
  while (IsName("or")) {
    ExprPtr op = MakeExpr(ExprKind::kOr, Next().pos);
    ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
    op->args.push_back(std::move(node));
    op->args.push_back(std::move(right));
    node = std::move(op);
  }
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParseAnd() {
  ASSIGN_OR_RETURN(ExprPtr node, ParseNot());
  while (IsName("and")) {
    ExprPtr op = MakeExpr(ExprKind::kAnd, Next().pos);
    ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
    op->args.push_back(std::move(node));
    op->args.push_back(std::move(right));
    node = std::move(op);
  }
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParseNot() {
  if (!IsName("not")) return ParseCompare();
  RETURN_IF_ERROR(Deeper());
  DepthGuard guard(depth_);
  ExprPtr op = MakeExpr(ExprKind::kNot, Next().pos);
  ASSIGN_OR_RETURN(ExprPtr operand, ParseNot());
  op->args.push_back(std::move(operand));
  return op;
}

absl::StatusOr<ExprPtr> Parser::ParseCompare() {
  const Pos pos = Peek().pos;
  ASSIGN_OR_RETURN(ExprPtr first, ParseAdditive());
  ExprPtr compare;
  while (true) {
    std::string op;
    if (Peek().type == TokenType::kOperator &&
        (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" || Peek().text == "<=" ||
         Peek().text == ">" || Peek().text == ">=")) {
      op = Next().text;
    } else if (IsName("in")) {
      Next();
      op = "in";
    } else if (IsName("not") && IsName("in", 1)) {
      Next();
      Next();
      op = "notin";
    } else {
      break;
    }
    ASSIGN_OR_RETURN(ExprPtr operand, ParseAdditive());
    if (!compare) {
      compare = MakeExpr(ExprKind::kCompare, pos);
      compare->args.push_back(std::move(first));
    }
    compare->ops.push_back(op);
    compare->args.push_back(std::move(operand));
  }
  return compare ? std::move(compare) : std::move(first);
}

absl::StatusOr<ExprPtr> Parser::ParseAdditive() {
  ASSIGN_OR_RETURN(ExprPtr node, ParseConcat());
  while (IsOp("+") || IsOp("-")) {
    const Token& token = Next();
    ExprPtr op = MakeExpr(ExprKind::kBinary, token.pos);
    op->name = token.text;
    ASSIGN_OR_RETURN(ExprPtr right, ParseConcat());
    op->args.push_back(std::move(node));
    op->args.push_back(std::move(right));
    node = std::move(op);
  }
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParseConcat() {
  ASSIGN_OR_RETURN(ExprPtr node, ParseMultiplicative());
  while (IsOp("~")) {
    ExprPtr op = MakeExpr(ExprKind::kBinary, Next().pos);
    op->name.assign(1, '~');
    ASSIGN_OR_RETURN(ExprPtr right, ParseMultiplicative());
    op->args.push_back(std::move(node));
    op->args.push_back(std::move(right));
    node = std::move(op);
  }
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParseMultiplicative() {
  ASSIGN_OR_RETURN(ExprPtr node, ParsePow());
  while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
    const Token& token = Next();
    ExprPtr op = MakeExpr(ExprKind::kBinary, token.pos);
    op->name = token.text;
    ASSIGN_OR_RETURN(ExprPtr right, ParsePow());
    op->args.push_back(std::move(node));
    op->args.push_back(std::move(right));
    node = std::move(op);
  }
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParsePow() {
  ASSIGN_OR_RETURN(ExprPtr node, ParseUnary(true));
  while (IsOp("**")) {
    ExprPtr op = MakeExpr(ExprKind::kBinary, Next().pos);
    op->name.assign(2, '*');
    ASSIGN_OR_RETURN(ExprPtr right, ParseUnary(true));
    op->args.push_back(std::move(node));
    op->args.push_back(std::move(right));
    node = std::move(op);
  }
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParseUnary(bool with_filter) {
  RETURN_IF_ERROR(Deeper());
  DepthGuard guard(depth_);
  ExprPtr node;
  if (IsOp("-") || IsOp("+")) {
    const ExprKind kind = IsOp("-") ? ExprKind::kNeg : ExprKind::kPos;
    node = MakeExpr(kind, Next().pos);
    ASSIGN_OR_RETURN(ExprPtr operand, ParseUnary(false));
    node->args.push_back(std::move(operand));
  } else {
    ASSIGN_OR_RETURN(node, ParsePrimary());
  }
  ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
  if (with_filter) return ParseFilterExpr(std::move(node));
  return node;
}

absl::StatusOr<ExprPtr> Parser::ParsePrimary() {
  const Token& token = Peek();
  const Pos pos = token.pos;
  switch (token.type) {
    case TokenType::kName: {
      const std::string name = Next().text;
      ExprPtr node = MakeExpr(ExprKind::kLiteral, pos);
      if (name == "true" || name == "True") {
        node->literal = Value::Bool(true);
      } else if (name == "false" || name == "False") {
        node->literal = Value::Bool(false);
      } else if (name == "none" || name == "None") {
        node->literal = Value::None();
      } else {
        node->kind = ExprKind::kName;
        node->name = name;
        if (current_macro_ != nullptr && name == "varargs") current_macro_->uses_varargs = true;
        if (current_macro_ != nullptr && name == "kwargs") current_macro_->uses_kwargs = true;
      }
      return node;
    }
    case TokenType::kString: {
      std::string text;
      while (Peek().type == TokenType::kString) text += Next().text;
      ExprPtr node = MakeExpr(ExprKind::kLiteral, pos);
      node->literal = Value::String(std::move(text));
      return node;
    }
    case TokenType::kInteger:
    case TokenType::kFloat: {
      ExprPtr node = MakeExpr(ExprKind::kLiteral, pos);
      node->literal =
          token.type == TokenType::kInteger ? Value::Int(token.int_value) : Value::Float(token.float_value);
      Next();
      return node;
    }
    default:
      break;
  }
  if (IsOp("(")) {
    Next();
    if (IsOp(")")) {
      Next();
      return MakeExpr(ExprKind::kTuple, pos);
    }
    ASSIGN_OR_RETURN(ExprPtr inner, ParseExpression());
    if (IsOp(",")) {
      ExprPtr tuple = MakeExpr(ExprKind::kTuple, pos);
      tuple->args.push_back(std::move(inner));
      while (IsOp(",")) {
        Next();
        if (IsOp(")")) break;
        ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
        tuple->args.push_back(std::move(item));
      }
      inner = std::move(tuple);
    }
    RETURN_IF_ERROR(Expect(")"));
    return inner;
  }
  if (IsOp("[") || IsOp("{")) {
    const bool is_list = IsOp("[");
    Next();
    ExprPtr node = MakeExpr(is_list ? ExprKind::kList : ExprKind::kDict, pos);
    const std::string close = is_list ? "]" : "}";
    while (!IsOp(close)) {
      if (!node->args.empty()) RETURN_IF_ERROR(Expect(","));
      if (IsOp(close)) break;
      ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
      node->args.push_back(std::move(item));
      if (!is_list) {
        RETURN_IF_ERROR(Expect(":"));
        ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
        node->args.push_back(std::move(value));
      }
    }
    Next();
    return node;
  }
  return Unexpected("an expression");
}

absl::StatusOr<ExprPtr> Parser::ParsePostfix(ExprPtr node) {
  while (true) {
    if (IsOp(".")) {
      const Pos pos = Next().pos;
      if (Peek().type == TokenType::kInteger) {
        ExprPtr item = MakeExpr(ExprKind::kGetItem, pos);
        ExprPtr key = MakeExpr(ExprKind::kLiteral, Peek().pos);
        key->literal = Value::Int(Next().int_value);
        item->args.push_back(std::move(node));
        item->args.push_back(std::move(key));
        node = std::move(item);
        continue;
      }
      ASSIGN_OR_RETURN(std::string attr, ExpectName("an attribute name"));
      ExprPtr get = MakeExpr(ExprKind::kGetAttr, pos);
      get->name = std::move(attr);
      get->args.push_back(std::move(node));
      node = std::move(get);
    } else if (IsOp("[")) {
      ASSIGN_OR_RETURN(node, ParseSubscript(std::move(node)));
    } else if (IsOp("(")) {
      const Pos pos = Next().pos;
      ExprPtr call;
      if (node->kind == ExprKind::kName) {
        call = MakeExpr(ExprKind::kCall, node->pos);
        call->name = node->name;
        calls_.emplace_back(node->name, node->pos);
      } else if (node->kind == ExprKind::kGetAttr) {
        if (!IsMethodName(node->name)) {
          return ErrorAt(node->pos, absl::StrCat("unsupported method '", node->name, "'"));
        }
        call = MakeExpr(ExprKind::kMethod, node->pos);
        call->name = node->name;
        call->args.push_back(std::move(node->args[0]));
      } else {
        return ErrorAt(pos, "unsupported call: only macros, global functions and methods can be called");
      }
      RETURN_IF_ERROR(ParseCallArgs(*call));
      node = std::move(call);
    } else {
      return node;
    }
  }
}

absl::StatusOr<ExprPtr> Parser::ParseSubscript(ExprPtr node) {
  const Pos pos = Next().pos;  // '['
  ExprPtr parts[3];
  bool is_slice = false;
  if (!IsOp(":")) {
    ASSIGN_OR_RETURN(parts[0], ParseExpression());
  }
  if (IsOp(":")) {
    is_slice = true;
    Next();
    if (!IsOp("]") && !IsOp(":")) {
      ASSIGN_OR_RETURN(parts[1], ParseExpression());
    }
    if (IsOp(":")) {
      Next();
      if (!IsOp("]")) {
        ASSIGN_OR_RETURN(parts[2], ParseExpression());
      }
    }
  }
  RETURN_IF_ERROR(Expect("]"));
  ExprPtr result = MakeExpr(is_slice ? ExprKind::kSlice : ExprKind::kGetItem, pos);
  result->args.push_back(std::move(node));
  result->args.push_back(std::move(parts[0]));
  if (is_slice) {
    result->args.push_back(std::move(parts[1]));
    result->args.push_back(std::move(parts[2]));
  }
  return result;
}

absl::StatusOr<ExprPtr> Parser::ParseFilterExpr(ExprPtr node) {
  while (true) {
    if (IsOp("|")) {
      ASSIGN_OR_RETURN(node, ParseFilter(std::move(node)));
    } else if (IsName("is")) {
      ASSIGN_OR_RETURN(node, ParseTest(std::move(node)));
    } else if (IsOp("(")) {
      return ErrorAt(Peek().pos, "unsupported call of a filter or test result");
    } else {
      return node;
    }
  }
}

absl::StatusOr<ExprPtr> Parser::ParseFilter(ExprPtr node) {
  Next();  // '|'
  const Pos pos = Peek().pos;
  ASSIGN_OR_RETURN(std::string name, ExpectName("a filter name"));
  ExprPtr filter = MakeExpr(ExprKind::kFilter, pos);
  filter->filter = FindFilter(name);
  if (filter->filter == nullptr) return ErrorAt(pos, absl::StrCat("unknown filter '", name, "'"));
  filter->name = std::move(name);
  filter->args.push_back(std::move(node));
  if (IsOp("(")) {
    Next();
    RETURN_IF_ERROR(ParseCallArgs(*filter));
  }
  RETURN_IF_ERROR(CheckCallableNames(*filter));
  return filter;
}

absl::StatusOr<ExprPtr> Parser::ParseTest(ExprPtr node) {
  Next();  // 'is'
  bool negated = false;
  if (IsName("not")) {
    Next();
    negated = true;
  }
  const Pos pos = Peek().pos;
  ASSIGN_OR_RETURN(std::string name, ExpectName("a test name"));
  ExprPtr test = MakeExpr(ExprKind::kTest, pos);
  test->test = FindTest(name);
  if (test->test == nullptr) return ErrorAt(pos, absl::StrCat("unknown test '", name, "'"));
  test->name = std::move(name);
  test->negated = negated;
  test->args.push_back(std::move(node));
  const Token& next = Peek();
  if (IsOp("(")) {
    Next();
    RETURN_IF_ERROR(ParseCallArgs(*test));
  } else if ((next.type == TokenType::kName || next.type == TokenType::kString ||
              next.type == TokenType::kInteger || next.type == TokenType::kFloat || IsOp("[") || IsOp("{")) &&
             !IsName("else") && !IsName("or") && !IsName("and")) {
    if (IsName("is")) return ErrorAt(next.pos, "cannot chain multiple tests with 'is'");
    ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
    ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
    test->args.push_back(std::move(arg));
  }
  return test;
}

absl::Status Parser::ParseCallArgs(Expr& call) {
  bool first = true;
  while (!IsOp(")")) {
    if (!first) RETURN_IF_ERROR(Expect(","));
    first = false;
    if (IsOp(")")) break;
    if (IsOp("*") || IsOp("**")) return ErrorAt(Peek().pos, "unsupported argument unpacking ('*' / '**')");
    if (Peek().type == TokenType::kName && IsOp("=", 1)) {
      std::string key = Next().text;
      Next();
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
      call.kwargs.emplace_back(std::move(key), std::move(value));
      continue;
    }
    if (!call.kwargs.empty()) return ErrorAt(Peek().pos, "positional argument follows keyword argument");
    ASSIGN_OR_RETURN(ExprPtr arg, ParseExpression());
    call.args.push_back(std::move(arg));
  }
  Next();  // ')'
  return absl::OkStatus();
}

// select / reject / selectattr / rejectattr name a test and map names a filter in a string argument: check
// literal names now so that a typo fails at load time.
absl::Status Parser::CheckCallableNames(const Expr& call) {
  size_t test_arg = 0;
  if (call.name == "select" || call.name == "reject") {
    test_arg = 1;
  } else if (call.name == "selectattr" || call.name == "rejectattr") {
    test_arg = 2;
  } else if (call.name == "map" && call.args.size() > 1 && call.args[1]->kind == ExprKind::kLiteral &&
             call.args[1]->literal.is_string()) {
    const std::string& name = call.args[1]->literal.as_string();
    if (FindFilter(name) == nullptr)
      return ErrorAt(call.args[1]->pos, absl::StrCat("unknown filter '", name, "'"));
  }
  if (test_arg > 0 && call.args.size() > test_arg && call.args[test_arg]->kind == ExprKind::kLiteral &&
      call.args[test_arg]->literal.is_string()) {
    const std::string& name = call.args[test_arg]->literal.as_string();
    if (FindTest(name) == nullptr)
      return ErrorAt(call.args[test_arg]->pos, absl::StrCat("unknown test '", name, "'"));
  }
  return absl::OkStatus();
}

}  // namespace tessera::jinja
