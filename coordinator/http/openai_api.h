// OpenAiApi: the OpenAI-compatible HTTP API without sockets. It turns request bodies into prepared engine
// requests (through the gRPC API's PrepareCompletion, so both front ends share one set of rules), engine
// events into response bodies and Server-Sent Events, and absl::Status errors into OpenAI's error bodies.
// The transport (http_server.cc) only moves bytes.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/completion_request.h"
#include "coordinator/completion_text.h"
#include "coordinator/engine.h"
#include "coordinator/served_model.h"
#include "coordinator/stream_journal.h"

namespace tessera {

class ChatRenderer;
class Tokenizer;

// An answer: status code, content type and body.
struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// OpenAI's error: {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // the request field at fault; empty: null
  std::string type = "invalid_request_error";
  std::string code;  // empty: null
};
HttpReply ErrorReply(const ApiError& error);
std::string ErrorJson(const ApiError& error);
// INVALID_ARGUMENT / FAILED_PRECONDITION 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503,
// others 500; `param` as given.
ApiError ErrorFromStatus(const absl::Status& status, std::string param = "");

enum class ApiKind { kCompletion, kChat };

// One accepted /v1/completions or /v1/chat/completions call: one PreparedCompletion per prompt (a prompt
// list is several prompts; chat has one), each with n choices. Choice (p, i) is index p * n + i in the
// response, prompt-major as OpenAI numbers them. Engine request ids are set (id, or id-p for several
// prompts).
struct OpenAiCall {
  ApiKind kind = ApiKind::kCompletion;
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int n = 1;
  std::vector<PreparedCompletion> prompts;
  // Tessera's "resumable": true (a stream of one prompt, n = 1, no echo): the request outlives its client's
  // connection in a StreamJournal, and every chunk carries its choice's "token_ids" (the tokens since the
  // previous chunk) so that the client can count what it received.
  bool resumable = false;
  // Spells logprobs' tokens (null: "token_id:N", vLLM's return_tokens_as_token_ids spelling).
  std::shared_ptr<const Tokenizer> tokenizer;
};

// One engine event of one choice, as ChoiceEventObserver hands it on.
struct ChoiceEvent {
  int prompt = 0;
  int choice = 0;                      // within its prompt
  std::string text;                    // text that became final
  int new_tokens = 0;                  // tokens this event adds to the choice
  std::vector<int32_t> token_ids;      // their ids (resumable calls: the chunks' "token_ids")
  std::optional<FinishReason> end;     // the choice ended
  std::optional<absl::Status> done;    // the prompt's request is over (no choice fields then)
  std::vector<TokenLogprob> logprobs;  // with logprobs: one per new token
  // Other events of the prompt's request, with no choice fields: the prompt's logprobs (tokens 1..L-1, with
  // echo and logprobs) and the prompt tokens found in the prefix cache.
  // (A shared pointer, not an optional vector: GCC 12 -O1 reports a false maybe-uninitialized on the latter.)
  std::shared_ptr<const std::vector<TokenLogprob>> prompt_logprobs;
  std::optional<int> cached_tokens;
};

// The GenerationObserver of one prompt's engine request: on the engine thread it turns tokens into text
// (CompletionText: stop strings, held-back UTF-8) and hands each event to `sink`, which must return quickly
// (the HTTP server posts it to the connection's strand). Events of one request reach `sink` in order.
// A token's logprob reaches `sink` with its token (a token after a stop, and its logprob, are dropped).
class ChoiceEventObserver final : public GenerationObserver {
 public:
  ChoiceEventObserver(std::shared_ptr<const Tokenizer> tokenizer, int prompt,
                      const PreparedCompletion& prepared, std::function<void(ChoiceEvent)> sink);
  bool OnToken(int index, int32_t token) override;
  void OnLogprobs(int index, const TokenLogprob& logprob) override;
  void OnPromptLogprobs(const std::vector<TokenLogprob>& entries) override;
  void OnCachedTokens(int cached_tokens) override;
  void OnChoiceEnd(int index, FinishReason reason) override;
  void OnDone(const absl::Status& status) override;

 private:
  const std::shared_ptr<const Tokenizer> tokenizer_;  // kept alive for texts_
  const int prompt_;
  // By choice; engine thread only.
  std::vector<CompletionText> texts_;
  std::vector<bool> ended_;
  std::vector<TokenLogprob> next_logprob_;  // OnLogprobs' entry for the choice's next OnToken
  std::vector<bool> has_next_logprob_;
  const std::function<void(ChoiceEvent)> sink_;
};

