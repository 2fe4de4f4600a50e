// libFuzzer target for the OpenAI-compatible HTTP API's request bodies: any bytes, given as the body of
// /v1/completions, /v1/chat/completions, /tokenize and /detokenize, must give an accepted call or an OpenAI
// error, never a crash, undefined behaviour or an accepted request that breaks GenerationRequest's contract.
// Each body goes to a server with the tokenizer and chat template and to one without either.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "coordinator/http/openai_api.h"
#include "tests/fuzz/fuzz_model.h"

namespace tessera::fuzz {
namespace {

void Prepare(const OpenAiApi& api, ApiKind kind, std::string_view body) {
  OpenAiCall call;
  std::optional<ApiError> error = api.Prepare(kind, body, call);
  if (error) {
    if (error->status < 400 || error->status > 599) std::abort();
    (void)ErrorReply(*error);
    return;
  }
  if (call.prompts.empty() || call.n < 1) std::abort();
  for (const PreparedCompletion& prepared : call.prompts) CheckPrepared(prepared, api.options().limits);
  OpenAiCallState state(call);
  (void)state.StreamStart();  // echoes prompts (text and logprobs) when asked
}

}  // namespace
}  // namespace tessera::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  using namespace tessera::fuzz;
  static const OpenAiApi* const full =
      new OpenAiApi(FuzzModel(), FuzzTokenizer(), FuzzChat(),
                    OpenAiApiOptions{.limits = FuzzLimits(), .resumable_streams = true});
  static const OpenAiApi* const bare = new OpenAiApi(FuzzModel(), nullptr, nullptr, OpenAiApiOptions{});
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (const OpenAiApi* api : {full, bare}) {
    Prepare(*api, ApiKind::kCompletion, body);
    Prepare(*api, ApiKind::kChat, body);
    (void)api->Tokenize(body);
    (void)api->Detokenize(body);
  }
  return 0;
}
