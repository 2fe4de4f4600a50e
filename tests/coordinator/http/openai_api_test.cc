// OpenAiApi without sockets: OpenAI request bodies -> PreparedCompletion (fields, defaults, prompt lists),
// every malformed field -> 400 naming OpenAI's param, unknown model -> 404, engine errors -> status codes,
// engine events -> unary bodies and SSE chunks (prompt-major choice indices, usage, [DONE]).
#include "coordinator/http/openai_api.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "coordinator/chat_renderer.h"
#include "tests/coordinator/api_test_server.h"

namespace tessera::testing {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// An engine event as ChoiceEventObserver makes it (no logprobs).
ChoiceEvent Event(int prompt, int choice, std::string text, int new_tokens, std::optional<FinishReason> end,
                  std::optional<absl::Status> done) {
  ChoiceEvent event;
  event.prompt = prompt;
  event.choice = choice;
  event.text = std::move(text);
  event.new_tokens = new_tokens;
  event.end = end;
  event.done = std::move(done);
  return event;
}

OpenAiApi TestApi() {
  return OpenAiApi(TestModel(), Llama31Tokenizer(),
                   std::make_shared<ChatRenderer>(Llama31ChatTemplates(), TestModel().dir));
}

TEST(OpenAiApiTest, MapsCompletionFieldsOntoTheEngineRequest) {
  OpenAiApi api = TestApi();
  OpenAiCall call;
  ASSERT_EQ(
      api.Prepare(ApiKind::kCompletion,
                  R"({"model": "tiny-test", "prompt": [128000, 9906], "max_tokens": 7, "temperature": 0.5,
                            "top_p": 0.75, "top_k": 3, "n": 2, "seed": 11, "stop": "x", "user": "u",
                            "some_future_field": {"a": 1}, "stream": true,
                            "stream_options": {"include_usage": true}})",
                  call),
      std::nullopt);
  ASSERT_EQ(call.prompts.size(), 1u);
  const GenerationRequest& r = call.prompts[0].request;
  EXPECT_THAT(r.prompt, ElementsAre(kBosId, 9906));
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.75f);
  EXPECT_EQ(r.sampling.top_k, 3);
  EXPECT_EQ(r.sampling.seed, 11u);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.id, call.id);
  EXPECT_THAT(call.prompts[0].stop_strings, ElementsAre("x"));
  EXPECT_THAT(r.stop_token_ids, ElementsAre(kEndOfTextId, kEotId));
  EXPECT_TRUE(call.stream);
  EXPECT_TRUE(call.include_usage);
  EXPECT_EQ(call.model, "tiny-test");
  EXPECT_THAT(call.id, HasSubstr("cmpl-"));
}

TEST(OpenAiApiTest, UnsetFieldsTakeTheModelDefaults) {
  OpenAiApi api = TestApi();
  OpenAiCall call;
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion, R"({"prompt": "Hello", "temperature": null})", call),
            std::nullopt);
  const GenerationRequest& r = call.prompts[0].request;
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.6f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.prompt.front(), kBosId);
  EXPECT_EQ(r.max_tokens, kTestContext - static_cast<int>(r.prompt.size()));
  EXPECT_FALSE(call.stream);
}

