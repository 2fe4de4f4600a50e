// ChatTemplate: load-time rejection of constructs outside the subset (with name and line:column), malformed
// sources, raise_exception, runtime errors naming their position, key order, copies and concurrent renders.
// Rendering itself is checked against Python jinja2 by jinja_compat_test.py and real_templates_test.py.
#include "coordinator/chat_template/chat_template.h"

#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/util/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using Json = nlohmann::ordered_json;

absl::Status ParseStatus(std::string_view source) { return ChatTemplate::Parse(source).status(); }

absl::StatusOr<std::string> Render(std::string_view source, const Json& context = Json::object()) {
  auto parsed = ChatTemplate::Parse(source);
  if (!parsed.ok()) return parsed.status();
  return parsed->Render(context);
}

auto ParseErrorIs(const std::string& text) {
  return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(text));
}

TEST(ChatTemplateTest, RejectsUnsupportedTagsWhenLoadedNamingTagAndPosition) {
  EXPECT_THAT(ParseStatus("a\nb\n    {% include 'x.j2' %}"),
              ParseErrorIs("line 3, column 8: unsupported tag 'include'"));
  EXPECT_THAT(ParseStatus("{% extends 'base' %}"),
              ParseErrorIs("line 1, column 4: unsupported tag 'extends'"));
  EXPECT_THAT(ParseStatus("x{% block body %}{% endblock %}"),
              ParseErrorIs("column 5: unsupported tag 'block'"));
  EXPECT_THAT(ParseStatus("{% call m() %}x{% endcall %}"), ParseErrorIs("unsupported tag 'call'"));
  EXPECT_THAT(ParseStatus("{% filter upper %}x{% endfilter %}"), ParseErrorIs("unsupported tag 'filter'"));
  EXPECT_THAT(ParseStatus("{% import 'm' as m %}"), ParseErrorIs("unsupported tag 'import'"));
  EXPECT_THAT(ParseStatus("{% from 'm' import x %}"), ParseErrorIs("unsupported tag 'from'"));
  EXPECT_THAT(ParseStatus("{% with a = 1 %}{% endwith %}"), ParseErrorIs("unsupported tag 'with'"));
  EXPECT_THAT(ParseStatus("{% frobnicate %}"), ParseErrorIs("line 1, column 4: unknown tag 'frobnicate'"));
  EXPECT_THAT(ParseStatus("{% endif %}"), ParseErrorIs("unexpected tag 'endif'"));
}

TEST(ChatTemplateTest, RejectsUnknownFiltersTestsMethodsAndFunctionsWhenLoaded) {
  // Even in branches that a render would never reach.
  EXPECT_THAT(ParseStatus("{% if false %}\n  {{ x | wordwrap(5) }}{% endif %}"),
              ParseErrorIs("line 2, column 10: unknown filter 'wordwrap'"));
  EXPECT_THAT(ParseStatus("{% if x is divisibleby 3 %}{% endif %}"),
              ParseErrorIs("line 1, column 12: unknown test 'divisibleby'"));
  EXPECT_THAT(ParseStatus("{{ xs | selectattr('a', 'sameas', 1) | list }}"),
              ParseErrorIs("unknown test 'sameas'"));
  EXPECT_THAT(ParseStatus("{{ xs | reject('divisibleby', 2) | list }}"),
              ParseErrorIs("unknown test 'divisibleby'"));
  EXPECT_THAT(ParseStatus("{{ xs | map('wordcount') | list }}"), ParseErrorIs("unknown filter 'wordcount'"));
  EXPECT_THAT(ParseStatus("{{ s.zfill(3) }}"), ParseErrorIs("line 1, column 5: unsupported method 'zfill'"));
  EXPECT_THAT(ParseStatus("{{ xs.append(1) }}"), ParseErrorIs("unsupported method 'append'"));
  EXPECT_THAT(ParseStatus("{{ lipsum(2) }}"), ParseErrorIs("line 1, column 4: unknown function 'lipsum'"));
  EXPECT_THAT(ParseStatus("{{ x[0](1) }}"), ParseErrorIs("unsupported call"));
  EXPECT_THAT(ParseStatus("{% for x in xs recursive %}{% endfor %}"),
              ParseErrorIs("unsupported recursive for loop"));
  EXPECT_THAT(ParseStatus("{% set x | upper %}a{% endset %}"),
              ParseErrorIs("unsupported filtered block set"));
  EXPECT_THAT(ParseStatus("{{ f(*args) }}{% macro f() %}{% endmacro %}"), ParseErrorIs("argument unpacking"));
  // A macro defined anywhere in the template may be called.
  EXPECT_OK(ParseStatus("{{ later(1) }}{% macro later(a) %}{{ a }}{% endmacro %}"));
}

