// The served model of the request fuzzers (http_request_fuzz, grpc_request_fuzz): a small ServedModel with
// the cut-down Llama 3.1 tokenizer and chat template of tests/fuzz/data/tokenizer (make_seeds.py writes
// them), loaded once per process, and the invariants every prepared request must keep.
#pragma once

#include <cstdlib>
#include <memory>
#include <string>

#include "coordinator/chat_renderer.h"
#include "coordinator/completion_request.h"
#include "coordinator/served_model.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace tessera::fuzz {

inline constexpr int kVocabSize = 512;
inline constexpr int kContext = 256;

inline std::string FuzzModelDir() { return TESSERA_SOURCE_DIR "/tests/fuzz/data/tokenizer"; }

inline ServedModel FuzzModel() {
  ServedModel model;
  model.id = "fuzz-model";
  model.dir = FuzzModelDir();
  model.vocab_size = kVocabSize;
  model.max_position_embeddings = kContext;
  model.num_layers = 2;
  model.eos_token_ids = {501, 504};
  model.default_temperature = 0.6f;
  model.default_top_p = 0.9f;
  return model;
}

inline CompletionLimits FuzzLimits() {
  CompletionLimits limits;
  limits.max_n = 4;
  limits.max_tokens = 128;
  limits.max_prompt_tokens = 200;
  limits.max_stop_strings = 4;
  limits.max_stop_string_bytes = 64;
  return limits;
}

// The fuzzers cannot run without their data: a missing or broken file is a setup error, not a finding.
[[noreturn]] inline void SetupFailed(const absl::Status& status) {
  std::fprintf(stderr, "fuzz setup: %s\n", std::string(status.message()).c_str());
  std::abort();
}

inline std::shared_ptr<const Tokenizer> FuzzTokenizer() {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(FuzzModelDir());
  if (!tokenizer.ok()) SetupFailed(tokenizer.status());
  return std::shared_ptr<const Tokenizer>(std::move(tokenizer).value());
}

inline std::shared_ptr<ChatRenderer> FuzzChat() {
  absl::StatusOr<ModelChatTemplates> templates = ModelChatTemplates::Load(FuzzModelDir());
  if (!templates.ok()) SetupFailed(templates.status());
  return std::make_shared<ChatRenderer>(std::make_unique<ModelChatTemplates>(std::move(templates).value()),
                                        FuzzModelDir());
}

// What PrepareCompletion promises of an accepted request (GenerationRequest's contract); aborts otherwise.
inline void CheckPrepared(const PreparedCompletion& prepared, const CompletionLimits& limits) {
  const GenerationRequest& r = prepared.request;
  bool ok = !r.prompt.empty() && r.max_tokens > 0 && r.n >= 1 && r.n <= limits.max_n &&
            static_cast<int64_t>(r.prompt.size()) + r.max_tokens <= kContext &&
            r.sampling.top_logprobs >= 0 && r.sampling.top_logprobs <= kMaxTopLogprobs &&
            r.sampling.min_tokens >= 0 && r.sampling.temperature >= 0 && r.sampling.top_k >= 0 &&
            r.sampling.top_p > 0 && r.sampling.top_p <= 1;
  if (limits.max_tokens > 0) ok = ok && r.max_tokens <= limits.max_tokens;
  if (limits.max_prompt_tokens > 0) ok = ok && static_cast<int>(r.prompt.size()) <= limits.max_prompt_tokens;
  for (int32_t id : r.prompt) ok = ok && id >= 0 && id < kVocabSize;
  for (int32_t id : r.stop_token_ids) ok = ok && id >= 0 && id < kVocabSize;
  for (const auto& [id, bias] : r.sampling.logit_bias) ok = ok && id >= 0 && id < kVocabSize;
  ok = ok && static_cast<int>(prepared.stop_strings.size()) <= limits.max_stop_strings;
  if (!ok) {
    std::fprintf(stderr, "an accepted request breaks GenerationRequest's contract\n");
    std::abort();
  }
}

}  // namespace tessera::fuzz