TEST(OpenAiApiTest, APromptListIsSeveralRequestsIndexedPromptMajor) {
  OpenAiApi api = TestApi();
  OpenAiCall call;
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion,
                        R"({"prompt": ["Hello", [128000, 5]], "n": 2, "max_tokens": 3})", call),
            std::nullopt);
  ASSERT_EQ(call.prompts.size(), 2u);
  EXPECT_EQ(call.prompts[0].request.id, call.id + "-0");
  EXPECT_EQ(call.prompts[1].request.id, call.id + "-1");
  EXPECT_THAT(call.prompts[1].request.prompt, ElementsAre(kBosId, 5));

  OpenAiCallState state(call);
  state.Apply(Event(1, 1, "b1", 2, FinishReason::kStop, std::nullopt));
  state.Apply(Event(0, 0, "a0", 1, FinishReason::kLength, std::nullopt));
  state.Apply(Event(0, 1, "a1", 1, FinishReason::kLength, std::nullopt));
  state.Apply(Event(1, 0, "b0", 1, FinishReason::kLength, std::nullopt));
  state.Apply(Event(0, 0, "", 0, std::nullopt, absl::OkStatus()));
  EXPECT_FALSE(state.done());
  state.Apply(Event(1, 0, "", 0, std::nullopt, absl::OkStatus()));
  ASSERT_TRUE(state.done());
  const HttpReply reply = state.UnaryReply();
  EXPECT_EQ(reply.status, 200);
  const json body = json::parse(reply.body);
  EXPECT_EQ(body["object"], "text_completion");
  ASSERT_EQ(body["choices"].size(), 4u);
  EXPECT_EQ(body["choices"][1]["text"], "a1");
  EXPECT_EQ(body["choices"][2]["text"], "b0");
  EXPECT_EQ(body["choices"][3]["text"], "b1");
  EXPECT_EQ(body["choices"][3]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  const int prompt_tokens = static_cast<int>(call.prompts[0].request.prompt.size() + 2);
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt_tokens);
  EXPECT_EQ(body["usage"]["completion_tokens"], 5);
  EXPECT_EQ(body["usage"]["total_tokens"], prompt_tokens + 5);
}

TEST(OpenAiApiTest, ChatRendersTheTemplateWithToolsAndStreamsRoleFirst) {
  OpenAiApi api = TestApi();
  OpenAiCall plain, with_tools;
  const char* messages = R"("messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])";
  ASSERT_EQ(api.Prepare(ApiKind::kChat,
                        Cat("{", messages, R"(, "max_completion_tokens": 4, "stream": true})"), plain),
            std::nullopt);
  ASSERT_EQ(
      api.Prepare(ApiKind::kChat,
                  Cat("{", messages,
                      R"(, "max_tokens": 4, "tools": [{"type": "function", "function": {"name": "get_weather",
                                "description": "d", "parameters": {"type": "object", "properties": {}}}}]})"),
                  with_tools),
      std::nullopt);
  EXPECT_EQ(plain.prompts[0].request.max_tokens, 4);
  EXPECT_NE(plain.prompts[0].request.prompt.front(), -1);
  EXPECT_EQ(with_tools.prompts[0].request.prompt,
            plain.prompts[0].request.prompt);  // this template has no tools
  EXPECT_THAT(plain.id, HasSubstr("chatcmpl-"));

  OpenAiCallState state(plain);
  const std::string start = state.StreamStart();
  EXPECT_THAT(start, HasSubstr(R"("delta":{"role":"assistant","content":""})"));
  EXPECT_THAT(start, HasSubstr(R"("object":"chat.completion.chunk")"));
  const std::string token = state.Apply(Event(0, 0, "Hel", 1, std::nullopt, std::nullopt));
  EXPECT_THAT(token, HasSubstr(R"("delta":{"content":"Hel"},"logprobs":null,"finish_reason":null)"));
  EXPECT_EQ(state.Apply(Event(0, 0, "", 1, std::nullopt, std::nullopt)), "");  // nothing to say
  const std::string end = state.Apply(Event(0, 0, "", 0, FinishReason::kStop, std::nullopt));
  EXPECT_THAT(end, HasSubstr(R"("delta":{},"logprobs":null,"finish_reason":"stop")"));
  state.Apply(Event(0, 0, "", 0, std::nullopt, absl::OkStatus()));
  EXPECT_EQ(state.StreamEnd(), "data: [DONE]\n\n");
}

