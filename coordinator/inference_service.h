// The public gRPC API (tessera.v1): InferenceService (completions, chat, cancel, tokenize) and ModelService,
// over an Engine. The services check and prepare requests, run the text side of generation (detokenization,
// stop strings) on the engine's events, and answer in the API's messages and status codes.
#pragma once

#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/api_keys.h"
#include "coordinator/chat_renderer.h"
#include "coordinator/completion_observer.h"
#include "coordinator/completion_request.h"
#include "coordinator/engine.h"
#include "coordinator/served_model.h"
#include "coordinator/stream_journal_store.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "tessera/v1/inference.grpc.pb.h"
#include "tessera/v1/model.grpc.pb.h"

namespace tessera {

// The gRPC status of an absl::Status: the same code and message. The one conversion every service uses. With
// `context`, an UNAVAILABLE status also sets the trailing metadata grpc-retry-pushback-ms (when to retry).
grpc::Status ToGrpcStatus(const absl::Status& status, grpc::ServerContext* context = nullptr);

struct InferenceServiceOptions {
  CompletionLimits limits;  // max n
  // How often a waiting call checks whether its client cancelled or its deadline passed (its tokens wake it at
  // once). Each open call wakes this often: at 5 ms, 64 idle streams kept 37% of a core busy
  // (docs/null-device-scale.md); at 50 ms a cancelled request's blocks are freed at most 50 ms later.
  absl::Duration cancel_poll_interval = absl::Milliseconds(50);
  // When set (it must outlive the service), every call needs metadata `authorization: Bearer KEY` of one of
  // these keys: UNAUTHENTICATED without, RESOURCE_EXHAUSTED over the key's limits.
  ApiKeys* api_keys = nullptr;
};

// A call's admission under `keys` (its `authorization` metadata); null when `keys` is null (the API is open).
[[nodiscard]] absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> AdmitCall(ApiKeys* keys,
                                                                           const grpc::ServerContext& context);

// Thread-safe (gRPC's sync server calls it from many threads). The engine must outlive the service.
class InferenceService final : public v1::InferenceService::Service {
 public:
  // `tokenizer` is null when the model directory has no tokenizer.json: text prompts, stop strings, Tokenize
  // and Detokenize then fail with FAILED_PRECONDITION naming the file; token id prompts still work (with no
  // text in the answers). `chat` is null (or has no template) when the model has no tokenizer_config.json:
  // chat prompts then fail with FAILED_PRECONDITION.
  // `journals` keeps resumable streams (null: --resume-window 0, resumable requests are refused); it must
  // outlive the service.
  InferenceService(ServedModel model, std::shared_ptr<const Tokenizer> tokenizer, Engine& engine,
                   InferenceServiceOptions options = {}, std::shared_ptr<ChatRenderer> chat = nullptr,
                   StreamJournalStore* journals = nullptr);

  // Errors: PrepareCompletion's (INVALID_ARGUMENT naming the field, FAILED_PRECONDITION); Engine::Submit's
  // (RESOURCE_EXHAUSTED, UNAVAILABLE, ALREADY_EXISTS for a running request_id, ...); a failed generation's
  // (UNAVAILABLE for a failed worker, CANCELLED after Cancel). When the client cancels or its deadline passes
  // the request is cancelled in the engine (its KV blocks freed) and the call ends. With logprobs each choice
  // carries one TokenLogprob per token id (and, with echo too, one per prompt token); usage.cached_tokens is
  // the engine's count of prompt tokens found in the prefix cache.
  grpc::Status Complete(grpc::ServerContext* context, const v1::CompleteRequest* request,
                        v1::CompleteResponse* response) override;
  // As Complete, streamed: one StreamHeader, TokenDeltas as tokens arrive (with echo, a first delta per
  // choice holds the prompt text; with logprobs too it waits for the prompt's logprobs and carries them), one
  // ChoiceEnd per choice after its last delta, one StreamTrailer with usage. Each delta carries the logprobs
  // of its token ids. An error after the header ends the stream with that status.
  grpc::Status CompleteStream(grpc::ServerContext* context, const v1::CompleteRequest* request,
                              grpc::ServerWriter<v1::CompleteStreamResponse>* writer) override;
  // Complete for a conversation (OpenAI's chat completions): `messages` and `tools` (JSON text, an array) are
  // rendered with the model's template (add_generation_prompt), the rest is Complete's request; each choice
  // is an assistant message. Errors: NOT_FOUND for a `model` this server does not serve; INVALID_ARGUMENT for
  // empty `messages`, a message without a role (messages[i].role), `tools` that is not a JSON array, a
  // template that raises, and PrepareCompletion's field errors; FAILED_PRECONDITION without a template or a
  // tokenizer; then Complete's engine and cancellation errors.
  grpc::Status Chat(grpc::ServerContext* context, const v1::ChatRequest* request,
                    v1::ChatResponse* response) override;
  // As Chat, streamed as CompleteStream is: one StreamHeader, ChatDeltas with the new content, one ChoiceEnd
  // per choice, one StreamTrailer with usage. An error after the header ends the stream with that status.
  grpc::Status ChatStream(grpc::ServerContext* context, const v1::ChatRequest* request,
                          grpc::ServerWriter<v1::ChatStreamResponse>* writer) override;
  // A resumable stream (CompleteRequest.resumable, needs `journals`) is one whose client going away does not
  // cancel the request: it runs on into its journal, and ResumeStream / ResumeChatStream reattach within the
  // window: the StreamHeader again, then the deltas of every token after the first `tokens_received` (each
  // token's text is the text that became final with it, so any cut is exact), its ChoiceEnd and the trailer.
  // Errors: INVALID_ARGUMENT for an empty request_id or tokens_received < 0; NOT_FOUND for an id that has no
  // journal (never resumable, or expired); FAILED_PRECONDITION when resumption is off or for the other kind
  // of stream (a chat stream resumed by ResumeStream); OUT_OF_RANGE for more tokens than the request
  // produced. A second resume of the same stream takes it over: the first call ends with ABORTED.
  grpc::Status ResumeStream(grpc::ServerContext* context, const v1::ResumeRequest* request,
                            grpc::ServerWriter<v1::CompleteStreamResponse>* writer) override;
  grpc::Status ResumeChatStream(grpc::ServerContext* context, const v1::ResumeRequest* request,
                                grpc::ServerWriter<v1::ChatStreamResponse>* writer) override;
  // Engine::Cancel: NOT_FOUND when no such request is queued or running; INVALID_ARGUMENT for an empty id.
  grpc::Status Cancel(grpc::ServerContext* context, const v1::CancelRequest* request,
                      v1::CancelResponse* response) override;
  // Errors: INVALID_ARGUMENT for another model or text that is not valid UTF-8; FAILED_PRECONDITION without a
  // tokenizer.
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  // Errors: INVALID_ARGUMENT for another model or ids outside the tokenizer's vocabulary (naming them);
  // FAILED_PRECONDITION without a tokenizer.
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;

