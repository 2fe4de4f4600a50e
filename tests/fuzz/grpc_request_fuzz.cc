// libFuzzer target for the gRPC API's request checks: byte 0 chooses the request (bit 0: a ChatRequest, else
// a CompleteRequest; bit 1: a server without a tokenizer), the rest is the serialized message. Whatever
// parses goes through what InferenceService does before the engine (chat messages rendered with the model's
// template, CompletionOfChat, PrepareCompletion) and must be accepted within GenerationRequest's contract or
// refused with a status, never crash.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "coordinator/completion_request.h"
#include "google/protobuf/stubs/logging.h"
#include "tessera/v1/inference.pb.h"
#include "tests/fuzz/fuzz_model.h"

namespace tessera::fuzz {
namespace {

// InferenceService::RenderChat's rendering of chat messages.
absl::StatusOr<std::string> RenderChat(ChatRenderer& chat,
                                       const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages) {
  nlohmann::ordered_json rendered = nlohmann::ordered_json::array();
  for (const v1::ChatMessage& m : messages) {
    if (m.role().empty()) return absl::InvalidArgumentError("role is empty");
    nlohmann::ordered_json message = {{"role", m.role()}, {"content", m.content()}};
    if (!m.name().empty()) message["name"] = m.name();
    if (!m.tool_call_id().empty()) message["tool_call_id"] = m.tool_call_id();
    rendered.push_back(std::move(message));
  }
  return chat.Render({{"messages", std::move(rendered)}, {"add_generation_prompt", true}});
}

}  // namespace
}  // namespace tessera::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  using namespace tessera::fuzz;
  static const ServedModel model = FuzzModel();
  static const CompletionLimits limits = FuzzLimits();
  static const std::shared_ptr<const Tokenizer> tokenizer = FuzzTokenizer();
  static const std::shared_ptr<ChatRenderer> chat = FuzzChat();
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);  // invalid UTF-8 is no news
  (void)quiet;
  if (size < 1) return 0;
  const bool is_chat = (data[0] & 1) != 0;
  const Tokenizer* const use_tokenizer = (data[0] & 2) != 0 ? nullptr : tokenizer.get();
  v1::CompleteRequest request;
  if (is_chat) {
    v1::ChatRequest chat_request;
    if (!chat_request.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    request = CompletionOfChat(chat_request);
  } else if (!request.ParseFromArray(data + 1, static_cast<int>(size - 1))) {
    return 0;
  }
  std::string rendered;
  const bool has_chat =
      request.prompt_case() == v1::CompleteRequest::kChat && !request.chat().messages().empty();
  if (has_chat) {
    absl::StatusOr<std::string> text = RenderChat(*chat, request.chat().messages());
    if (!text.ok()) return 0;
    rendered = *std::move(text);
  }
  absl::StatusOr<PreparedCompletion> prepared =
      PrepareCompletion(request, model, use_tokenizer, limits, has_chat ? &rendered : nullptr);
  if (prepared.ok()) {
    CheckPrepared(*prepared, limits);
  } else if (prepared.status().message().empty()) {
    std::abort();  // every refusal names the field at fault
  }
  return 0;
}