TEST(OpenAiApiTest, IncludeUsageEndsTheStreamWithAUsageChunk) {
  OpenAiApi api = TestApi();
  OpenAiCall call;
  ASSERT_EQ(
      api.Prepare(
          ApiKind::kCompletion,
          R"({"prompt": [1, 2, 3], "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}})",
          call),
      std::nullopt);
  OpenAiCallState state(call);
  EXPECT_EQ(state.StreamStart(), "");
  EXPECT_THAT(state.Apply(Event(0, 0, "a", 2, FinishReason::kLength, std::nullopt)),
              HasSubstr(R"("usage":null)"));
  state.Apply(Event(0, 0, "", 0, std::nullopt, absl::OkStatus()));
  const std::string tail = state.StreamEnd();
  ASSERT_THAT(tail, HasSubstr("data: [DONE]\n\n"));
  const json usage = json::parse(tail.substr(6, tail.find("\n\n") - 6));
  EXPECT_EQ(usage["choices"].size(), 0u);
  EXPECT_EQ(usage["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(usage["usage"]["completion_tokens"], 2);
  EXPECT_EQ(usage["usage"]["total_tokens"], 5);
}

TEST(OpenAiApiTest, ToolsReachTheChatTemplate) {
  const std::string dir = ::testing::TempDir() + "/openai_api_tools_template";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer_config.json")
      << json{{"chat_template",
               "{% if tools %}[{{ tools[0]['function']['name'] }}]{% endif %}"
               "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"}}
             .dump();
  absl::StatusOr<ModelChatTemplates> templates = ModelChatTemplates::Load(dir);
  ASSERT_TRUE(templates.ok()) << templates.status();
  OpenAiApi api(
      TestModel(), Llama31Tokenizer(),
      std::make_shared<ChatRenderer>(std::make_unique<ModelChatTemplates>(*std::move(templates)), dir));
  OpenAiCall call;
  ASSERT_EQ(api.Prepare(ApiKind::kChat,
                        R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                            "tools": [{"type": "function", "function": {"name": "get_weather"}}]})",
                        call),
            std::nullopt);
  absl::StatusOr<std::string> text = Llama31Tokenizer()->Decode(call.prompts[0].request.prompt, false);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "[get_weather]user: Hi\n");
}

struct BadBody {
  ApiKind kind;
  std::string body;
  int status;
  std::string param;    // "" = null
  std::string message;  // a part of the message
};

class OpenAiApiErrorTest : public ::testing::TestWithParam<BadBody> {};

TEST_P(OpenAiApiErrorTest, AnswersWithOpenAisErrorNamingTheParam) {
  const BadBody& bad = GetParam();
  OpenAiApi api = TestApi();
  OpenAiCall call;
  std::optional<ApiError> error = api.Prepare(bad.kind, bad.body, call);
  ASSERT_TRUE(error.has_value()) << bad.body;
  EXPECT_EQ(error->status, bad.status) << bad.body;
  EXPECT_THAT(error->message, HasSubstr(bad.message)) << bad.body;
  const json body = json::parse(ErrorReply(*error).body);
  EXPECT_EQ(body["error"]["param"], bad.param.empty() ? json(nullptr) : json(bad.param)) << bad.body;
  EXPECT_EQ(body["error"]["message"], error->message);
  EXPECT_TRUE(body["error"].contains("type"));
  EXPECT_TRUE(body["error"].contains("code"));
}