// Folds one call's events into SSE chunks (stream) or the final body (unary). Not thread-safe: the
// connection's strand owns it.
class OpenAiCallState {
 public:
  explicit OpenAiCallState(const OpenAiCall& call);
  // The SSE text to send once the requests are queued: chat sends each choice's role delta; a completion with
  // echo sends each choice's prompt text (with logprobs too, that waits for the prompt's logprobs, which
  // Apply sends with it). May be empty.
  std::string StreamStart() const;
  // Applies `event`; returns the SSE text it makes (empty when unary or nothing to say). A chunk carries the
  // logprobs of every token since the previous chunk of its choice (a token whose text is held back sends
  // nothing; its logprob goes with the next chunk).
  std::string Apply(const ChoiceEvent& event);
  // Applies `event` as one the client has already received (a resumed stream's first tokens_received tokens):
  // nothing is sent for it, and later chunks carry only what follows it.
  void Replay(const ChoiceEvent& event);
  // Every prompt's request is over.
  bool done() const { return prompts_done_ == static_cast<int>(call_.prompts.size()); }
  // The first failed request's status (OK while none failed).
  const absl::Status& status() const { return status_; }
  // Prompt and generated tokens so far (what an API key's tpm is charged).
  int64_t TokensUsed() const { return int64_t{PromptTokens()} + CompletionTokens(); }
  // The stream's tail: the usage chunk (include_usage) and "data: [DONE]".
  std::string StreamEnd() const;
  // SSE text for an error that ended the stream, then "data: [DONE]".
  static std::string StreamError(const ApiError& error);
  // The unary response (after done() with an OK status).
  HttpReply UnaryReply() const;

 private:
  struct Choice {
    std::string text;
    int tokens = 0;
    std::optional<FinishReason> end;
    std::vector<TokenLogprob> logprobs;  // with logprobs: one per token
    size_t logprobs_sent = 0;            // streaming: how many went out in chunks
    std::vector<int32_t> unsent_token_ids;  // resumable streams: ids since the previous chunk
    int text_offset = 0;                 // streaming completions: text_offset of the next token
  };
  // `logprobs`: the chunk's choice's "logprobs" value (null when none).
  std::string Chunk(int index, const std::string& text, std::optional<FinishReason> end,
                    nlohmann::ordered_json logprobs, const std::vector<int32_t>* token_ids = nullptr) const;
  // The "logprobs" value of choice `index` for its logprobs [begin, end) (and the prompt's first, when
  // `prompt_logprobs` is not null: the prompt's tokens 1..L-1); null when the request did not ask for them.
  // Completions' text_offset counts on from `text_offset`, which is advanced.
  nlohmann::ordered_json LogprobsJson(int index, const std::vector<TokenLogprob>* prompt_logprobs,
                                      const std::vector<TokenLogprob>& logprobs, size_t begin, size_t end,
                                      int& text_offset) const;
  int PromptTokens() const;
  int CompletionTokens() const;

  const OpenAiCall& call_;
  std::vector<Choice> choices_;                             // by response index
  std::vector<std::vector<TokenLogprob>> prompt_logprobs_;  // by prompt (with echo and logprobs)
  int cached_tokens_ = 0;                                   // over every prompt
  int prompts_done_ = 0;
  absl::Status status_;
};

struct OpenAiApiOptions {
  CompletionLimits limits;
  bool resumable_streams = false;  // --resume-window > 0: "resumable": true is accepted
};

// The ChoiceEvents of what a journal Read found (one per token, then the choice's end with its tail, then the
// prompt-cached count and the request's end), for OpenAiCallState.
std::vector<ChoiceEvent> EventsOfJournalRead(JournalRead read);

class OpenAiApi {
 public:
  // `tokenizer` may be null (token-id prompts only), `chat` may be null (no chat).
  OpenAiApi(ServedModel model, std::shared_ptr<const Tokenizer> tokenizer, std::shared_ptr<ChatRenderer> chat,
            OpenAiApiOptions options = {});

  // Parses and checks a /v1/completions (kCompletion) or /v1/chat/completions (kChat) body. Errors: 400
  // naming the field (OpenAI's param names: prompt, messages, max_tokens, ...), 404 for a model not served
  // here. Unknown fields are ignored. Thread-safe.
  [[nodiscard]] std::optional<ApiError> Prepare(ApiKind kind, std::string_view body, OpenAiCall& call) const;

  // The call a resumable stream was started with, from its journal (for GET .../{id}/stream).
  OpenAiCall CallOfJournal(const StreamJournal& journal) const;

  HttpReply Models() const;                         // GET /v1/models
  HttpReply Tokenize(std::string_view body) const;  // POST /tokenize (vLLM's shape)
  HttpReply Detokenize(std::string_view body) const;

  const std::shared_ptr<const Tokenizer>& tokenizer() const { return tokenizer_; }
  const ServedModel& model() const { return model_; }
  const OpenAiApiOptions& options() const { return options_; }

 private:
  std::string NewId(ApiKind kind) const;

  const ServedModel model_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const std::shared_ptr<ChatRenderer> chat_;
  const OpenAiApiOptions options_;
  const std::string id_prefix_;
  mutable std::atomic<uint64_t> next_id_{0};
};

}  // namespace tessera
