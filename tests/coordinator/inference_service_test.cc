// InferenceService and ModelService through the generated gRPC client stubs, on a real loopback server over a
// scripted FakeEngine and the real Llama 3.1 tokenizer: unary and streamed completions, stop strings, echo,
// n, error passthrough, cancellation (by the client, by deadline, by id), Tokenize / Detokenize, the model
// list; Chat and ChatStream (rendered prompts, tools and message names through the template, assistant
// messages, content deltas). The INVALID_ARGUMENT cases are in inference_service_validation_test.cc.
#include "coordinator/inference_service.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/coordinator/api_test_server.h"

namespace tessera::testing {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

std::vector<int32_t> Encode(std::string_view text, bool bos = false) {
  return Llama31Tokenizer()->Encode(text, bos).value();
}

std::vector<int32_t> Ids(const google::protobuf::RepeatedField<int32_t>& ids) {
  return {ids.begin(), ids.end()};
}

v1::CompleteRequest TextRequest(const std::string& text) {
  v1::CompleteRequest request;
  request.set_text(text);
  request.set_max_tokens(16);
  return request;
}

struct Streamed {
  std::vector<v1::CompleteStreamResponse> events;
  grpc::Status status;
  // Concatenated deltas of one choice.
  std::string Text(int index) const {
    std::string text;
    for (const auto& e : events) {
      if (e.has_delta() && e.delta().index() == index) text += e.delta().text();
    }
    return text;
  }
  std::vector<int32_t> Tokens(int index) const {
    std::vector<int32_t> ids;
    for (const auto& e : events) {
      if (e.has_delta() && e.delta().index() == index) {
        ids.insert(ids.end(), e.delta().token_ids().begin(), e.delta().token_ids().end());
      }
    }
    return ids;
  }
};

Streamed Stream(v1::InferenceService::Stub& stub, const v1::CompleteRequest& request,
                std::chrono::milliseconds timeout = 10s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto reader = stub.CompleteStream(&context, request);
  Streamed out;
  v1::CompleteStreamResponse event;
  while (reader->Read(&event)) out.events.push_back(event);
  out.status = reader->Finish();
  return out;
}

grpc::Status Complete(v1::InferenceService::Stub& stub, const v1::CompleteRequest& request,
                      v1::CompleteResponse& response, std::chrono::milliseconds timeout = 10s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  return stub.Complete(&context, request, &response);
}

v1::ChatRequest ChatOf(std::vector<std::pair<std::string, std::string>> messages) {
  v1::ChatRequest request;
  for (auto& [role, content] : messages) {
    v1::ChatMessage* m = request.add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  return request;
}

struct ChatStreamed {
  std::vector<v1::ChatStreamResponse> events;
  grpc::Status status;
  std::string Content(int index) const {
    std::string content;
    for (const auto& e : events) {
      if (e.has_delta() && e.delta().index() == index) content += e.delta().content();
    }
    return content;
  }
  std::vector<int32_t> Tokens(int index) const {
    std::vector<int32_t> ids;
    for (const auto& e : events) {
      if (e.has_delta() && e.delta().index() == index) {
        ids.insert(ids.end(), e.delta().token_ids().begin(), e.delta().token_ids().end());
      }
    }
    return ids;
  }
};

ChatStreamed StreamChat(v1::InferenceService::Stub& stub, const v1::ChatRequest& request,
                        std::chrono::milliseconds timeout = 10s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto reader = stub.ChatStream(&context, request);
  ChatStreamed out;
  v1::ChatStreamResponse event;
  while (reader->Read(&event)) out.events.push_back(event);
  out.status = reader->Finish();
  return out;
}

grpc::Status Chat(v1::InferenceService::Stub& stub, const v1::ChatRequest& request,
                  v1::ChatResponse& response, std::chrono::milliseconds timeout = 10s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  return stub.Chat(&context, request, &response);
}

// The prompt ids the Llama 3.1 template gives `messages` (add_generation_prompt), tokenized without bos.
std::vector<int32_t> RenderedLlama31(const std::vector<std::pair<std::string, std::string>>& messages) {
  nlohmann::ordered_json json = {{"messages", nlohmann::ordered_json::array()},
                                 {"add_generation_prompt", true}};
  for (const auto& [role, content] : messages)
    json["messages"].push_back({{"role", role}, {"content", content}});
  std::string text = Llama31ChatTemplates()->Render(json).value();
  return Encode(text);
}

class InferenceServiceTest : public ::testing::Test {
 protected:
  void Script(std::vector<ScriptedChoice> choices) {
    server_.engine().SetScript(ScriptOf(std::move(choices)));
  }

  ApiTestServer server_;
  std::unique_ptr<v1::InferenceService::Stub> stub_ = server_.InferenceStub();
};

TEST_F(InferenceServiceTest, CompleteAnswersTextTokensFinishReasonAndUsage) {
  std::vector<int32_t> tokens = Encode(" Paris is nice 😀.");
  tokens.push_back(kEotId);
  Script({{tokens}});
  v1::CompleteRequest request;
  request.set_text("The capital of France is");
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());

  ASSERT_EQ(response.choices_size(), 1);
  const v1::Choice& choice = response.choices(0);
  EXPECT_EQ(choice.text(), " Paris is nice 😀.");
  EXPECT_EQ(Ids(choice.token_ids()), tokens);  // the eos id counts as generated; its text is not returned
  EXPECT_EQ(choice.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_THAT(choice.prompt_token_ids(), IsEmpty());
  EXPECT_EQ(response.model(), "tiny-test");
  const std::vector<int32_t> prompt = Encode("The capital of France is", /*bos=*/true);
  EXPECT_EQ(response.usage().prompt_tokens(), static_cast<int>(prompt.size()));
  EXPECT_EQ(response.usage().completion_tokens(), static_cast<int>(tokens.size()));
  EXPECT_EQ(response.usage().total_tokens(), static_cast<int>(prompt.size() + tokens.size()));

  // What the engine was asked: the prompt with bos, the rest of the context, the model's default sampling,
  // the eos ids as stop ids, a generated request id.
  const std::vector<GenerationRequest> requests = server_.engine().requests();
  ASSERT_EQ(requests.size(), 1u);
  const GenerationRequest& r = requests[0];
  EXPECT_EQ(r.prompt, prompt);
  EXPECT_EQ(r.prompt[0], kBosId);
  EXPECT_EQ(r.max_tokens, kTestContext - static_cast<int>(prompt.size()));
  EXPECT_EQ(r.n, 1);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.6f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_THAT(r.stop_token_ids, UnorderedElementsAre(kEndOfTextId, kEotId));
  EXPECT_FALSE(r.id.empty());
  EXPECT_EQ(response.request_id(), r.id);
}

TEST_F(InferenceServiceTest, RequestFieldsOverrideTheDefaults) {
  Script({{Encode(" ok")}});
  v1::CompleteRequest request;
  request.mutable_token_ids()->add_ids(kBosId);
  request.mutable_token_ids()->add_ids(9906);
  request.set_max_tokens(5);
  request.set_temperature(0);
  request.set_top_p(1);
  request.set_top_k(7);
  request.set_seed(1234);
  request.add_stop_token_ids(13);
  request.set_ignore_eos(true);
  request.set_request_id("mine");
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_EQ(response.request_id(), "mine");
  const GenerationRequest r = server_.engine().requests().at(0);
  EXPECT_EQ(r.id, "mine");
  EXPECT_THAT(r.prompt, ElementsAre(kBosId, 9906));
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 7);
  EXPECT_EQ(r.sampling.seed, 1234u);
  EXPECT_THAT(r.stop_token_ids, ElementsAre(13));  // ignore_eos: no eos ids
  // The sampling fields added later keep their defaults when unset.
  EXPECT_EQ(r.sampling.min_p, 0.0f);
  EXPECT_EQ(r.sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(r.sampling.presence_penalty, 0.0f);
  EXPECT_EQ(r.sampling.frequency_penalty, 0.0f);
  EXPECT_THAT(r.sampling.logit_bias, IsEmpty());
  EXPECT_EQ(r.sampling.min_tokens, 0);
  EXPECT_FALSE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 0);
  EXPECT_FALSE(r.sampling.prompt_logprobs);
  EXPECT_EQ(r.priority, 0);
}

TEST_F(InferenceServiceTest, NewSamplingFieldsReachTheEngineRequest) {
  Script({{Encode(" ok")}});
  v1::CompleteRequest request = TextRequest("Hi");
  request.set_min_p(0.25f);
  request.set_repetition_penalty(1.5f);
  request.set_presence_penalty(-0.5f);
  request.set_frequency_penalty(2.0f);
  (*request.mutable_logit_bias())[300] = -100.0f;
  (*request.mutable_logit_bias())[7] = 4.5f;
  request.set_min_tokens(3);
  request.set_logprobs(true);
  request.set_top_logprobs(5);
  request.set_priority(-2);
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  const GenerationRequest r = server_.engine().requests().at(0);
  EXPECT_EQ(r.sampling.min_p, 0.25f);
  EXPECT_EQ(r.sampling.repetition_penalty, 1.5f);
  EXPECT_EQ(r.sampling.presence_penalty, -0.5f);
  EXPECT_EQ(r.sampling.frequency_penalty, 2.0f);
  EXPECT_THAT(r.sampling.logit_bias, ElementsAre(std::make_pair(7, 4.5f), std::make_pair(300, -100.0f)));
  EXPECT_EQ(r.sampling.min_tokens, 3);
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 5);
  EXPECT_FALSE(r.sampling.prompt_logprobs);  // no echo
  EXPECT_EQ(r.priority, -2);
}