INSTANTIATE_TEST_SUITE_P(
    Bodies, OpenAiApiErrorTest,
    ::testing::Values(
        BadBody{ApiKind::kCompletion, "not json", 400, "", "JSON object"},
        BadBody{ApiKind::kCompletion, R"({"model": "gpt-9", "prompt": "a"})", 404, "model", "gpt-9"},
        BadBody{ApiKind::kCompletion, R"({"model": 3, "prompt": "a"})", 400, "model", "'model'"},
        BadBody{ApiKind::kCompletion, R"({})", 400, "prompt", "'prompt' is required"},
        BadBody{ApiKind::kCompletion, R"({"prompt": 5})", 400, "prompt", "'prompt' must be"},
        BadBody{ApiKind::kCompletion, R"({"prompt": []})", 400, "prompt", "'prompt' must be"},
        BadBody{ApiKind::kCompletion, R"({"prompt": ["a", 5]})", 400, "prompt", "'prompt' must be"},
        BadBody{ApiKind::kCompletion, R"({"prompt": ""})", 400, "prompt", "prompt text is empty"},
        BadBody{ApiKind::kCompletion, R"({"prompt": [1, 200000]})", 400, "prompt", "200000"},
        BadBody{ApiKind::kCompletion, R"({"prompt": ["a", [1, -4]]})", 400, "prompt", "prompt[1]"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": "7"})", 400, "max_tokens", "integer"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 1.5})", 400, "max_tokens", "integer"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 0})", 400, "max_tokens", "positive"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 1000})", 400, "max_tokens", "context"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "temperature": "hot"})", 400, "temperature",
                "number"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "temperature": -1})", 400, "temperature", "-1"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "top_p": 1.5})", 400, "top_p", "1.5"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "top_k": -2})", 400, "top_k", "-2"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "n": 17})", 400, "n", "17"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "n": true})", 400, "n", "integer"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "seed": "x"})", 400, "seed", "integer"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "stop": 4})", 400, "stop", "'stop'"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "stop": ["x", 4]})", 400, "stop", "'stop'"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "stream": "yes"})", 400, "stream", "boolean"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "stream_options": {"include_usage": true}})", 400,
                "stream_options", "stream"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "logprobs": 21})", 400, "logprobs", "[0, 20]"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "logprobs": -1})", 400, "logprobs", "[0, 20]"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "logprobs": true})", 400, "logprobs", "integer"},
        BadBody{ApiKind::kChat, R"({"messages": [{"role": "user", "content": "a"}], "logprobs": 2})", 400,
                "logprobs", "boolean"},
        BadBody{ApiKind::kChat,
                R"({"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": 21})",
                400, "top_logprobs", "top_logprobs must be in [0, 20], got 21"},
        BadBody{ApiKind::kChat, R"({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2})", 400,
                "top_logprobs", "needs logprobs"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "min_p": 1.5})", 400, "min_p", "[0, 1]"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "min_p": "x"})", 400, "min_p", "number"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "repetition_penalty": 0})", 400,
                "repetition_penalty", "> 0"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "presence_penalty": 2.5})", 400, "presence_penalty",
                "[-2, 2]"},
        BadBody{ApiKind::kChat,
                R"({"messages": [{"role": "user", "content": "a"}], "frequency_penalty": -3})", 400,
                "frequency_penalty", "frequency_penalty must be in [-2, 2] (0 = off), got -3"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "logit_bias": [1]})", 400, "logit_bias", "object"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "logit_bias": {"x1": 1}})", 400, "logit_bias",
                "\"x1\" is not a token id"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "logit_bias": {"1": "up"}})", 400, "logit_bias",
                "\"1\" maps to"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "logit_bias": {"128256": 1}})", 400, "logit_bias",
                "logit_bias token id 128256 is outside the vocabulary [0, 128256)"},
        BadBody{ApiKind::kChat,
                R"({"messages": [{"role": "user", "content": "a"}], "logit_bias": {"5": 101}})", 400,
                "logit_bias", "logit_bias[5] = 101 is outside [-100, 100]"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "min_tokens": -1})", 400, "min_tokens", ">= 0"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 4, "min_tokens": 5})", 400,
                "min_tokens", "min_tokens must be in [0, max_tokens = 4], got 5"},
        BadBody{ApiKind::kCompletion, R"({"prompt": "a", "priority": 1.5})", 400, "priority", "integer"},
        BadBody{ApiKind::kChat, R"({"prompt": "a"})", 400, "messages", "'messages' is required"},
        BadBody{ApiKind::kChat, R"({"messages": []})", 400, "messages", "non-empty"},
        BadBody{ApiKind::kChat, R"({"messages": [{"content": "a"}]})", 400, "messages", "messages[0].role"},
        BadBody{ApiKind::kChat, R"({"messages": [{"role": "user", "content": 3}]})", 400, "messages",
                "messages[0].content"},
        BadBody{ApiKind::kChat,
                R"({"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0})", 400,
                "max_completion_tokens", "positive"},
        BadBody{ApiKind::kChat, R"({"messages": [{"role": "user", "content": "a"}], "tools": {}})", 400,
                "tools", "'tools'"}));