 private:
  // Prepares `request` (making a request id when it has none; `rendered_chat`: its chat prompt rendered, or
  // null) and submits it with a new observer, or, when it is resumable, with a new journal (`journal` is null
  // for unary calls, which cannot be resumable).
  absl::Status Submit(const v1::CompleteRequest& request, const std::string* rendered_chat, StreamKind kind,
                      PreparedCompletion& prepared, std::shared_ptr<CompletionObserver>& observer,
                      std::shared_ptr<StreamJournal>* journal);
  // INVALID_ARGUMENT naming the field when `request` asks to be resumable and cannot be.
  absl::Status CheckResumable(const v1::CompleteRequest& request, bool stream) const;
  // Complete's start: renders request.chat when it is the prompt, then Submit.
  absl::Status StartCompletion(const v1::CompleteRequest& request, PreparedCompletion& prepared,
                               std::shared_ptr<CompletionObserver>& observer,
                               std::shared_ptr<StreamJournal>* journal = nullptr);
  // Chat's start: checks the model, messages and tools, renders them, then Submit.
  absl::Status StartChat(const v1::ChatRequest& request, PreparedCompletion& prepared,
                         std::shared_ptr<CompletionObserver>& observer,
                         std::shared_ptr<StreamJournal>* journal = nullptr);
  // Waits until the request is done; OK, its error, or Abandon's when the client gives up first.
  grpc::Status AwaitDone(grpc::ServerContext& context, const std::string& request_id,
                         CompletionObserver& observer);
  // The stream of a submitted request (CompleteStreamResponse or ChatStreamResponse: header, deltas, ends,
  // trailer); returns the call's end.
  template <typename StreamResponse>
  grpc::Status StreamEvents(grpc::ServerContext& context, const PreparedCompletion& prepared,
                            CompletionObserver& observer, grpc::ServerWriter<StreamResponse>& writer);
  // A resumable stream read from `journal` as `reader` from `cursor` on: the header, then what the journal
  // holds and gets until the request's end. The client going away detaches it (the request goes on).
  template <typename StreamResponse>
  grpc::Status StreamFromJournal(grpc::ServerContext& context, StreamJournal& journal, uint64_t reader,
                                 JournalCursor cursor, grpc::ServerWriter<StreamResponse>& writer);
  // ResumeStream and ResumeChatStream: checks `request`, finds the journal of `kind` and streams from it.
  template <typename StreamResponse>
  grpc::Status Resume(grpc::ServerContext& context, const v1::ResumeRequest& request, StreamKind kind,
                      grpc::ServerWriter<StreamResponse>& writer);
  // The client cancelled or its deadline passed: cancels the request in the engine; returns the call's end.
  grpc::Status Abandon(const grpc::ServerContext& context, const std::string& request_id);
  // A request id no other call of this service has made.
  std::string NewRequestId();
  // `messages` (with `tools` when not null) rendered with the model's template (add_generation_prompt).
  // INVALID_ARGUMENT naming `field`[i].role for a message without a role, or "`error_prefix`: " and the
  // template's error; FAILED_PRECONDITION without a template.
  absl::StatusOr<std::string> RenderChat(const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages,
                                         const nlohmann::ordered_json* tools, const std::string& field,
                                         const std::string& error_prefix);

  const ServedModel model_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const std::shared_ptr<ChatRenderer> chat_;  // null: no chat template
  Engine& engine_;
  const InferenceServiceOptions options_;
  StreamJournalStore* const journals_;  // null: resumption off
  const std::string id_prefix_;  // random per service: ids differ across restarts
  std::atomic<uint64_t> next_id_{0};
};

// ListModels / GetModel for the served model; `ready` is engine.ready(). The engine must outlive the service.
class ModelService final : public v1::ModelService::Service {
 public:
  // `api_keys` as InferenceServiceOptions::api_keys.
  ModelService(ServedModel model, const Engine& engine, ApiKeys* api_keys = nullptr)
      : model_(std::move(model)), engine_(engine), api_keys_(api_keys) {}

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  // NOT_FOUND for a model this server does not serve; INVALID_ARGUMENT for an empty id.
  grpc::Status GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                        v1::Model* response) override;

 private:
  void Describe(v1::Model& out) const;

  const ServedModel model_;
  const Engine& engine_;
  ApiKeys* const api_keys_;
};

}  // namespace tessera