// Checks that `logprobs` are FakeEngine's for `tokens` (positions from 0) with `top` alternatives each.
void ExpectFakeLogprobs(const google::protobuf::RepeatedPtrField<v1::TokenLogprob>& logprobs,
                        const std::vector<int32_t>& tokens, int top, int first_position = 0) {
  ASSERT_EQ(logprobs.size(), static_cast<int>(tokens.size()));
  for (int k = 0; k < logprobs.size(); ++k) {
    SCOPED_TRACE(k);
    const TokenLogprob want = FakeLogprob(tokens[k], first_position + k, top);
    const v1::TokenLogprob& got = logprobs[k];
    EXPECT_EQ(got.token_id(), tokens[k]);
    EXPECT_TRUE(got.has_logprob());
    EXPECT_FLOAT_EQ(got.logprob(), want.logprob);
    EXPECT_EQ(got.rank(), 1);
    ASSERT_EQ(got.top_logprobs_size(), top);
    for (int t = 0; t < top; ++t) {
      EXPECT_EQ(got.top_logprobs(t).token_id(), want.top[t].first);
      EXPECT_FLOAT_EQ(got.top_logprobs(t).logprob(), want.top[t].second);
    }
  }
}

TEST_F(InferenceServiceTest, LogprobsAndCachedTokensAreAnsweredUnaryAndStreamed) {
  const std::vector<int32_t> tokens = Encode(" Paris is nice 😀 indeed.");
  EngineScript script = ScriptOf({{tokens}});
  script.cached_tokens = 3;
  server_.engine().SetScript(script);
  v1::CompleteRequest request = TextRequest("The capital of France is");
  request.set_logprobs(true);
  request.set_top_logprobs(2);
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  ExpectFakeLogprobs(response.choices(0).logprobs(), tokens, 2);
  EXPECT_EQ(response.choices(0).prompt_logprobs_size(), 0);
  EXPECT_EQ(response.usage().cached_tokens(), 3);

  const Streamed streamed = Stream(*stub_, request);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  google::protobuf::RepeatedPtrField<v1::TokenLogprob> logprobs;
  for (const auto& e : streamed.events) {
    if (!e.has_delta()) continue;
    EXPECT_EQ(e.delta().logprobs_size(), e.delta().token_ids_size());  // each delta carries its tokens'
    logprobs.MergeFrom(e.delta().logprobs());
  }
  ExpectFakeLogprobs(logprobs, tokens, 2);
  EXPECT_EQ(streamed.events.back().trailer().usage().cached_tokens(), 3);

  // Without logprobs there are none.
  request.set_logprobs(false);
  request.clear_top_logprobs();
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_EQ(response.choices(0).logprobs_size(), 0);
}

