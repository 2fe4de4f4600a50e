// ApiTestServer: InferenceService and ModelService on a real gRPC server (a loopback port the OS picks) over
// a FakeEngine, with the real Llama 3.1 tokenizer from tests/data (its post-processor adds bos), for the API
// layer's tests.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>

#include "coordinator/inference_service.h"
#include "tests/coordinator/fake_engine.h"
#include "tests/util/status_matchers.h"

namespace tessera::testing {

constexpr int32_t kBosId = 128000;
constexpr int32_t kEotId = 128009;
constexpr int32_t kEndOfTextId = 128001;
constexpr int kTestContext = 64;

// A small served model: the Llama 3 vocabulary, a 64-token context, the instruct defaults.
inline ServedModel TestModel() {
  ServedModel model;
  model.id = "tiny-test";
  model.dir = "/models/tiny-test";
  model.vocab_size = 128256;
  model.max_position_embeddings = kTestContext;
  model.num_layers = 4;
  model.eos_token_ids = {kEndOfTextId, kEotId};
  model.default_temperature = 0.6f;
  model.default_top_p = 0.9f;
  model.tp_size = 2;
  model.pp_size = 3;
  model.device = "cpu";
  return model;
}

inline std::shared_ptr<const Tokenizer> Llama31Tokenizer() {
  static const std::shared_ptr<const Tokenizer> tokenizer = [] {
    auto t = Tokenizer::Load(TESSERA_TEST_DATA_DIR "/llama-3.1-tokenizer");
    EXPECT_OK(t);
    return t.ok() ? std::shared_ptr<const Tokenizer>(std::move(*t)) : nullptr;
  }();
  return tokenizer;
}

// The Llama 3.1 tokenizer_config.json's chat template.
inline std::unique_ptr<ModelChatTemplates> Llama31ChatTemplates() {
  auto t = ModelChatTemplates::Load(TESSERA_TEST_DATA_DIR "/llama-3.1-tokenizer");
  EXPECT_OK(t);
  return t.ok() ? std::make_unique<ModelChatTemplates>(*std::move(t)) : nullptr;
}

class ApiTestServer {
 public:
  explicit ApiTestServer(std::shared_ptr<const Tokenizer> tokenizer = Llama31Tokenizer(),
                         ServedModel model = TestModel(),
                         std::unique_ptr<ModelChatTemplates> chat_templates = Llama31ChatTemplates())
      : inference_(model, std::move(tokenizer), engine_, InferenceServiceOptions(),
                   std::make_shared<ChatRenderer>(std::move(chat_templates), model.dir)),
        models_(model, engine_) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&inference_);
    builder.RegisterService(&models_);
    server_ = builder.BuildAndStart();
    channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
  }
  ~ApiTestServer() { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2)); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  FakeEngine& engine() { return engine_; }
  std::unique_ptr<v1::InferenceService::Stub> InferenceStub() {
    return v1::InferenceService::NewStub(channel_);
  }
  std::unique_ptr<v1::ModelService::Stub> ModelStub() { return v1::ModelService::NewStub(channel_); }

 private:
  FakeEngine engine_;  // outlives the server: the services' calls use it
  InferenceService inference_;
  ModelService models_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

}  // namespace tessera::testing
