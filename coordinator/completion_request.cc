// PrepareCompletion: validation and defaults of a CompleteRequest, in the order a client would fix them:
// model, sampling fields, prompt, then lengths against the context.
#include "coordinator/completion_request.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

absl::Status CheckSampling(const v1::CompleteRequest& request, const CompletionLimits& limits) {
  if (request.has_max_tokens() && request.max_tokens() <= 0) {
    return absl::InvalidArgumentError(Cat("max_tokens must be positive, got ", request.max_tokens()));
  }
  // The negated comparisons also reject NaN.
  if (request.has_temperature() && !(request.temperature() >= 0.0f)) {
    return absl::InvalidArgumentError(
        Cat("temperature must be >= 0 (0 = greedy), got ", request.temperature()));
  }
  if (request.has_top_p() && !(request.top_p() > 0.0f && request.top_p() <= 1.0f)) {
    return absl::InvalidArgumentError(Cat("top_p must be in (0, 1], got ", request.top_p()));
  }
  if (request.has_top_k() && request.top_k() < 0) {
    return absl::InvalidArgumentError(Cat("top_k must be >= 0 (0 = off), got ", request.top_k()));
  }
  if (request.has_n() && (request.n() < 1 || request.n() > limits.max_n)) {
    return absl::InvalidArgumentError(Cat("n must be in [1, ", limits.max_n, "] (--max-n), got ", request.n()));
  }
  if (limits.max_tokens > 0 && request.has_max_tokens() && request.max_tokens() > limits.max_tokens) {
    return absl::InvalidArgumentError(Cat("max_tokens must be at most ", limits.max_tokens,
                                          " on this server (--max-tokens-limit), got ", request.max_tokens()));
  }
  if (limits.max_stop_strings > 0 && request.stop_size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(Cat("stop has ", request.stop_size(), " strings; this server takes at most ",
                                          limits.max_stop_strings, " (--max-stop-strings)"));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    if (limits.max_stop_string_bytes > 0 && static_cast<int64_t>(request.stop(i).size()) > limits.max_stop_string_bytes) {
      return absl::InvalidArgumentError(Cat("stop[", i, "] is ", request.stop(i).size(),
                                            " bytes; this server takes at most ", limits.max_stop_string_bytes));
    }
  }
  // vLLM's ranges (SamplingParams._verify_args).
  if (request.has_min_p() && !(request.min_p() >= 0.0f && request.min_p() <= 1.0f)) {
    return absl::InvalidArgumentError(Cat("min_p must be in [0, 1] (0 = off), got ", request.min_p()));
  }
  if (request.has_repetition_penalty() &&
      !(request.repetition_penalty() > 0.0f && std::isfinite(request.repetition_penalty()))) {
    return absl::InvalidArgumentError(
        Cat("repetition_penalty must be > 0 (1 = off), got ", request.repetition_penalty()));
  }
  if (request.has_presence_penalty() &&
      !(request.presence_penalty() >= -2.0f && request.presence_penalty() <= 2.0f)) {
    return absl::InvalidArgumentError(
        Cat("presence_penalty must be in [-2, 2] (0 = off), got ", request.presence_penalty()));
  }
  if (request.has_frequency_penalty() &&
      !(request.frequency_penalty() >= -2.0f && request.frequency_penalty() <= 2.0f)) {
    return absl::InvalidArgumentError(
        Cat("frequency_penalty must be in [-2, 2] (0 = off), got ", request.frequency_penalty()));
  }
  if (request.has_min_tokens() && request.min_tokens() < 0) {
    return absl::InvalidArgumentError(Cat("min_tokens must be >= 0, got ", request.min_tokens()));
  }
  if (request.has_top_logprobs()) {
    if (request.top_logprobs() < 0 || request.top_logprobs() > kMaxTopLogprobs) {
      return absl::InvalidArgumentError(
          Cat("top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ", request.top_logprobs()));
    }
    if (request.top_logprobs() > 0 && !request.logprobs()) {
      return absl::InvalidArgumentError("top_logprobs needs logprobs to be set");
    }
  }
  return absl::OkStatus();
}