TEST_F(InferenceServiceTest, LogprobsStayAlignedWithTheTokenIdsWhenAStopStringCuts) {
  const std::vector<int32_t> tokens = Encode(" The answer is 42. END of story");
  Script({{tokens}});
  v1::CompleteRequest request = TextRequest("Q:");
  request.add_stop("42. EN");
  request.set_logprobs(true);
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_EQ(response.choices(0).text(), " The answer is ");
  const std::vector<int32_t> kept(tokens.begin(), tokens.begin() + 7);
  EXPECT_EQ(Ids(response.choices(0).token_ids()), kept);
  ExpectFakeLogprobs(response.choices(0).logprobs(), kept, 0);

  const Streamed streamed = Stream(*stub_, request);
  ASSERT_TRUE(streamed.status.ok());
  google::protobuf::RepeatedPtrField<v1::TokenLogprob> logprobs;
  for (const auto& e : streamed.events) {
    if (e.has_delta()) logprobs.MergeFrom(e.delta().logprobs());
  }
  EXPECT_EQ(streamed.Tokens(0), kept);
  ExpectFakeLogprobs(logprobs, kept, 0);
}

TEST_F(InferenceServiceTest, EchoWithLogprobsReturnsThePromptsLogprobsFirstOneUnset) {
  const std::vector<int32_t> tokens = Encode(" world");
  Script({{tokens}});
  v1::CompleteRequest request = TextRequest("Hello there");
  request.set_echo(true);
  request.set_logprobs(true);
  request.set_top_logprobs(1);
  const std::vector<int32_t> prompt = Encode("Hello there", true);
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_TRUE(server_.engine().requests().at(0).sampling.prompt_logprobs);
  const v1::Choice& choice = response.choices(0);
  ExpectFakeLogprobs(choice.logprobs(), tokens, 1);
  ASSERT_EQ(choice.prompt_logprobs_size(), static_cast<int>(prompt.size()));
  EXPECT_EQ(choice.prompt_logprobs(0).token_id(), prompt[0]);
  EXPECT_FALSE(choice.prompt_logprobs(0).has_logprob());
  EXPECT_EQ(choice.prompt_logprobs(0).rank(), 0);
  google::protobuf::RepeatedPtrField<v1::TokenLogprob> rest(choice.prompt_logprobs().begin() + 1,
                                                            choice.prompt_logprobs().end());
  ExpectFakeLogprobs(rest, std::vector<int32_t>(prompt.begin() + 1, prompt.end()), 1, 1);

  // Streamed: the echo delta waits for the prompt's logprobs and carries them, before any token.
  const Streamed streamed = Stream(*stub_, request);
  ASSERT_TRUE(streamed.status.ok());
  ASSERT_TRUE(streamed.events.at(1).has_delta());
  const v1::TokenDelta& echo = streamed.events[1].delta();
  EXPECT_EQ(echo.text(), "Hello there");
  EXPECT_THAT(echo.token_ids(), IsEmpty());
  ASSERT_EQ(echo.prompt_logprobs_size(), static_cast<int>(prompt.size()));
  EXPECT_FALSE(echo.prompt_logprobs(0).has_logprob());
  for (int k = 0; k < echo.prompt_logprobs_size(); ++k) {
    EXPECT_EQ(echo.prompt_logprobs(k).SerializeAsString(), choice.prompt_logprobs(k).SerializeAsString())
        << k;
  }
  EXPECT_EQ(streamed.Text(0), "Hello there world");
}