TEST(OpenAiApiTest, EngineErrorsMapOntoHttpStatusCodes) {
  EXPECT_EQ(ErrorFromStatus(absl::ResourceExhaustedError("queue full")).status, 429);
  EXPECT_EQ(ErrorFromStatus(absl::UnavailableError("worker 1 failed")).status, 503);
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("never fits")).status, 400);
  EXPECT_EQ(ErrorFromStatus(absl::FailedPreconditionError("no tokenizer")).status, 400);
  EXPECT_EQ(ErrorFromStatus(absl::NotFoundError("x")).status, 404);
  EXPECT_EQ(ErrorFromStatus(absl::InternalError("x")).status, 500);
  const json body = json::parse(ErrorJson(ErrorFromStatus(absl::UnavailableError("worker 1 failed"))));
  EXPECT_EQ(body["error"]["message"], "worker 1 failed");
  EXPECT_EQ(body["error"]["param"], nullptr);
  EXPECT_EQ(body["error"]["code"], nullptr);
}

TEST(OpenAiApiTest, AFailedRequestEndsTheStreamWithAnErrorEvent) {
  OpenAiApi api = TestApi();
  OpenAiCall call;
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 2, "stream": true})", call),
            std::nullopt);
  OpenAiCallState state(call);
  state.Apply(Event(0, 0, "", 0, std::nullopt, absl::UnavailableError("worker 1 failed")));
  ASSERT_TRUE(state.done());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kUnavailable);
  const std::string tail = OpenAiCallState::StreamError(ErrorFromStatus(state.status()));
  EXPECT_THAT(tail, HasSubstr(R"("message":"worker 1 failed")"));
  EXPECT_THAT(tail, HasSubstr("data: [DONE]\n\n"));
}

TEST(OpenAiApiTest, ObserverCutsTheTextAtAStopString) {
  OpenAiApi api = TestApi();
  OpenAiCall call;
  ASSERT_EQ(
      api.Prepare(ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 8, "stop": [" world"]})", call),
      std::nullopt);
  std::vector<ChoiceEvent> events;
  ChoiceEventObserver observer(Llama31Tokenizer(), 0, call.prompts[0],
                               [&](ChoiceEvent e) { events.push_back(std::move(e)); });
  absl::StatusOr<std::vector<int32_t>> ids = Llama31Tokenizer()->Encode("Hello world again", false);
  ASSERT_TRUE(ids.ok());
  bool stopped = false;
  for (int32_t id : *ids) {
    if ((stopped = observer.OnToken(0, id))) break;
  }
  EXPECT_TRUE(stopped);
  observer.OnChoiceEnd(0, FinishReason::kStop);
  observer.OnDone(absl::OkStatus());
  OpenAiCallState state(call);
  for (const ChoiceEvent& e : events) state.Apply(e);
  ASSERT_TRUE(state.done());
  const json body = json::parse(state.UnaryReply().body);
  EXPECT_EQ(body["choices"][0]["text"], "Hello");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
}

