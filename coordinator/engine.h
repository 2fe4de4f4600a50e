// Engine: the coordinator's generation loop. It admits requests in arrival order, owns the KV block manager,
// forms steps (deltas against the workers' batches; up to pp micro-batches in flight), and turns the output
// rank's sampled tokens into per-request events. It speaks token ids only; text (detokenization, stop strings)
// is the caller's, through GenerationObserver.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  uint64_t seed = 0;
};

// A validated request: fields are already range-checked by the API layer.
struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;          // non-empty, ids inside the vocabulary
  int max_tokens = 16;                  // > 0; prompt + max_tokens <= the context length
  SamplingParams sampling;              // choice i samples with seed + i
  std::vector<int32_t> stop_token_ids;  // ends a choice (kStop) when sampled; eos ids are included by the caller
  int n = 1;                            // choices
  bool return_logits = false;           // OnLogits before each OnToken (tools and tests: a vocab row each)
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
