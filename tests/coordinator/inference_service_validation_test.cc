// InferenceService and ModelService through the generated client stubs: every INVALID_ARGUMENT case of a
// completion (unary and streamed; code and the field in the message; nothing reaches the engine), a model
// without a tokenizer, every bad Chat request (unary and streamed), Tokenize / Detokenize against the real
// Llama 3.1 tokenizer, ListModels / GetModel.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>

#include "coordinator/inference_service.h"
#include "tests/coordinator/api_test_server.h"

namespace tessera::testing {
namespace {

using namespace std::chrono_literals;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct BadRequest {
  std::string name;
  std::function<void(v1::CompleteRequest&)> edit;
  std::vector<std::string> message_parts;  // each must appear in the message
};

std::vector<BadRequest> BadRequests() {
  auto ids = [](std::vector<int32_t> ids) {
    return [ids](v1::CompleteRequest& r) {
      r.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
    };
  };
  auto then = [](auto a, auto b) {
    return [a, b](v1::CompleteRequest& r) {
      a(r);
      b(r);
    };
  };
  return {
      {"unknown model", [](auto& r) { r.set_model("llama-9000"); }, {"model", "llama-9000", "tiny-test"}},
      {"missing prompt", [](auto& r) { r.clear_prompt(); }, {"prompt"}},
      {"empty text", [](auto& r) { r.set_text(""); }, {"prompt text"}},
      {"empty token ids", [](auto& r) { r.mutable_token_ids(); }, {"prompt token_ids"}},
      {"chat with no messages", [](auto& r) { r.mutable_chat(); }, {"prompt chat has no messages"}},
      {"chat message without a role",
       [](auto& r) { r.mutable_chat()->add_messages()->set_content("Hi"); },
       {"chat.messages[0].role is empty"}},
      {"id past the vocabulary", ids({kBosId, 128256}), {"prompt token_ids[1] = 128256", "128256)"}},
      {"negative id", ids({-1, 5}), {"prompt token_ids[0] = -1"}},
      {"zero max_tokens", [](auto& r) { r.set_max_tokens(0); }, {"max_tokens", "0"}},
      {"negative max_tokens", [](auto& r) { r.set_max_tokens(-3); }, {"max_tokens", "-3"}},
      {"negative temperature", [](auto& r) { r.set_temperature(-0.5f); }, {"temperature", "-0.5"}},
      {"zero top_p", [](auto& r) { r.set_top_p(0); }, {"top_p"}},
      {"top_p over one", [](auto& r) { r.set_top_p(1.5f); }, {"top_p", "1.5"}},
      {"negative top_k", [](auto& r) { r.set_top_k(-1); }, {"top_k", "-1"}},
      {"zero n", [](auto& r) { r.set_n(0); }, {"n must be in [1, 16]", "0"}},
      {"n over the limit", [](auto& r) { r.set_n(17); }, {"n must be in [1, 16]", "17"}},
      {"stop id past the vocabulary",
       [](auto& r) { r.add_stop_token_ids(200000); },
       {"stop_token_ids[0] = 200000"}},
      {"min_p over one", [](auto& r) { r.set_min_p(1.5f); }, {"min_p must be in [0, 1]", "1.5"}},
      {"negative min_p", [](auto& r) { r.set_min_p(-0.1f); }, {"min_p must be in [0, 1]", "-0.1"}},
      {"zero repetition_penalty",
       [](auto& r) { r.set_repetition_penalty(0); },
       {"repetition_penalty must be > 0"}},
      {"NaN repetition_penalty",
       [](auto& r) { r.set_repetition_penalty(std::nanf("")); },
       {"repetition_penalty must be > 0"}},
      {"presence_penalty over two",
       [](auto& r) { r.set_presence_penalty(2.5f); },
       {"presence_penalty must be in [-2, 2]", "2.5"}},
      {"frequency_penalty under minus two",
       [](auto& r) { r.set_frequency_penalty(-3); },
       {"frequency_penalty must be in [-2, 2]", "-3"}},
      {"logit_bias id past the vocabulary",
       [](auto& r) { (*r.mutable_logit_bias())[128256] = 1; },
       {"logit_bias token id 128256 is outside the vocabulary [0, 128256)"}},
      {"logit_bias negative id",
       [](auto& r) { (*r.mutable_logit_bias())[-1] = 1; },
       {"logit_bias token id -1"}},
      {"logit_bias over 100",
       [](auto& r) { (*r.mutable_logit_bias())[5] = 100.5f; },
       {"logit_bias[5] = 100.5 is outside [-100, 100]"}},
      {"negative min_tokens", [](auto& r) { r.set_min_tokens(-1); }, {"min_tokens must be >= 0", "-1"}},
      {"min_tokens over max_tokens",
       [](auto& r) { r.set_min_tokens(5); },
       {"min_tokens must be in [0, max_tokens = 4], got 5"}},
      {"top_logprobs over 20",
       [](auto& r) {
         r.set_logprobs(true);
         r.set_top_logprobs(21);
       },
       {"top_logprobs must be in [0, 20], got 21"}},
      {"negative top_logprobs",
       [](auto& r) {
         r.set_logprobs(true);
         r.set_top_logprobs(-1);
       },
       {"top_logprobs must be in [0, 20], got -1"}},
      {"top_logprobs without logprobs",
       [](auto& r) { r.set_top_logprobs(3); },
       {"top_logprobs needs logprobs"}},
      {"prompt as long as the context",
       then(ids(std::vector<int32_t>(kTestContext, 9906)), [](auto& r) { r.clear_max_tokens(); }),
       {"prompt", "64 tokens", "context", "64"}},
      {"prompt longer than the context", ids(std::vector<int32_t>(70, 9906)), {"prompt", "70", "64"}},
      {"prompt + max_tokens over the context",
       then(ids(std::vector<int32_t>(10, 9906)), [](auto& r) { r.set_max_tokens(60); }),
       {"max_tokens (60)", "prompt (10 tokens)", "70", "64"}},
  };
}

class ValidationTest : public ::testing::Test {
 protected:
  ApiTestServer server_;
  std::unique_ptr<v1::InferenceService::Stub> stub_ = server_.InferenceStub();
};

TEST_F(ValidationTest, EveryBadFieldIsInvalidArgumentNamingIt) {
  for (const BadRequest& bad : BadRequests()) {
    SCOPED_TRACE(bad.name);
    v1::CompleteRequest request;
    request.set_text("Hello");
    request.set_max_tokens(4);
    bad.edit(request);
    {
      grpc::ClientContext context;
      v1::CompleteResponse response;
      grpc::Status status = stub_->Complete(&context, request, &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
      for (const std::string& part : bad.message_parts) EXPECT_THAT(status.error_message(), HasSubstr(part));
    }
    {
      grpc::ClientContext context;
      auto reader = stub_->CompleteStream(&context, request);
      v1::CompleteStreamResponse event;
      EXPECT_FALSE(reader->Read(&event));
      grpc::Status status = reader->Finish();
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
      for (const std::string& part : bad.message_parts) EXPECT_THAT(status.error_message(), HasSubstr(part));
    }
  }
  EXPECT_TRUE(server_.engine().requests().empty());
}

struct BadChat {
  std::string name;
  std::function<void(v1::ChatRequest&)> edit;
  grpc::StatusCode code;
  std::vector<std::string> message_parts;  // each must appear in the message
};

std::vector<BadChat> BadChats() {
  constexpr auto kInvalid = grpc::StatusCode::INVALID_ARGUMENT;
  return {
      {"unknown model",
       [](auto& r) { r.set_model("llama-9000"); },
       grpc::StatusCode::NOT_FOUND,
       {"model", "llama-9000", "tiny-test"}},
      {"no messages", [](auto& r) { r.clear_messages(); }, kInvalid, {"messages is empty"}},
      {"a message without a role",
       [](auto& r) { r.add_messages()->set_content("Hi again"); },
       kInvalid,
       {"messages[1].role is empty"}},
      {"tools that are not JSON", [](auto& r) { r.set_tools("[{\"type\": "); }, kInvalid, {"tools", "JSON"}},
      {"tools that are not an array",
       [](auto& r) { r.set_tools(R"({"type": "function"})"); },
       kInvalid,
       {"tools must be a JSON array", "object"}},
      {"negative temperature", [](auto& r) { r.set_temperature(-0.5f); }, kInvalid, {"temperature", "-0.5"}},
      {"zero max_tokens", [](auto& r) { r.set_max_tokens(0); }, kInvalid, {"max_tokens", "0"}},
      {"n over the limit", [](auto& r) { r.set_n(17); }, kInvalid, {"n must be in [1, 16]", "17"}},
      {"min_p over one", [](auto& r) { r.set_min_p(2); }, kInvalid, {"min_p must be in [0, 1]"}},
      {"negative repetition_penalty",
       [](auto& r) { r.set_repetition_penalty(-1); },
       kInvalid,
       {"repetition_penalty must be > 0"}},
      {"presence_penalty out of range",
       [](auto& r) { r.set_presence_penalty(-2.5f); },
       kInvalid,
       {"presence_penalty must be in [-2, 2]"}},
      {"frequency_penalty out of range",
       [](auto& r) { r.set_frequency_penalty(3); },
       kInvalid,
       {"frequency_penalty must be in [-2, 2]"}},
      {"logit_bias out of range",
       [](auto& r) { (*r.mutable_logit_bias())[1] = -101; },
       kInvalid,
       {"logit_bias[1] = -101 is outside [-100, 100]"}},
      {"negative min_tokens", [](auto& r) { r.set_min_tokens(-2); }, kInvalid, {"min_tokens must be >= 0"}},
      {"top_logprobs over 20",
       [](auto& r) {
         r.set_logprobs(true);
         r.set_top_logprobs(25);
       },
       kInvalid,
       {"top_logprobs must be in [0, 20], got 25"}},
      {"stop id past the vocabulary",
       [](auto& r) { r.add_stop_token_ids(200000); },
       kInvalid,
       {"stop_token_ids[0] = 200000"}},
      {"prompt + max_tokens over the context",
       [](auto& r) { r.set_max_tokens(kTestContext); },
       kInvalid,
       {"max_tokens (64)", "exceeds max_model_len (the served context length) of 64"}},
  };
}

TEST_F(ValidationTest, EveryBadChatRequestFailsNamingTheField) {
  for (const BadChat& bad : BadChats()) {
    SCOPED_TRACE(bad.name);
    v1::ChatRequest request;
    v1::ChatMessage* m = request.add_messages();
    m->set_role("user");
    m->set_content("Hello");
    request.set_max_tokens(4);
    bad.edit(request);
    {
      grpc::ClientContext context;
      v1::ChatResponse response;
      grpc::Status status = stub_->Chat(&context, request, &response);
      EXPECT_EQ(status.error_code(), bad.code) << status.error_message();
      for (const std::string& part : bad.message_parts) EXPECT_THAT(status.error_message(), HasSubstr(part));
    }
    {
      grpc::ClientContext context;
      auto reader = stub_->ChatStream(&context, request);
      v1::ChatStreamResponse event;
      EXPECT_FALSE(reader->Read(&event));
      grpc::Status status = reader->Finish();
      EXPECT_EQ(status.error_code(), bad.code) << status.error_message();
      for (const std::string& part : bad.message_parts) EXPECT_THAT(status.error_message(), HasSubstr(part));
    }
  }
  EXPECT_TRUE(server_.engine().requests().empty());
}

TEST_F(ValidationTest, TheLongestAllowedRequestFillsTheContextExactly) {
  server_.engine().SetScript(ScriptOf({{{9906}}}));
  v1::CompleteRequest request;
  for (int i = 0; i < 10; ++i) request.mutable_token_ids()->add_ids(9906);
  request.set_max_tokens(kTestContext - 10);
  grpc::ClientContext context;
  v1::CompleteResponse response;
  EXPECT_TRUE(stub_->Complete(&context, request, &response).ok());
  // The served model's own name is accepted as well as an empty one.
  request.set_model("tiny-test");
  grpc::ClientContext again;
  EXPECT_TRUE(stub_->Complete(&again, request, &response).ok());
}

TEST(NoTokenizerTest, TextNeedsTheTokenizerButTokenIdsWork) {
  ApiTestServer server(/*tokenizer=*/nullptr);
  server.engine().SetScript(ScriptOf({{{9906, 1917}}}));
  auto stub = server.InferenceStub();

  v1::CompleteRequest text;
  text.set_text("Hello");
  grpc::ClientContext c1;
  v1::CompleteResponse response;
  grpc::Status status = stub->Complete(&c1, text, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("tokenizer.json"), HasSubstr("/models/tiny-test")));

  v1::CompleteRequest ids;
  ids.mutable_token_ids()->add_ids(kBosId);
  ids.set_max_tokens(4);
  grpc::ClientContext c2;
  ASSERT_TRUE(stub->Complete(&c2, ids, &response).ok());
  EXPECT_THAT(response.choices(0).token_ids(), ElementsAre(9906, 1917));
  EXPECT_EQ(response.choices(0).text(), "");

  ids.add_stop("x");
  grpc::ClientContext c3;
  EXPECT_EQ(stub->Complete(&c3, ids, &response).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  v1::TokenizeRequest tokenize;
  tokenize.set_text("Hello");
  v1::TokenizeResponse tokens;
  grpc::ClientContext c4;
  status = stub->Tokenize(&c4, tokenize, &tokens);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("tokenizer.json"));
}

TEST_F(ValidationTest, ChatIsRenderedWithTheModelsTemplateAndTokenizedWithoutAddingBos) {
  server_.engine().SetScript(ScriptOf({{{9906}}}));
  v1::CompleteRequest request;
  for (auto [role, content] : {std::pair<const char*, const char*>{"system", "Be brief."}, {"user", "Hi!"}}) {
    v1::ChatMessage* m = request.mutable_chat()->add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  request.set_max_tokens(4);
  request.set_echo(true);
  grpc::ClientContext context;
  v1::CompleteResponse response;
  grpc::Status status = stub_->Complete(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();

  nlohmann::ordered_json render = {
      {"messages", {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi!"}}}},
      {"add_generation_prompt", true}};
  std::unique_ptr<ModelChatTemplates> templates = Llama31ChatTemplates();
  ASSERT_OK_AND_ASSIGN(std::string text, templates->Render(render));
  EXPECT_THAT(text, HasSubstr("<|start_header_id|>assistant<|end_header_id|>"));
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, Llama31Tokenizer()->Encode(text, false));
  ASSERT_EQ(server_.engine().requests().size(), 1u);
  EXPECT_EQ(server_.engine().requests()[0].prompt, ids);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kBosId), 1);            // the template's bos only
  EXPECT_EQ(response.choices(0).text().substr(0, text.size()), text);  // echo: the rendered prompt
}

TEST(NoChatTemplateTest, ChatNeedsTokenizerConfig) {
  ApiTestServer server(Llama31Tokenizer(), TestModel(), /*chat_templates=*/nullptr);
  auto stub = server.InferenceStub();
  v1::CompleteRequest request;
  v1::ChatMessage* m = request.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi");
  grpc::ClientContext context;
  v1::CompleteResponse response;
  grpc::Status status = stub->Complete(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr("tokenizer_config.json"), HasSubstr("/models/tiny-test")));
  EXPECT_TRUE(server.engine().requests().empty());
}

TEST(NoChatTemplateTest, ChatAndChatStreamNeedTokenizerConfig) {
  ApiTestServer server(Llama31Tokenizer(), TestModel(), /*chat_templates=*/nullptr);
  auto stub = server.InferenceStub();
  v1::ChatRequest request;
  v1::ChatMessage* m = request.add_messages();
  m->set_role("user");
  m->set_content("Hi");
  grpc::ClientContext c1;
  v1::ChatResponse response;
  grpc::Status status = stub->Chat(&c1, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr("tokenizer_config.json"), HasSubstr("/models/tiny-test")));
  grpc::ClientContext c2;
  auto reader = stub->ChatStream(&c2, request);
  v1::ChatStreamResponse event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(server.engine().requests().empty());
}

TEST_F(ValidationTest, TokenizeMatchesTheLlama31Tokenizer) {
  v1::TokenizeRequest request;
  request.set_text("Hello world! 東京 😀 <|eot_id|>");
  v1::TokenizeResponse response;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub_->Tokenize(&c1, request, &response).ok());
  // Hugging Face tokenizers: encode(text, add_special_tokens=False).ids
  EXPECT_THAT(response.token_ids(), ElementsAre(9906, 1917, 0, 119109, 91416, 220, 128009));
  request.set_add_special_tokens(true);
  grpc::ClientContext c2;
  ASSERT_TRUE(stub_->Tokenize(&c2, request, &response).ok());
  EXPECT_EQ(response.token_ids(0), kBosId);

