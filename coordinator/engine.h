// Engine: the coordinator's generation loop. It admits requests by priority and arrival, owns the KV blocks,
// forms steps (deltas against the workers' batches; up to pp micro-batches in flight), and turns the output
// rank's sampled tokens into per-request events. It speaks token ids only; text (detokenization, stop strings)
// is the caller's, through GenerationObserver.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

// vLLM's sampling parameters (their definitions: kernels/sampler.h). Zero values are "off" unless noted.
struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  uint64_t seed = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // 1 = off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, bias added to its logit)
  int min_tokens = 0;  // stop ids cannot be sampled before this many tokens
  // OnLogprobs before each OnToken: the token's log-probability and top_logprobs alternatives (0..20).
  bool logprobs = false;
  int top_logprobs = 0;
  bool prompt_logprobs = false;  // OnPromptLogprobs once, before the first token (turns prefix caching off)
};

// A validated request: fields are already range-checked by the API layer.
struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;          // non-empty, ids inside the vocabulary
  int max_tokens = 16;                  // > 0; prompt + max_tokens <= the context length
  // max_tokens was not given (it is the rest of the context): the engine lowers it to its max_model_len
  // instead of refusing the request.
  bool max_tokens_is_default = false;
  SamplingParams sampling;              // choice i samples with seed + i
  std::vector<int32_t> stop_token_ids;  // ends a choice (kStop) when sampled; eos ids are included by the caller
  int n = 1;                            // choices
  int priority = 0;                     // lower runs first; equal priorities in arrival order
  bool return_logits = false;           // OnLogits before each OnToken (tools and tests: a vocab row each)
};

// A token's log-probability under the model (log-softmax of the raw logits), its rank (1 = most likely) and
// the most likely tokens with theirs, most likely first.
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
  int rank = 0;
  std::vector<std::pair<int32_t, float>> top;
};

enum class FinishReason { kLength, kStop };

// Receives one request's events in order, one call at a time, never under the engine's lock: OnToken for each
// choice's tokens, OnChoiceEnd once per choice, then OnDone once. Implementations must return quickly (hand off
// to another thread); they must not call back into the Engine.
class GenerationObserver {
 public:
  virtual ~GenerationObserver() = default;
  // A new token of choice `index`. Returning true ends the choice here with kStop (a stop string matched);
  // the token counts as generated.
  virtual bool OnToken(int index, int32_t token) = 0;
  // With GenerationRequest::return_logits: the float32 logits (`size` = the vocabulary) that choice `index`'s
  // next token is drawn from, just before that OnToken.
  virtual void OnLogits(int /*index*/, const float* /*values*/, int64_t /*size*/) {}
  // With SamplingParams::logprobs: the log-probability of choice `index`'s next token, just before its OnToken.
  virtual void OnLogprobs(int /*index*/, const TokenLogprob& /*logprob*/) {}
  // With SamplingParams::prompt_logprobs: prompt tokens 1..L-1 given the tokens before each, once, before
  // any OnToken (the first prompt token has none).
  virtual void OnPromptLogprobs(const std::vector<TokenLogprob>& /*entries*/) {}
  // How many prompt tokens came from the prefix cache (their keys and values were not computed again), once,
  // before any OnToken.
  virtual void OnCachedTokens(int /*cached_tokens*/) {}
  // `reason` is kStop for a stop token id / eos (the token was passed to OnToken) or a stop string.
  virtual void OnChoiceEnd(int index, FinishReason reason) = 0;
  // The request is over: OK after every choice ended; CANCELLED after Cancel; UNAVAILABLE when a worker
  // failed; the error of a failed step otherwise. Nothing follows.
  virtual void OnDone(const absl::Status& status) = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Queues a request. Errors: UNAVAILABLE (not serving: still loading, a worker failed, or shutting down),
  // RESOURCE_EXHAUSTED (the waiting queue is full), INVALID_ARGUMENT (the request can never fit in the KV
  // cache, naming the numbers), ALREADY_EXISTS (a running request has this id). On an error the observer is
  // not called.
  [[nodiscard]] virtual absl::Status Submit(GenerationRequest request,
                                            std::shared_ptr<GenerationObserver> observer) = 0;
  // Stops a request: its observer gets OnDone(CANCELLED) and its KV blocks are freed by the next step.
  // NOT_FOUND when no request with this id is queued or running. Thread-safe, as is Submit.
  [[nodiscard]] virtual absl::Status Cancel(const std::string& request_id) = 0;
  // Every shard is loaded and no worker has failed.
  virtual bool ready() const = 0;
};

}  // namespace tessera