TEST(OpenAiApiTest, MapsTheNewSamplingFieldsOntoTheEngineRequest) {
  OpenAiApi api = TestApi();
  OpenAiCall call;
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion,
                        R"({"prompt": "a", "max_tokens": 8, "logprobs": 3, "presence_penalty": 0.5,
                            "frequency_penalty": -1.5, "repetition_penalty": 1.2, "min_p": 0.05,
                            "logit_bias": {"300": -100, "7": 4.5}, "min_tokens": 2, "priority": -3})",
                        call),
            std::nullopt);
  const GenerationRequest& r = call.prompts.at(0).request;
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 3);
  EXPECT_FALSE(r.sampling.prompt_logprobs);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -1.5f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_THAT(r.sampling.logit_bias, ElementsAre(std::make_pair(7, 4.5f), std::make_pair(300, -100.0f)));
  EXPECT_EQ(r.sampling.min_tokens, 2);
  EXPECT_EQ(r.priority, -3);

  // Chat: logprobs is a boolean, top_logprobs the count; unset fields stay off.
  OpenAiCall chat;
  ASSERT_EQ(
      api.Prepare(ApiKind::kChat,
                  R"({"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": 4})",
                  chat),
      std::nullopt);
  const GenerationRequest& c = chat.prompts.at(0).request;
  EXPECT_TRUE(c.sampling.logprobs);
  EXPECT_EQ(c.sampling.top_logprobs, 4);
  EXPECT_FALSE(c.sampling.prompt_logprobs);
  EXPECT_EQ(c.sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(c.sampling.presence_penalty, 0.0f);
  EXPECT_THAT(c.sampling.logit_bias, ::testing::IsEmpty());
  EXPECT_EQ(c.priority, 0);

  // logprobs 0 asks for the sampled token's only; false / null is off; echo with logprobs asks the prompt's.
  OpenAiCall zero, off, echo;
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 2, "logprobs": 0})", zero),
            std::nullopt);
  EXPECT_TRUE(zero.prompts[0].request.sampling.logprobs);
  EXPECT_EQ(zero.prompts[0].request.sampling.top_logprobs, 0);
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion, R"({"prompt": "a", "max_tokens": 2, "logprobs": false})", off),
            std::nullopt);
  EXPECT_FALSE(off.prompts[0].request.sampling.logprobs);
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion,
                        R"({"prompt": "a", "max_tokens": 2, "logprobs": 1, "echo": true})", echo),
            std::nullopt);
  EXPECT_TRUE(echo.prompts[0].request.sampling.prompt_logprobs);
}

// Plays one prompt's engine events through ChoiceEventObserver as the engine calls it: cached tokens, the
// prompt's logprobs when asked, then each token after its logprob (FakeLogprob's), the end and OnDone.
std::vector<ChoiceEvent> PlayLogprobs(const OpenAiCall& call, const std::vector<int32_t>& tokens,
                                      int cached_tokens) {
  std::vector<ChoiceEvent> events;
  const GenerationRequest& request = call.prompts[0].request;
  ChoiceEventObserver observer(call.tokenizer, 0, call.prompts[0],
                               [&](ChoiceEvent e) { events.push_back(std::move(e)); });
  observer.OnCachedTokens(cached_tokens);
  if (request.sampling.prompt_logprobs) {
    std::vector<TokenLogprob> entries;
    for (size_t k = 1; k < request.prompt.size(); ++k) {
      entries.push_back(FakeLogprob(request.prompt[k], static_cast<int>(k), request.sampling.top_logprobs));
    }
    observer.OnPromptLogprobs(entries);
  }
  for (size_t k = 0; k < tokens.size(); ++k) {
    observer.OnLogprobs(0, FakeLogprob(tokens[k], static_cast<int>(k), request.sampling.top_logprobs));
    if (observer.OnToken(0, tokens[k])) break;
  }
  observer.OnChoiceEnd(0, FinishReason::kLength);
  observer.OnDone(absl::OkStatus());
  return events;
}

// The JSON objects of an SSE text's data lines ([DONE] left out).
std::vector<json> SseChunks(const std::string& sse) {
  std::vector<json> chunks;
  for (size_t at = sse.find("data: "); at != std::string::npos; at = sse.find("data: ", at + 1)) {
    const std::string data = sse.substr(at + 6, sse.find("\n\n", at) - at - 6);
    if (data != "[DONE]") chunks.push_back(json::parse(data));
  }
  return chunks;
}