TEST_F(InferenceServiceTest, GeneratedRequestIdsDiffer) {
  Script({{Encode(" ok")}});
  v1::CompleteResponse a, b;
  ASSERT_TRUE(Complete(*stub_, TextRequest("Hi"), a).ok());
  ASSERT_TRUE(Complete(*stub_, TextRequest("Hi"), b).ok());
  EXPECT_NE(a.request_id(), b.request_id());
}

TEST_F(InferenceServiceTest, MaxTokensEndsTheChoiceWithLength) {
  Script({{Encode(" one two three four five six")}});
  v1::CompleteRequest request = TextRequest("Count:");
  request.set_max_tokens(3);
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_EQ(response.choices(0).text(), " one two three");
  EXPECT_EQ(response.choices(0).finish_reason(), v1::FINISH_REASON_LENGTH);
}

TEST_F(InferenceServiceTest, StreamSendsHeaderDeltasEndsAndTrailerInOrder) {
  std::vector<int32_t> tokens = Encode(" Paris is nice 😀 indeed.");
  Script({{tokens, FinishReason::kLength}});
  v1::CompleteRequest request = TextRequest("The capital of France is");
  request.set_request_id("s1");
  const Streamed streamed = Stream(*stub_, request);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();

  ASSERT_GE(streamed.events.size(), 4u);
  const v1::StreamHeader& header = streamed.events.front().header();
  ASSERT_TRUE(streamed.events.front().has_header());
  EXPECT_EQ(header.request_id(), "s1");
  EXPECT_EQ(header.model(), "tiny-test");
  EXPECT_EQ(header.prompt_tokens(), static_cast<int>(Encode("The capital of France is", true).size()));
  EXPECT_EQ(header.num_choices(), 1);
  ASSERT_TRUE(streamed.events.back().has_trailer());
  const v1::CompleteStreamResponse& end = streamed.events[streamed.events.size() - 2];
  ASSERT_TRUE(end.has_end());
  EXPECT_EQ(end.end().index(), 0);
  EXPECT_EQ(end.end().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(end.end().completion_tokens(), static_cast<int>(tokens.size()));
  for (size_t i = 1; i + 2 < streamed.events.size(); ++i) EXPECT_TRUE(streamed.events[i].has_delta()) << i;
  EXPECT_EQ(streamed.Text(0), " Paris is nice 😀 indeed.");
  EXPECT_EQ(streamed.Tokens(0), tokens);
  EXPECT_EQ(streamed.events.back().trailer().usage().completion_tokens(), static_cast<int>(tokens.size()));
  EXPECT_EQ(streamed.events.back().trailer().usage().total_tokens(),
            header.prompt_tokens() + static_cast<int>(tokens.size()));

  // The unary answer to the same request has the same text.
  v1::CompleteResponse response;
  request.clear_request_id();
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_EQ(response.choices(0).text(), streamed.Text(0));
}

TEST_F(InferenceServiceTest, StopStringsEndTheChoiceAndAreNotReturned) {
  const std::vector<int32_t> tokens = Encode(" The answer is 42. END of story");
  Script({{tokens}});
  v1::CompleteRequest request = TextRequest("Q:");
  request.add_stop("never");
  request.add_stop("42. EN");
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_EQ(response.choices(0).text(), " The answer is ");
  EXPECT_EQ(response.choices(0).finish_reason(), v1::FINISH_REASON_STOP);
  // The token that completed the stop string (" END") is the last one generated.
  EXPECT_EQ(Ids(response.choices(0).token_ids()), std::vector<int32_t>(tokens.begin(), tokens.begin() + 7));

  const Streamed streamed = Stream(*stub_, request);
  ASSERT_TRUE(streamed.status.ok());
  EXPECT_EQ(streamed.Text(0), " The answer is ");
  for (const auto& e : streamed.events) {
    if (e.has_delta()) {
      EXPECT_THAT(e.delta().text(), ::testing::Not(HasSubstr("42")));
    }
  }
}

TEST_F(InferenceServiceTest, EchoPutsThePromptBeforeTheCompletion) {
  Script({{Encode(" world")}});
  v1::CompleteRequest request = TextRequest("Hello");
  request.set_echo(true);
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  EXPECT_EQ(response.choices(0).text(), "Hello world");
  EXPECT_EQ(Ids(response.choices(0).prompt_token_ids()), Encode("Hello", true));
  EXPECT_EQ(Ids(response.choices(0).token_ids()), Encode(" world"));

  const Streamed streamed = Stream(*stub_, request);
  ASSERT_TRUE(streamed.status.ok());
  ASSERT_TRUE(streamed.events.at(1).has_delta());
  EXPECT_EQ(streamed.events[1].delta().text(), "Hello");
  EXPECT_THAT(streamed.events[1].delta().token_ids(), IsEmpty());
  EXPECT_EQ(streamed.Text(0), "Hello world");

  // A token-id prompt echoes its decoded text, special tokens included.
  v1::CompleteRequest by_ids;
  for (int32_t id : Encode("Hello", true)) by_ids.mutable_token_ids()->add_ids(id);
  by_ids.set_echo(true);
  ASSERT_TRUE(Complete(*stub_, by_ids, response).ok());
  EXPECT_EQ(response.choices(0).text(), "<|begin_of_text|>Hello world");
}

TEST_F(InferenceServiceTest, NChoicesAreAnsweredAndStreamedByIndex) {
  Script({{Encode(" red apples"), FinishReason::kLength}, {Encode(" green"), FinishReason::kLength}});
  v1::CompleteRequest request = TextRequest("Colours:");
  request.set_n(2);
  v1::CompleteResponse response;
  ASSERT_TRUE(Complete(*stub_, request, response).ok());
  ASSERT_EQ(response.choices_size(), 2);
  EXPECT_EQ(response.choices(0).index(), 0);
  EXPECT_EQ(response.choices(0).text(), " red apples");
  EXPECT_EQ(response.choices(1).index(), 1);
  EXPECT_EQ(response.choices(1).text(), " green");
  EXPECT_EQ(response.usage().completion_tokens(), 3);
  EXPECT_EQ(server_.engine().requests().back().n, 2);

  const Streamed streamed = Stream(*stub_, request);
  ASSERT_TRUE(streamed.status.ok());
  EXPECT_EQ(streamed.events.front().header().num_choices(), 2);
  EXPECT_EQ(streamed.Text(0), " red apples");
  EXPECT_EQ(streamed.Text(1), " green");
  std::vector<int> ends;
  for (size_t i = 0; i < streamed.events.size(); ++i) {
    if (!streamed.events[i].has_end()) continue;
    const int index = streamed.events[i].end().index();
    ends.push_back(index);
    for (size_t j = i + 1; j < streamed.events.size(); ++j) {  // nothing of a choice after its end
      if (streamed.events[j].has_delta()) {
        EXPECT_NE(streamed.events[j].delta().index(), index);
      }
    }
  }
  EXPECT_THAT(ends, UnorderedElementsAre(0, 1));
  EXPECT_EQ(streamed.events.back().trailer().usage().completion_tokens(), 3);
}

TEST_F(InferenceServiceTest, SubmitErrorsPassThrough) {
  EngineScript script;
  script.submit_status = absl::ResourceExhaustedError("the waiting queue is full (256 requests)");
  server_.engine().SetScript(script);
  v1::CompleteResponse response;
  grpc::Status status = Complete(*stub_, TextRequest("Hi"), response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("queue is full"));
  const Streamed streamed = Stream(*stub_, TextRequest("Hi"));
  EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(streamed.events.empty()) << streamed.events.size();
}

TEST_F(InferenceServiceTest, AWorkerFailureMidStreamEndsTheCallUnavailable) {
  EngineScript script;
  script.choices = {{Encode(" one two three four five")}};
  script.fail_after_steps = 2;
  script.fail_status = absl::UnavailableError("worker rank 3 (tp_rank 1, pp_rank 1) failed");
  server_.engine().SetScript(script);
  const Streamed streamed = Stream(*stub_, TextRequest("Count:"));
  EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(streamed.status.error_message(), HasSubstr("rank 3"));
  ASSERT_FALSE(streamed.events.empty());
  EXPECT_TRUE(streamed.events.front().has_header());
  EXPECT_EQ(streamed.Tokens(0), Encode(" one two"));
  for (const auto& e : streamed.events) EXPECT_FALSE(e.has_trailer() || e.has_end());

  v1::CompleteResponse response;
  EXPECT_EQ(Complete(*stub_, TextRequest("Count:"), response).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(InferenceServiceTest, AClientDeadlineCancelsTheRequestInTheEngine) {
  EngineScript script;
  script.choices = {{Encode(" and so on")}};
  script.hang = true;
  server_.engine().SetScript(script);
  v1::CompleteRequest request = TextRequest("Go:");
  request.set_request_id("slow-unary");
  v1::CompleteResponse response;
  EXPECT_EQ(Complete(*stub_, request, response, 300ms).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(server_.engine().WaitForCancel("slow-unary", 5s));
  EXPECT_TRUE(server_.engine().WaitForDone("slow-unary", 5s));

  request.set_request_id("slow-stream");
  const Streamed streamed = Stream(*stub_, request, 300ms);
  EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(streamed.Text(0), " and so on");  // what came before the deadline
  EXPECT_TRUE(server_.engine().WaitForCancel("slow-stream", 5s));
}

TEST_F(InferenceServiceTest, AClientCancelStopsTheRequestInTheEngine) {
  EngineScript script;
  script.choices = {{Encode(" waiting")}};
  script.hang = true;
  server_.engine().SetScript(script);
  v1::CompleteRequest request = TextRequest("Go:");
  request.set_request_id("gone");
  grpc::ClientContext context;
  auto reader = stub_->CompleteStream(&context, request);
  v1::CompleteStreamResponse event;
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_TRUE(event.has_header());
  context.TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(server_.engine().WaitForCancel("gone", 5s));
}

TEST_F(InferenceServiceTest, CancelByIdEndsTheRunningCallAndDuplicateIdsAreRefused) {
  EngineScript script;
  script.choices = {{Encode(" waiting")}};
  script.hang = true;
  server_.engine().SetScript(script);
  v1::CompleteRequest request = TextRequest("Go:");
  request.set_request_id("dup");
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10s);
  auto reader = stub_->CompleteStream(&context, request);
  v1::CompleteStreamResponse event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(server_.engine().Running("dup"));

  v1::CompleteResponse response;
  grpc::Status duplicate = Complete(*stub_, request, response);
  EXPECT_EQ(duplicate.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(duplicate.error_message(), HasSubstr("dup"));

  grpc::ClientContext cancel_context;
  v1::CancelRequest cancel;
  cancel.set_request_id("dup");
  v1::CancelResponse cancelled;
  EXPECT_TRUE(stub_->Cancel(&cancel_context, cancel, &cancelled).ok());
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(InferenceServiceTest, CancelOfAnUnknownOrEmptyIdFails) {
  v1::CancelResponse response;
  v1::CancelRequest request;
  request.set_request_id("nobody");
  grpc::ClientContext c1;
  EXPECT_EQ(stub_->Cancel(&c1, request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  request.clear_request_id();
  grpc::ClientContext c2;
  grpc::Status empty = stub_->Cancel(&c2, request, &response);
  EXPECT_EQ(empty.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(empty.error_message(), HasSubstr("request_id"));
}

TEST_F(InferenceServiceTest, ChatRendersTheTemplateAndAnswersAssistantMessages) {
  std::vector<int32_t> tokens = Encode(" Paris, of course.");
  tokens.push_back(kEotId);
  Script({{tokens}, {Encode(" Lyon?"), FinishReason::kLength}});
  const std::vector<std::pair<std::string, std::string>> messages = {{"system", "Be brief."},
                                                                     {"user", "Capital of France?"}};
  v1::ChatRequest request = ChatOf(messages);
  request.set_n(2);
  v1::ChatResponse response;
  grpc::Status status = Chat(*stub_, request, response);
  ASSERT_TRUE(status.ok()) << status.error_message();

  ASSERT_EQ(response.choices_size(), 2);
  EXPECT_EQ(response.choices(0).index(), 0);
  EXPECT_EQ(response.choices(0).message().role(), "assistant");
  EXPECT_EQ(response.choices(0).message().content(), " Paris, of course.");
  EXPECT_EQ(Ids(response.choices(0).token_ids()), tokens);
  EXPECT_EQ(response.choices(0).finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(response.choices(1).index(), 1);
  EXPECT_EQ(response.choices(1).message().role(), "assistant");
  EXPECT_EQ(response.choices(1).message().content(), " Lyon?");
  EXPECT_EQ(response.choices(1).finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(response.model(), "tiny-test");

  // The engine got the rendered conversation (the template's bos only), the completion defaults and n.
  const std::vector<int32_t> prompt = RenderedLlama31(messages);
  const GenerationRequest r = server_.engine().requests().at(0);
  EXPECT_EQ(r.prompt, prompt);
  EXPECT_EQ(std::count(r.prompt.begin(), r.prompt.end(), kBosId), 1);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.max_tokens, kTestContext - static_cast<int>(prompt.size()));
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.6f);
  EXPECT_THAT(r.stop_token_ids, UnorderedElementsAre(kEndOfTextId, kEotId));
  EXPECT_EQ(response.request_id(), r.id);
  const int completion = static_cast<int>(tokens.size() + Encode(" Lyon?").size());
  EXPECT_EQ(response.usage().prompt_tokens(), static_cast<int>(prompt.size()));
  EXPECT_EQ(response.usage().completion_tokens(), completion);
  EXPECT_EQ(response.usage().total_tokens(), static_cast<int>(prompt.size()) + completion);
}

TEST_F(InferenceServiceTest, ChatPassesTheSamplingFieldsAndStopStrings) {
  Script({{Encode(" The answer is 42. END of story")}});
  v1::ChatRequest request = ChatOf({{"user", "Q?"}});
  request.set_max_tokens(9);
  request.set_temperature(0);
  request.set_top_p(0.5f);
  request.set_top_k(7);
  request.set_seed(1234);
  request.add_stop_token_ids(0);  // "!", not in the script
  request.add_stop("42. EN");
  request.set_ignore_eos(true);
  request.set_request_id("chat-mine");
  request.set_min_p(0.1f);
  request.set_repetition_penalty(1.25f);
  request.set_presence_penalty(0.5f);
  request.set_frequency_penalty(-1.0f);
  (*request.mutable_logit_bias())[42] = 10.0f;
  request.set_min_tokens(2);
  request.set_logprobs(true);
  request.set_top_logprobs(3);
  request.set_priority(5);
  v1::ChatResponse response;
  ASSERT_TRUE(Chat(*stub_, request, response).ok());
  EXPECT_EQ(response.request_id(), "chat-mine");
  EXPECT_EQ(response.choices(0).message().content(), " The answer is ");
  EXPECT_EQ(response.choices(0).finish_reason(), v1::FINISH_REASON_STOP);
  const GenerationRequest r = server_.engine().requests().at(0);
  EXPECT_EQ(r.id, "chat-mine");
  EXPECT_EQ(r.max_tokens, 9);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 7);
  EXPECT_EQ(r.sampling.seed, 1234u);
  EXPECT_THAT(r.stop_token_ids, ElementsAre(0));  // ignore_eos: no eos ids
  EXPECT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_EQ(r.sampling.repetition_penalty, 1.25f);
  EXPECT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_EQ(r.sampling.frequency_penalty, -1.0f);
  EXPECT_THAT(r.sampling.logit_bias, ElementsAre(std::make_pair(42, 10.0f)));
  EXPECT_EQ(r.sampling.min_tokens, 2);
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 3);
  EXPECT_FALSE(r.sampling.prompt_logprobs);
  EXPECT_EQ(r.priority, 5);
  // The logprobs of the kept tokens (the stop string's last token included), as Complete's.
  const std::vector<int32_t> kept = Ids(response.choices(0).token_ids());
  ExpectFakeLogprobs(response.choices(0).logprobs(), kept, 3);

  const ChatStreamed streamed = StreamChat(*stub_, request);
  ASSERT_TRUE(streamed.status.ok());
  google::protobuf::RepeatedPtrField<v1::TokenLogprob> logprobs;
  for (const auto& e : streamed.events) {
    if (e.has_delta()) logprobs.MergeFrom(e.delta().logprobs());
  }
  ExpectFakeLogprobs(logprobs, kept, 3);
}

TEST_F(InferenceServiceTest, ChatStreamSendsHeaderContentDeltasEndsAndTrailerAndMatchesChat) {
  Script({{Encode(" Paris is nice 😀 indeed."), FinishReason::kLength},
          {Encode(" green"), FinishReason::kLength}});
  const std::vector<std::pair<std::string, std::string>> messages = {{"user", "Say something."}};
  v1::ChatRequest request = ChatOf(messages);
  request.set_n(2);
  request.set_request_id("chat-s1");
  const ChatStreamed streamed = StreamChat(*stub_, request);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();

  ASSERT_GE(streamed.events.size(), 6u);
  ASSERT_TRUE(streamed.events.front().has_header());
  const v1::StreamHeader& header = streamed.events.front().header();
  EXPECT_EQ(header.request_id(), "chat-s1");
  EXPECT_EQ(header.model(), "tiny-test");
  EXPECT_EQ(header.prompt_tokens(), static_cast<int>(RenderedLlama31(messages).size()));
  EXPECT_EQ(header.num_choices(), 2);
  ASSERT_TRUE(streamed.events.back().has_trailer());
  std::vector<int> ends;
  for (size_t i = 1; i + 1 < streamed.events.size(); ++i) {
    const v1::ChatStreamResponse& e = streamed.events[i];
    ASSERT_TRUE(e.has_delta() || e.has_end()) << i;
    if (!e.has_end()) continue;
    ends.push_back(e.end().index());
    EXPECT_EQ(e.end().finish_reason(), v1::FINISH_REASON_LENGTH);
    for (size_t j = i + 1; j < streamed.events.size(); ++j) {  // nothing of a choice after its end
      if (streamed.events[j].has_delta()) {
        EXPECT_NE(streamed.events[j].delta().index(), e.end().index());
      }
    }
  }
  EXPECT_THAT(ends, UnorderedElementsAre(0, 1));
  EXPECT_EQ(streamed.Content(0), " Paris is nice 😀 indeed.");
  EXPECT_EQ(streamed.Tokens(0), Encode(" Paris is nice 😀 indeed."));
  EXPECT_EQ(streamed.Content(1), " green");
  const int completion =
      static_cast<int>(Encode(" Paris is nice 😀 indeed.").size() + Encode(" green").size());
  EXPECT_EQ(streamed.events.back().trailer().usage().completion_tokens(), completion);
  EXPECT_EQ(streamed.events.back().trailer().usage().total_tokens(), header.prompt_tokens() + completion);

  // The unary answer to the same request has the same content.
  request.clear_request_id();
  v1::ChatResponse response;
  ASSERT_TRUE(Chat(*stub_, request, response).ok());
  EXPECT_EQ(response.choices(0).message().content(), streamed.Content(0));
  EXPECT_EQ(response.choices(1).message().content(), streamed.Content(1));
}

TEST_F(InferenceServiceTest, ChatErrorsPassThroughAndAClientDeadlineCancels) {
  EngineScript script;
  script.choices = {{Encode(" one two three four five")}};
  script.fail_after_steps = 2;
  script.fail_status = absl::UnavailableError("worker rank 3 (tp_rank 1, pp_rank 1) failed");
  server_.engine().SetScript(script);
  const ChatStreamed streamed = StreamChat(*stub_, ChatOf({{"user", "Count."}}));
  EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(streamed.status.error_message(), HasSubstr("rank 3"));
  EXPECT_EQ(streamed.Tokens(0), Encode(" one two"));
  for (const auto& e : streamed.events) EXPECT_FALSE(e.has_trailer() || e.has_end());
  v1::ChatResponse response;
  EXPECT_EQ(Chat(*stub_, ChatOf({{"user", "Count."}}), response).error_code(), grpc::StatusCode::UNAVAILABLE);

  script = EngineScript();
  script.choices = {{Encode(" and so on")}};
  script.hang = true;
  server_.engine().SetScript(script);
  v1::ChatRequest request = ChatOf({{"user", "Go."}});
  request.set_request_id("slow-chat");
  EXPECT_EQ(Chat(*stub_, request, response, 300ms).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(server_.engine().WaitForCancel("slow-chat", 5s));
  EXPECT_TRUE(server_.engine().WaitForDone("slow-chat", 5s));
  request.set_request_id("slow-chat-stream");
  const ChatStreamed slow = StreamChat(*stub_, request, 300ms);
  EXPECT_EQ(slow.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(slow.Content(0), " and so on");
  EXPECT_TRUE(server_.engine().WaitForCancel("slow-chat-stream", 5s));
}

// A template that prints tools, names and tool call ids, written to a fresh model directory.
std::unique_ptr<ModelChatTemplates> ToolsPrintingTemplates() {
  const std::string dir = ::testing::TempDir() + "/tools-template-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const nlohmann::ordered_json config = {
      {"bos_token", "<|begin_of_text|>"},
      {"chat_template",
       "{{ bos_token }}{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}"
       "{% for m in messages %}<|start_header_id|>{{ m.role }}"
       "{% if m.name is defined %} name={{ m.name }}{% endif %}"
       "{% if m.tool_call_id is defined %} id={{ m.tool_call_id }}{% endif %}"
       "<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}"
       "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"}};
  std::ofstream(dir + "/tokenizer_config.json") << config.dump();
  auto templates = ModelChatTemplates::Load(dir);
  EXPECT_OK(templates);
  return templates.ok() ? std::make_unique<ModelChatTemplates>(*std::move(templates)) : nullptr;
}

TEST(ChatToolsTest, ToolsNamesAndToolCallIdsReachTheTemplate) {
  ApiTestServer server(Llama31Tokenizer(), TestModel(), ToolsPrintingTemplates());
  server.engine().SetScript(ScriptOf({{Encode(" Sunny.")}}));
  auto stub = server.InferenceStub();
  v1::ChatRequest request = ChatOf({{"user", "Weather?"}, {"tool", "{\"sky\": \"clear\"}"}});
  request.mutable_messages(0)->set_name("ann");
  request.mutable_messages(1)->set_tool_call_id("call_1");
  request.set_tools(R"([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])");
  request.set_max_tokens(4);
  v1::ChatResponse response;
  grpc::Status status = Chat(*stub, request, response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.choices(0).message().content(), " Sunny.");

  const std::string expected =
      "<|begin_of_text|>Tools: [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
      "\"parameters\": {}}}]\n"
      "<|start_header_id|>user name=ann<|end_header_id|>\n\nWeather?<|eot_id|>"
      "<|start_header_id|>tool id=call_1<|end_header_id|>\n\n{\"sky\": \"clear\"}<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n";
  ASSERT_EQ(server.engine().requests().size(), 1u);
  EXPECT_EQ(server.engine().requests()[0].prompt, Encode(expected));

  // Without tools the template sees none.
  request.clear_tools();
  ASSERT_TRUE(Chat(*stub, request, response).ok());
  const std::vector<int32_t> without = server.engine().requests().at(1).prompt;
  const std::string no_tools = "<|begin_of_text|>" + expected.substr(expected.find("<|start_header_id|>"));
  EXPECT_EQ(without, Encode(no_tools));
}

}  // namespace
}  // namespace tessera::testing
