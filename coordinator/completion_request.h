// PrepareCompletion: a public CompleteRequest checked against the served model and turned into the Engine's
// GenerationRequest (prompt tokenized, unset sampling fields defaulted, eos ids added to the stop ids), plus
// what the API layer keeps for the text side (stop strings, echo).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/completion_limits.h"
#include "coordinator/engine.h"
#include "coordinator/served_model.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "tessera/v1/inference.pb.h"

namespace tessera {

// The most alternatives top_logprobs may ask for (vLLM's default max_logprobs).
inline constexpr int kMaxTopLogprobs = 20;

struct PreparedCompletion {
  GenerationRequest request;  // request.id is the client's request_id (empty: the caller makes one)
  std::vector<std::string> stop_strings;
  bool echo = false;
  std::string
      prompt_text;  // with echo: the text prompt as given, or the prompt ids decoded (special tokens kept)
};

// Checks `request` and prepares it. Errors (each message starts with the field's name and, for ranges, gives
// the range and the value): INVALID_ARGUMENT for a `model` this server does not serve, a missing or empty
// prompt, prompt or stop token ids outside [0, vocab_size), max_tokens <= 0, temperature < 0, top_p outside
// (0, 1], top_k < 0, n outside [1, limits.max_n], min_p outside [0, 1], repetition_penalty <= 0 (or not
// finite), presence_penalty / frequency_penalty outside [-2, 2], logit_bias ids outside [0, vocab_size) or
// biases outside [-100, 100], min_tokens outside [0, max_tokens], top_logprobs outside [0, kMaxTopLogprobs]
// or above 0 without logprobs, a prompt as long as the context or longer, prompt + max_tokens over the
// context, and text that is not valid UTF-8; FAILED_PRECONDITION for a text prompt or stop strings when
// `tokenizer` is null (the model directory has no tokenizer.json). Unset max_tokens is the rest of the
// context; unset temperature / top_p / top_k take the model's generation_config.json defaults, else greedy;
// unset seed is random; repetition_penalty defaults to 1 and the other new sampling fields to 0 / off; eos
// ids join the stop ids unless ignore_eos; logprobs with echo also asks the prompt's logprobs. A chat prompt
// is `rendered_chat` (the caller renders request.chat with the model's template; null: FAILED_PRECONDITION,
// the model has no template), encoded without special tokens. Thread-safe.
[[nodiscard]] absl::StatusOr<PreparedCompletion> PrepareCompletion(
    const v1::CompleteRequest& request, const ServedModel& model, const Tokenizer* tokenizer,
    const CompletionLimits& limits, const std::string* rendered_chat = nullptr);

// The CompleteRequest a ChatRequest stands for: its messages as the `chat` prompt and its sampling fields,
// request_id and model copied (tools are the caller's: they go to the template, not to PrepareCompletion).
// Checks nothing; PrepareCompletion does.
[[nodiscard]] v1::CompleteRequest CompletionOfChat(const v1::ChatRequest& chat);

// OK when `name` is empty or the served model's id; else INVALID_ARGUMENT naming `field`, the name and the
// served model.
[[nodiscard]] absl::Status CheckModelName(const std::string& name, const ServedModel& model,
                                          const std::string& field);

// OK when every id is in [0, vocab_size); else INVALID_ARGUMENT naming `field`, the bad indices and ids (the
// first few) and the range.
[[nodiscard]] absl::Status CheckTokenIds(const std::vector<int32_t>& ids, int vocab_size,
                                         const std::string& field);

// FAILED_PRECONDITION for `what` (e.g. "text prompts") when the model directory has no tokenizer.json.
[[nodiscard]] absl::Status MissingTokenizerError(const ServedModel& model, const std::string& what);

}  // namespace tessera