TEST(OpenAiApiTest, CompletionLogprobsTakeOpenAisShapeWithThePromptsFirstWhenEchoed) {
  OpenAiApi api = TestApi();
  const std::vector<int32_t> prompt = {kBosId, 9906, 1917};  // "<|begin_of_text|>Hello world"
  const std::vector<int32_t> tokens = Llama31Tokenizer()->Encode(" Paris is", false).value();
  OpenAiCall unary_call, stream_call;
  const std::string body =
      R"({"prompt": [128000, 9906, 1917], "max_tokens": 8, "logprobs": 2, "echo": true, "stream": )";
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion, body + "false}", unary_call), std::nullopt);
  ASSERT_EQ(api.Prepare(ApiKind::kCompletion, body + R"(true, "stream_options": {"include_usage": true}})",
                        stream_call),
            std::nullopt);

  OpenAiCallState unary(unary_call);
  for (const ChoiceEvent& e : PlayLogprobs(unary_call, tokens, 2)) unary.Apply(e);
  ASSERT_TRUE(unary.done());
  const json reply = json::parse(unary.UnaryReply().body);
  const json& lp = reply["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), prompt.size() + tokens.size()) << lp.dump();
  EXPECT_EQ(lp["tokens"][0], "<|begin_of_text|>");
  EXPECT_EQ(lp["tokens"][1], "Hello");
  EXPECT_EQ(lp["tokens"][2], " world");
  EXPECT_EQ(lp["tokens"][3], " Paris");
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_FLOAT_EQ(lp["token_logprobs"][1].get<float>(), FakeLogprob(9906, 1, 2).logprob);
  EXPECT_FLOAT_EQ(lp["token_logprobs"][3].get<float>(), FakeLogprob(tokens[0], 0, 2).logprob);
  // top_logprobs: the 2 most likely (FakeLogprob: the token, then the next id) by their spelling.
  const json& top = lp["top_logprobs"][3];
  ASSERT_EQ(top.size(), 2u) << top.dump();
  EXPECT_FLOAT_EQ(top[" Paris"].get<float>(), FakeLogprob(tokens[0], 0, 2).logprob);
  const std::string next = Llama31Tokenizer()->Decode({tokens[0] + 1}, false).value();
  EXPECT_FLOAT_EQ(top[next].get<float>(), FakeLogprob(tokens[0], 0, 2).top[1].second);
  // text_offset: where each token's spelling starts, counted on from the first prompt token.
  int offset = 0;
  for (size_t k = 0; k < lp["tokens"].size(); ++k) {
    EXPECT_EQ(lp["text_offset"][k], offset) << k;
    offset += static_cast<int>(lp["tokens"][k].get<std::string>().size());  // ASCII here
  }
  EXPECT_EQ(reply["usage"]["prompt_tokens_details"]["cached_tokens"], 2);

  // Streamed: the echo chunk waits for the prompt's logprobs; the chunks' logprobs concatenate to the unary.
  OpenAiCallState streamed(stream_call);
  std::string sse = streamed.StreamStart();
  EXPECT_EQ(sse, "");
  for (const ChoiceEvent& e : PlayLogprobs(stream_call, tokens, 2)) sse += streamed.Apply(e);
  sse += streamed.StreamEnd();
  json joined = {{"tokens", json::array()},
                 {"token_logprobs", json::array()},
                 {"top_logprobs", json::array()},
                 {"text_offset", json::array()}};
  std::string text;
  const std::vector<json> chunks = SseChunks(sse);
  ASSERT_GE(chunks.size(), 2u);
  EXPECT_EQ(chunks[0]["choices"][0]["text"], "<|begin_of_text|>Hello world");
  EXPECT_EQ(chunks[0]["choices"][0]["logprobs"]["tokens"].size(), prompt.size());
  for (const json& chunk : chunks) {
    if (chunk["choices"].empty()) {
      EXPECT_EQ(chunk["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
      continue;
    }
    const json& choice = chunk["choices"][0];
    text += choice["text"].get<std::string>();
    for (auto& [key, values] : choice["logprobs"].items()) {
      for (const json& v : values) joined[key].push_back(v);
    }
  }
  EXPECT_EQ(text, reply["choices"][0]["text"]);
  EXPECT_EQ(joined.dump(), json(lp).dump());
}

TEST(OpenAiApiTest, ChatLogprobsTakeOpenAisShapeUnaryAndStreamed) {
  OpenAiApi api = TestApi();
  const std::vector<int32_t> tokens = Llama31Tokenizer()->Encode(" Paris 😀", false).value();
  const std::string body =
      R"({"messages": [{"role": "user", "content": "a"}], "max_tokens": 8, "logprobs": true,
          "top_logprobs": 3, "stream": )";
  OpenAiCall unary_call, stream_call;
  ASSERT_EQ(api.Prepare(ApiKind::kChat, body + "false}", unary_call), std::nullopt);
  ASSERT_EQ(api.Prepare(ApiKind::kChat, body + "true}", stream_call), std::nullopt);

  OpenAiCallState unary(unary_call);
  for (const ChoiceEvent& e : PlayLogprobs(unary_call, tokens, 0)) unary.Apply(e);
  const json reply = json::parse(unary.UnaryReply().body);
  const json& content = reply["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), tokens.size()) << reply.dump();
  std::string bytes;
  for (size_t k = 0; k < tokens.size(); ++k) {
    SCOPED_TRACE(k);
    const TokenLogprob want = FakeLogprob(tokens[k], static_cast<int>(k), 3);
    EXPECT_EQ(content[k]["token"], Llama31Tokenizer()->Decode({tokens[k]}, false).value());
    EXPECT_FLOAT_EQ(content[k]["logprob"].get<float>(), want.logprob);
    for (const json& b : content[k]["bytes"]) bytes += static_cast<char>(b.get<int>());
    ASSERT_EQ(content[k]["top_logprobs"].size(), 3u);
    for (int t = 0; t < 3; ++t) {
      const json& alt = content[k]["top_logprobs"][t];
      EXPECT_EQ(alt["token"], Llama31Tokenizer()->Decode({want.top[t].first}, false).value());
      EXPECT_FLOAT_EQ(alt["logprob"].get<float>(), want.top[t].second);
      EXPECT_TRUE(alt["bytes"].is_array());
    }
  }
  // The bytes of the tokens are the text's, even where one token holds part of a character.
  EXPECT_EQ(bytes, " Paris 😀");
  EXPECT_EQ(reply["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

  OpenAiCallState streamed(stream_call);
  std::string sse = streamed.StreamStart();
  for (const ChoiceEvent& e : PlayLogprobs(stream_call, tokens, 0)) sse += streamed.Apply(e);
  json joined = json::array();
  for (const json& chunk : SseChunks(sse)) {
    const json& lp = chunk["choices"][0]["logprobs"];
    if (lp.is_null()) continue;  // the role chunk
    for (const json& entry : lp["content"]) joined.push_back(entry);
  }
  EXPECT_EQ(joined.dump(), content.dump());
}

TEST(OpenAiApiTest, TokenizeAndDetokenizeRoundTrip) {
  OpenAiApi api = TestApi();
  const HttpReply tokens = api.Tokenize(R"({"model": "tiny-test", "prompt": "Hello world"})");
  ASSERT_EQ(tokens.status, 200) << tokens.body;
  const json t = json::parse(tokens.body);
  EXPECT_EQ(t["tokens"][0], kBosId);
  EXPECT_EQ(t["count"], t["tokens"].size());
  EXPECT_EQ(t["max_model_len"], kTestContext);
  const HttpReply text = api.Detokenize(json{{"tokens", t["tokens"]}}.dump());
  ASSERT_EQ(text.status, 200) << text.body;
  EXPECT_EQ(json::parse(text.body)["prompt"], "<|begin_of_text|>Hello world");
  const HttpReply bad = api.Detokenize(R"({"tokens": [1, 999999]})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(json::parse(bad.body)["error"]["param"], "tokens");
  const HttpReply chat = api.Tokenize(R"({"messages": [{"role": "user", "content": "Hi"}]})");
  ASSERT_EQ(chat.status, 200) << chat.body;
  EXPECT_EQ(json::parse(chat.body)["tokens"][0], kBosId);  // written by the template, not added again
  EXPECT_NE(json::parse(chat.body)["tokens"][1], kBosId);
}

TEST(OpenAiApiTest, ModelsListsTheServedModel) {
  const json body = json::parse(TestApi().Models().body);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  EXPECT_EQ(body["data"][0]["id"], "tiny-test");
  EXPECT_EQ(body["data"][0]["object"], "model");
}

}  // namespace
}  // namespace tessera::testing