TEST(ChatTemplateTest, RejectsMalformedSourcesWithPosition) {
  EXPECT_THAT(ParseStatus("ab\n{% if x %}abc"),
              ParseErrorIs("line 2, column 1: unexpected end of template: 'if' is not closed"));
  EXPECT_THAT(
      ParseStatus("{% for x in xs %}{% if x %}{% endfor %}"),
      ParseErrorIs("line 1, column 31: unexpected tag 'endfor': 'if' at line 1, column 18 is not closed"));
  EXPECT_THAT(ParseStatus("x\n  {{ a + "), ParseErrorIs("line 2, column 3: unterminated tag '{{'"));
  EXPECT_THAT(ParseStatus("{% if x "), ParseErrorIs("line 1, column 1: unterminated tag '{%'"));
  EXPECT_THAT(ParseStatus("a {# comment"), ParseErrorIs("line 1, column 3: unterminated comment"));
  EXPECT_THAT(ParseStatus("{{ 'abc }}"), ParseErrorIs("line 1, column 4: unterminated string"));
  EXPECT_THAT(ParseStatus("{% raw %}abc"), ParseErrorIs("missing end of raw directive"));
  EXPECT_THAT(ParseStatus("{{ '\\x4' }}"), ParseErrorIs("truncated escape"));
  EXPECT_THAT(ParseStatus("{% break %}"), ParseErrorIs("'break' outside of a loop"));
  EXPECT_THAT(ParseStatus("{% for x in y %}{% macro m() %}{% continue %}{% endmacro %}{% endfor %}"),
              ParseErrorIs("'continue' outside of a loop"));
  EXPECT_THAT(ParseStatus("{{ }}"), ParseErrorIs("expected an expression"));
  EXPECT_THAT(ParseStatus("{{ a b }}"), ParseErrorIs("expected end of expression"));
  EXPECT_THAT(ParseStatus("{{ (1 }}"), ParseErrorIs("unexpected '}', expected ')'"));
  EXPECT_THAT(ParseStatus("{{ (1 ]"), ParseErrorIs("unexpected ']', expected ')'"));
  EXPECT_THAT(ParseStatus("{{ 1 ] }}"), ParseErrorIs("unexpected ']'"));
  EXPECT_THAT(ParseStatus("{{ a ? b }}"), ParseErrorIs("unexpected character '?'"));
  EXPECT_THAT(ParseStatus("{{ x is defined is defined }}"), ParseErrorIs("cannot chain multiple tests"));
  EXPECT_THAT(ParseStatus(std::string("{{ '\xff' }}")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("UTF-8")));
  const std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_THAT(ParseStatus(deep), ParseErrorIs("nested too deeply"));
}

TEST(ChatTemplateTest, RaiseExceptionFailsWithExactlyTheTemplatesMessage) {
  const Json context = {{"messages", Json::array({{{"role", "assistant"}, {"content", "x"}}})}};
  EXPECT_THAT(
      Render("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate "
             "user/assistant/user/assistant/...') }}{% endif %}",
             context),
      StatusIs(absl::StatusCode::kInvalidArgument,
               "Conversation roles must alternate user/assistant/user/assistant/..."));
}