  request.set_model("other");
  grpc::ClientContext c3;
  grpc::Status status = stub_->Tokenize(&c3, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model"));
}

TEST_F(ValidationTest, DetokenizeDecodesAndNamesIdsOutsideTheVocabulary) {
  v1::DetokenizeRequest request;
  for (int32_t id : {kBosId, 9906, 1917, 0, 119109, 91416}) request.add_token_ids(id);
  v1::DetokenizeResponse response;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub_->Detokenize(&c1, request, &response).ok());
  EXPECT_EQ(response.text(), "<|begin_of_text|>Hello world! 東京 😀");
  request.set_skip_special_tokens(true);
  grpc::ClientContext c2;
  ASSERT_TRUE(stub_->Detokenize(&c2, request, &response).ok());
  EXPECT_EQ(response.text(), "Hello world! 東京 😀");

  request.add_token_ids(999999);
  request.add_token_ids(-2);
  grpc::ClientContext c3;
  grpc::Status status = stub_->Detokenize(&c3, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr("token_ids[6] = 999999"), HasSubstr("token_ids[7] = -2"), HasSubstr("128256")));
}

TEST(ModelServiceTest, ListsAndGetsTheServedModel) {
  ApiTestServer server;
  auto stub = server.ModelStub();
  v1::ListModelsResponse list;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub->ListModels(&c1, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  const v1::Model& model = list.models(0);
  EXPECT_EQ(model.id(), "tiny-test");
  EXPECT_EQ(model.max_context_length(), kTestContext);
  EXPECT_EQ(model.vocab_size(), 128256);
  EXPECT_EQ(model.tp_size(), 2);
  EXPECT_EQ(model.pp_size(), 3);
  EXPECT_EQ(model.num_layers(), 4);
  EXPECT_EQ(model.device(), "cpu");
  EXPECT_TRUE(model.ready());

  server.engine().set_ready(false);
  v1::GetModelRequest get;
  get.set_id("tiny-test");
  v1::Model got;
  grpc::ClientContext c2;
  ASSERT_TRUE(stub->GetModel(&c2, get, &got).ok());
  EXPECT_EQ(got.id(), "tiny-test");
  EXPECT_FALSE(got.ready());

  get.set_id("llama-9000");
  grpc::ClientContext c3;
  grpc::Status status = stub->GetModel(&c3, get, &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("llama-9000"), HasSubstr("tiny-test")));

  get.clear_id();
  grpc::ClientContext c4;
  status = stub->GetModel(&c4, get, &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("id"));
}

}  // namespace
}  // namespace tessera::testing