// logit_bias: ids inside the vocabulary, biases in [-100, 100]; the entries sorted by id (the map's order is
// unspecified), the smallest offending id named first.
absl::StatusOr<std::vector<std::pair<int32_t, float>>> LogitBias(const v1::CompleteRequest& request,
                                                                 int vocab_size) {
  std::vector<std::pair<int32_t, float>> bias(request.logit_bias().begin(), request.logit_bias().end());
  std::sort(bias.begin(), bias.end());
  for (const auto& [id, value] : bias) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          Cat("logit_bias token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
    if (!(value >= -100.0f && value <= 100.0f)) {
      return absl::InvalidArgumentError(Cat("logit_bias[", id, "] = ", value, " is outside [-100, 100]"));
    }
  }
  return bias;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::CompleteRequest& request, const ServedModel& model,
                                               const Tokenizer* tokenizer, const std::string* rendered_chat) {
  switch (request.prompt_case()) {
    case v1::CompleteRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return absl::InvalidArgumentError("prompt token_ids is empty");
      std::vector<int32_t> prompt(ids.begin(), ids.end());
      RETURN_IF_ERROR(CheckTokenIds(prompt, model.vocab_size, "prompt token_ids"));
      return prompt;
    }
    case v1::CompleteRequest::kText: {
      if (request.text().empty()) return absl::InvalidArgumentError("prompt text is empty");
      if (tokenizer == nullptr) return MissingTokenizerError(model, "text prompts");
      absl::StatusOr<std::vector<int32_t>> ids =
          tokenizer->Encode(request.text(), /*add_special_tokens=*/true);
      if (!ids.ok()) return absl::Status(ids.status().code(), Cat("prompt text: ", ids.status().message()));
      if (ids->empty()) return absl::InvalidArgumentError("prompt text encodes to no tokens");
      return ids;
    }
    case v1::CompleteRequest::kChat: {
      if (request.chat().messages().empty()) return absl::InvalidArgumentError("prompt chat has no messages");
      if (tokenizer == nullptr) return MissingTokenizerError(model, "chat prompts");
      if (rendered_chat == nullptr) {
        return absl::FailedPreconditionError(
            Cat("chat prompts need a chat_template in ", model.dir, "/tokenizer_config.json"));
      }
      absl::StatusOr<std::vector<int32_t>> ids =
          tokenizer->Encode(*rendered_chat, /*add_special_tokens=*/false);
      if (!ids.ok()) return absl::Status(ids.status().code(), Cat("prompt chat: ", ids.status().message()));
      if (ids->empty()) return absl::InvalidArgumentError("prompt chat renders to no tokens");
      return ids;
    }
    case v1::CompleteRequest::PROMPT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("prompt is missing: set prompt text, token_ids or chat");
}

}  // namespace

v1::CompleteRequest CompletionOfChat(const v1::ChatRequest& chat) {
  v1::CompleteRequest request;
  request.set_model(chat.model());
  *request.mutable_chat()->mutable_messages() = chat.messages();
  if (chat.has_max_tokens()) request.set_max_tokens(chat.max_tokens());
  if (chat.has_temperature()) request.set_temperature(chat.temperature());
  if (chat.has_top_k()) request.set_top_k(chat.top_k());
  if (chat.has_top_p()) request.set_top_p(chat.top_p());
  if (chat.has_seed()) request.set_seed(chat.seed());
  *request.mutable_stop_token_ids() = chat.stop_token_ids();
  *request.mutable_stop() = chat.stop();
  if (chat.has_n()) request.set_n(chat.n());
  request.set_request_id(chat.request_id());
  request.set_ignore_eos(chat.ignore_eos());
  if (chat.has_min_p()) request.set_min_p(chat.min_p());
  if (chat.has_repetition_penalty()) request.set_repetition_penalty(chat.repetition_penalty());
  if (chat.has_presence_penalty()) request.set_presence_penalty(chat.presence_penalty());
  if (chat.has_frequency_penalty()) request.set_frequency_penalty(chat.frequency_penalty());
  *request.mutable_logit_bias() = chat.logit_bias();
  if (chat.has_min_tokens()) request.set_min_tokens(chat.min_tokens());
  request.set_logprobs(chat.logprobs());
  if (chat.has_top_logprobs()) request.set_top_logprobs(chat.top_logprobs());
  if (chat.has_priority()) request.set_priority(chat.priority());
  request.set_resumable(chat.resumable());
  return request;
}

absl::Status CheckModelName(const std::string& name, const ServedModel& model, const std::string& field) {
  if (name.empty() || name == model.id) return absl::OkStatus();
  return absl::InvalidArgumentError(
      Cat(field, " \"", name, "\" is not served here; this server serves \"", model.id, "\""));
}

absl::Status CheckTokenIds(const std::vector<int32_t>& ids, int vocab_size, const std::string& field) {
  constexpr int kNamed = 8;
  std::string bad;
  int count = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= 0 && ids[i] < vocab_size) continue;
    if (count++ < kNamed) bad += Cat(bad.empty() ? "" : ", ", field, "[", i, "] = ", ids[i]);
  }
  if (count == 0) return absl::OkStatus();
  if (count > kNamed) bad += Cat(" and ", count - kNamed, " more");
  return absl::InvalidArgumentError(
      Cat(bad, count == 1 ? " is" : " are", " outside the vocabulary [0, ", vocab_size, ")"));
}

absl::Status MissingTokenizerError(const ServedModel& model, const std::string& what) {
  return absl::FailedPreconditionError(
      Cat(what, " need the model's tokenizer.json, which ", model.dir, " does not have"));
}