TEST(ChatTemplateTest, RuntimeErrorsNameTheirPosition) {
  const Json context = {{"messages", Json::array({{{"role", "user"}}})}, {"n", 1}};
  EXPECT_THAT(Render("line one\n  {{ messages[0].missing.x }}", context),
              ParseErrorIs("line 2, column 25: 'dict object' has no attribute 'missing'"));
  EXPECT_THAT(Render("{{ foo.bar }}", context), ParseErrorIs("line 1, column 7: 'foo' is undefined"));
  EXPECT_THAT(Render("{{ 'a' + n }}", context), ParseErrorIs("line 1, column 8: can only concatenate str"));
  EXPECT_THAT(Render("{{ n / 0 }}", context), ParseErrorIs("division by zero"));
  EXPECT_THAT(Render("{% for x in n %}{% endfor %}", context), ParseErrorIs("'int' object is not iterable"));
  EXPECT_THAT(Render("{{ n | length }}", context),
              ParseErrorIs("line 1, column 8: object of type 'int' has no len()"));
  EXPECT_THAT(Render("{{ n | tojson }}{{ undefined_thing | tojson }}", context),
              ParseErrorIs("not JSON serializable"));
  EXPECT_THAT(Render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"), ParseErrorIs("nested too deeply"));
  EXPECT_THAT(Render("{{ range(1000000) | length }}"), ParseErrorIs("Range too big"));
  EXPECT_THAT(ChatTemplate::Parse("x")->Render(Json::array()), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ChatTemplateTest, KeepsTheContextsKeyOrderAsPythonDictsDo) {
  const Json context =
      Json::parse(R"({"tool": {"type": "function", "function": {"name": "f", "b": 1, "a": 2}}})");
  ASSERT_OK_AND_ASSIGN(
      const std::string out,
      Render("{{ tool | tojson }}|{% for k, v in tool.function.items() %}{{ k }}{% endfor %}", context));
  EXPECT_EQ(out, R"({"type": "function", "function": {"name": "f", "b": 1, "a": 2}}|nameba)");
}

TEST(ChatTemplateTest, RendersHuggingFaceGenerationBlocksInPlace) {
  // transformers' AssistantTracker extension marks assistant text with {% generation %}; it renders as is.
  ASSERT_OK_AND_ASSIGN(const std::string out, Render("a{% generation %}\n  b{{ 1 }}{% endgeneration %}c"));
  EXPECT_EQ(out, "a  b1c");
}

TEST(ChatTemplateTest, StrftimeNowFormatsTheCurrentTime) {
  ASSERT_OK_AND_ASSIGN(const std::string date, Render("{{ strftime_now('%Y-%m-%d') }}"));
  EXPECT_THAT(date, MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}"));
}

TEST(ChatTemplateTest, CopiesAndConcurrentRendersShareTheParsedTemplate) {
  ASSERT_OK_AND_ASSIGN(
      ChatTemplate original,
      ChatTemplate::Parse("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + "
                          "1 %}{{ m.content }}{% endfor %}#{{ ns.n }}"));
  const ChatTemplate copy = original;
  const ChatTemplate moved = std::move(original);
  std::vector<std::thread> threads;
  std::vector<std::string> results(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Json messages = Json::array();
      for (int i = 0; i <= t; ++i) messages.push_back({{"content", std::to_string(i)}});
      const ChatTemplate& chat_template = t % 2 == 0 ? copy : moved;
      for (int k = 0; k < 50; ++k) {
        auto out = chat_template.Render({{"messages", messages}});
        results[t] = out.ok() ? *out : std::string(out.status().message());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 8; ++t) {
    std::string expected;
    for (int i = 0; i <= t; ++i) expected += std::to_string(i);
    EXPECT_EQ(results[t], expected + "#" + std::to_string(t + 1));
  }
}

}  // namespace
}  // namespace tessera
