#include "coordinator/chat_template/parser.h"

#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/builtins.h"
#include "coordinator/chat_template/parser_internal.h"
#include "core/status_macros.h"

namespace tessera::jinja {
namespace {

bool IsKnownUnsupportedTag(std::string_view tag) {
  for (std::string_view t : {"include", "extends", "block", "call", "filter", "import", "from", "with",
                             "autoescape", "trans", "do", "endblock", "endcall", "endfilter", "endwith"}) {
    if (tag == t) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<StmtList> Parse(std::vector<Token> tokens) {
  return Parser(std::move(tokens)).ParseTemplate();
}

absl::StatusOr<StmtList> Parser::ParseTemplate() {
  ASSIGN_OR_RETURN(StmtList body, ParseBody({}, nullptr, Pos{}, ""));
  for (const auto& [name, pos] : calls_) {
    if (!FindGlobalFunction(name) && macros_.count(name) == 0) {
      return ErrorAt(pos, absl::StrCat("unknown function '", name, "'"));
    }
  }
  return body;
}

absl::Status Parser::ExpectBlockEnd() {
  if (Peek().type != TokenType::kBlockEnd) return Unexpected("end of statement '%}'");
  Next();
  return absl::OkStatus();
}

absl::StatusOr<StmtList> Parser::ParseBody(std::initializer_list<std::string_view> ends,
                                           std::string* found_end, Pos opener, std::string_view opener_name) {
  RETURN_IF_ERROR(Deeper());
  DepthGuard guard(depth_);
  StmtList body;
  while (true) {
    const Token& token = Peek();
    switch (token.type) {
      case TokenType::kEof: {
        if (ends.size() == 0) return body;
        std::string expected;
        for (std::string_view end : ends) {
          absl::StrAppend(&expected, expected.empty() ? "" : " or ", "'",
                          absl::string_view(end.data(), end.size()), "'");
        }
        return ErrorAt(opener, absl::StrCat("unexpected end of template: '",
                                            absl::string_view(opener_name.data(), opener_name.size()),
                                            "' is not closed (expected ", expected, ")"));
      }
      case TokenType::kData: {
        auto stmt = std::make_unique<Stmt>();
        stmt->kind = StmtKind::kText;
        stmt->pos = token.pos;
        stmt->text = Next().text;
        body.push_back(std::move(stmt));
        break;
      }
      case TokenType::kVariableBegin: {
        auto stmt = std::make_unique<Stmt>();
        stmt->kind = StmtKind::kOutput;
        stmt->pos = Next().pos;
        ASSIGN_OR_RETURN(stmt->expr, ParseTuple());
        if (Peek().type != TokenType::kVariableEnd) return Unexpected("end of expression '}}'");
        Next();
        body.push_back(std::move(stmt));
        break;
      }
      case TokenType::kBlockBegin: {
        const Pos pos = Next().pos;
        if (Peek().type != TokenType::kName) return Unexpected("a tag name");
        const std::string tag = Peek().text;
        for (std::string_view end : ends) {
          if (tag == end) {
            Next();
            *found_end = tag;
            return body;
          }
        }
        if (ends.size() > 0 && (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif")) {
          return ErrorAt(Peek().pos,
                         absl::StrCat("unexpected tag '", tag, "': '",
                                      absl::string_view(opener_name.data(), opener_name.size()), "' at line ",
                                      opener.line, ", column ", opener.column, " is not closed"));
        }
        Next();
        ASSIGN_OR_RETURN(StmtPtr stmt, ParseStatement(tag, pos));
        body.push_back(std::move(stmt));
        break;
      }
      default:
        return Unexpected("text or a tag");
    }
  }
}

absl::StatusOr<StmtPtr> Parser::ParseStatement(const std::string& tag, Pos pos) {
  if (tag == "if") return ParseIf(pos);
  if (tag == "for") return ParseFor(pos);
  if (tag == "set") return ParseSet(pos);
  if (tag == "macro") return ParseMacro(pos);
  auto stmt = std::make_unique<Stmt>();
  stmt->pos = pos;
  if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0)
      return ErrorAt(tokens_[index_ - 1].pos, absl::StrCat("'", tag, "' outside of a loop"));
    stmt->kind = tag == "break" ? StmtKind::kBreak : StmtKind::kContinue;
    RETURN_IF_ERROR(ExpectBlockEnd());
    return stmt;
  }
  if (tag == "generation") {  // Hugging Face's AssistantTracker block: rendered in place
    stmt->kind = StmtKind::kScope;
    RETURN_IF_ERROR(ExpectBlockEnd());
    std::string end;
    ASSIGN_OR_RETURN(stmt->body, ParseBody({"endgeneration"}, &end, pos, tag));
    RETURN_IF_ERROR(ExpectBlockEnd());
    return stmt;
  }
  const Pos tag_pos = tokens_[index_ - 1].pos;  // the tag's name
  if (IsKnownUnsupportedTag(tag)) return ErrorAt(tag_pos, absl::StrCat("unsupported tag '", tag, "'"));
  if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif") {
    return ErrorAt(tag_pos, absl::StrCat("unexpected tag '", tag, "'"));
  }
  return ErrorAt(tag_pos, absl::StrCat("unknown tag '", tag, "'"));
}

absl::StatusOr<StmtPtr> Parser::ParseIf(Pos pos) {
  auto stmt = std::make_unique<Stmt>();
  stmt->kind = StmtKind::kIf;
  stmt->pos = pos;
  ASSIGN_OR_RETURN(ExprPtr cond, ParseTuple());
  RETURN_IF_ERROR(ExpectBlockEnd());
  while (true) {
    std::string end;
    ASSIGN_OR_RETURN(StmtList body, ParseBody({"elif", "else", "endif"}, &end, pos, "if"));
    stmt->branches.emplace_back(std::move(cond), std::move(body));
    if (end == "elif") {
      ASSIGN_OR_RETURN(cond, ParseTuple());
      RETURN_IF_ERROR(ExpectBlockEnd());
      continue;
    }
    RETURN_IF_ERROR(ExpectBlockEnd());
    if (end == "else") {
      ASSIGN_OR_RETURN(StmtList else_body, ParseBody({"endif"}, &end, pos, "if"));
      RETURN_IF_ERROR(ExpectBlockEnd());
      stmt->branches.emplace_back(nullptr, std::move(else_body));
    }
    return stmt;
  }
}

absl::StatusOr<StmtPtr> Parser::ParseFor(Pos pos) {
  auto stmt = std::make_unique<Stmt>();
  stmt->kind = StmtKind::kFor;
  stmt->pos = pos;
  const bool parenthesized = IsOp("(");
  if (parenthesized) Next();
  while (true) {
    ASSIGN_OR_RETURN(std::string target, ExpectName("a loop variable"));
    stmt->targets.push_back(std::move(target));
    if (!IsOp(",")) break;
    Next();
    if (parenthesized && IsOp(")")) break;
  }
  if (parenthesized) RETURN_IF_ERROR(Expect(")"));
  if (!IsName("in")) return Unexpected("'in'");
  Next();
  ASSIGN_OR_RETURN(stmt->expr, ParseOr());
  if (IsName("if")) {
    Next();
    ASSIGN_OR_RETURN(stmt->cond, ParseExpression());
  }
  if (IsName("recursive")) return ErrorAt(Peek().pos, "unsupported recursive for loop");
  RETURN_IF_ERROR(ExpectBlockEnd());
  ++loop_depth_;
  std::string end;
  auto body = ParseBody({"endfor", "else"}, &end, pos, "for");
  --loop_depth_;
  if (!body.ok()) return body.status();
  stmt->body = std::move(body).value();
  RETURN_IF_ERROR(ExpectBlockEnd());
  if (end == "else") {
    ASSIGN_OR_RETURN(stmt->else_body, ParseBody({"endfor"}, &end, pos, "for"));
    RETURN_IF_ERROR(ExpectBlockEnd());
  }
  return stmt;
}

absl::StatusOr<StmtPtr> Parser::ParseSet(Pos pos) {
  auto stmt = std::make_unique<Stmt>();
  stmt->kind = StmtKind::kSet;
  stmt->pos = pos;
  ASSIGN_OR_RETURN(std::string target, ExpectName("a variable name"));
  stmt->targets.push_back(std::move(target));
  if (IsOp(".")) {
    Next();
    ASSIGN_OR_RETURN(stmt->attr, ExpectName("an attribute name"));
  } else {
    while (IsOp(",")) {
      Next();
      ASSIGN_OR_RETURN(std::string more, ExpectName("a variable name"));
      stmt->targets.push_back(std::move(more));
    }
  }
  if (IsOp("=")) {
    Next();
    ASSIGN_OR_RETURN(stmt->expr, ParseTuple());
    RETURN_IF_ERROR(ExpectBlockEnd());
    return stmt;
  }
  if (IsOp("|")) return ErrorAt(Peek().pos, "unsupported filtered block set");
  if (!stmt->attr.empty() || stmt->targets.size() != 1) return Unexpected("'='");
  RETURN_IF_ERROR(ExpectBlockEnd());
  stmt->kind = StmtKind::kSetBlock;
  std::string end;
  ASSIGN_OR_RETURN(stmt->body, ParseBody({"endset"}, &end, pos, "set"));
  RETURN_IF_ERROR(ExpectBlockEnd());
  return stmt;
}

absl::StatusOr<StmtPtr> Parser::ParseMacro(Pos pos) {
  auto stmt = std::make_unique<Stmt>();
  stmt->kind = StmtKind::kMacro;
  stmt->pos = pos;
  ASSIGN_OR_RETURN(stmt->text, ExpectName("a macro name"));
  RETURN_IF_ERROR(Expect("("));
  while (!IsOp(")")) {
    if (!stmt->params.empty()) RETURN_IF_ERROR(Expect(","));
    if (IsOp(")")) break;
    ASSIGN_OR_RETURN(std::string param, ExpectName("a parameter name"));
    ExprPtr default_value;
    if (IsOp("=")) {
      Next();
      ASSIGN_OR_RETURN(default_value, ParseExpression());
    } else if (!stmt->params.empty() && stmt->params.back().second != nullptr) {
      return ErrorAt(Peek().pos, "parameter without a default follows parameters with defaults");
    }
    stmt->params.emplace_back(std::move(param), std::move(default_value));
  }
  Next();  // ')'
  RETURN_IF_ERROR(ExpectBlockEnd());
  macros_.insert(stmt->text);
  Stmt* outer_macro = current_macro_;
  const int outer_loop_depth = loop_depth_;
  current_macro_ = stmt.get();
  loop_depth_ = 0;
  std::string end;
  auto body = ParseBody({"endmacro"}, &end, pos, "macro");
  current_macro_ = outer_macro;
  loop_depth_ = outer_loop_depth;
  if (!body.ok()) return body.status();
  stmt->body = std::move(body).value();
  RETURN_IF_ERROR(ExpectBlockEnd());
  return stmt;
}

}  // namespace tessera::jinja