absl::StatusOr<PreparedCompletion> PrepareCompletion(const v1::CompleteRequest& request,
                                                     const ServedModel& model, const Tokenizer* tokenizer,
                                                     const CompletionLimits& limits,
                                                     const std::string* rendered_chat) {
  RETURN_IF_ERROR(CheckModelName(request.model(), model, "model"));
  RETURN_IF_ERROR(CheckSampling(request, limits));
  std::vector<int32_t> stop_ids(request.stop_token_ids().begin(), request.stop_token_ids().end());
  RETURN_IF_ERROR(CheckTokenIds(stop_ids, model.vocab_size, "stop_token_ids"));
  using LogitBiasList = std::vector<std::pair<int32_t, float>>;
  ASSIGN_OR_RETURN(LogitBiasList logit_bias, LogitBias(request, model.vocab_size));

  PreparedCompletion prepared;
  for (const std::string& stop : request.stop()) {
    if (!stop.empty()) prepared.stop_strings.push_back(stop);
  }
  if (!prepared.stop_strings.empty() && tokenizer == nullptr)
    return MissingTokenizerError(model, "stop strings");

  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptIds(request, model, tokenizer, rendered_chat));
  const int prompt_len = static_cast<int>(prompt.size());
  const int context = model.max_position_embeddings;
  if (limits.max_prompt_tokens > 0 && prompt_len > limits.max_prompt_tokens) {
    return absl::InvalidArgumentError(Cat("prompt has ", prompt_len, " tokens; this server takes at most ",
                                          limits.max_prompt_tokens, " (--max-prompt-tokens)"));
  }
  if (prompt_len >= context) {
    return absl::InvalidArgumentError(Cat("prompt has ", prompt_len,
                                          " tokens but max_model_len (the served context length) is ",
                                          context, ": no room left to generate"));
  }
  const int max_tokens = request.has_max_tokens() ? request.max_tokens()
                         : limits.max_tokens > 0 ? std::min(limits.max_tokens, context - prompt_len)
                                                 : context - prompt_len;
  if (static_cast<int64_t>(prompt_len) + max_tokens > context) {
    return absl::InvalidArgumentError(Cat("prompt (", prompt_len, " tokens) + max_tokens (", max_tokens,
                                          ") = ", static_cast<int64_t>(prompt_len) + max_tokens,
                                          " exceeds max_model_len (the served context length) of ", context));
  }
  if (request.min_tokens() > max_tokens) {
    return absl::InvalidArgumentError(
        Cat("min_tokens must be in [0, max_tokens = ", max_tokens, "], got ", request.min_tokens()));
  }

  prepared.echo = request.echo();
  if (prepared.echo) {
    if (request.prompt_case() == v1::CompleteRequest::kText) {
      prepared.prompt_text = request.text();
    } else if (request.prompt_case() == v1::CompleteRequest::kChat) {
      prepared.prompt_text = *rendered_chat;
    } else if (tokenizer != nullptr) {
      absl::StatusOr<std::string> text = tokenizer->Decode(prompt, /*skip_special_tokens=*/false);
      if (text.ok())
        prepared.prompt_text = *std::move(text);  // ids beyond the tokenizer's vocabulary: no text
    }
  }

  GenerationRequest& out = prepared.request;
  out.id = request.request_id();
  out.prompt = std::move(prompt);
  out.max_tokens = max_tokens;
  out.max_tokens_is_default = !request.has_max_tokens();
  out.n = request.has_n() ? request.n() : 1;
  SamplingParams& sampling = out.sampling;
  sampling.temperature =
      request.has_temperature() ? request.temperature() : model.default_temperature.value_or(0);
  sampling.top_p = request.has_top_p() ? request.top_p() : model.default_top_p.value_or(1);
  sampling.top_k = request.has_top_k() ? request.top_k() : model.default_top_k.value_or(0);
  if (request.has_seed()) {
    sampling.seed = request.seed();
  } else {
    std::random_device device;
    sampling.seed = (static_cast<uint64_t>(device()) << 32) | device();
  }
  sampling.min_p = request.min_p();
  sampling.repetition_penalty = request.has_repetition_penalty() ? request.repetition_penalty() : 1.0f;
  sampling.presence_penalty = request.presence_penalty();
  sampling.frequency_penalty = request.frequency_penalty();
  sampling.logit_bias = std::move(logit_bias);
  sampling.min_tokens = request.min_tokens();
  sampling.logprobs = request.logprobs();
  sampling.top_logprobs = request.logprobs() ? request.top_logprobs() : 0;
  // OpenAI completions: echo with logprobs returns the prompt's logprobs too.
  sampling.prompt_logprobs = request.logprobs() && request.echo();
  out.priority = request.priority();
  out.stop_token_ids = std::move(stop_ids);
  if (!request.ignore_eos()) {
    for (int32_t eos : model.eos_token_ids) {
      if (std::find(out.stop_token_ids.begin(), out.stop_token_ids.end(), eos) == out.stop_token_ids.end()) {
        out.stop_token_ids.push_back(eos);
      }
    }
  }
  return prepared;
}

}  // namespace tessera
