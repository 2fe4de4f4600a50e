// InferenceService and ModelService: requests in, engine events out as API messages.
#include "coordinator/inference_service.h"

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "absl/strings/str_format.h"
#include "core/log.h"
#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

std::string RandomPrefix() {
  std::random_device device;
  return absl::StrFormat("cmpl-%08x%08x", device(), device());
}

// A stream delta's text: a completion's `text`, a chat message's `content`.
void SetDeltaText(v1::TokenDelta& delta, std::string text) { delta.set_text(std::move(text)); }
void SetDeltaText(v1::ChatDelta& delta, std::string text) { delta.set_content(std::move(text)); }

void FillUsage(int prompt_tokens, int completion_tokens, int cached_tokens, v1::Usage& usage) {
  usage.set_prompt_tokens(prompt_tokens);
  usage.set_completion_tokens(completion_tokens);
  usage.set_total_tokens(prompt_tokens + completion_tokens);
  usage.set_cached_tokens(cached_tokens);
}

void AddLogprobs(const std::vector<TokenLogprob>& logprobs,
                 google::protobuf::RepeatedPtrField<v1::TokenLogprob>& out) {
  for (const TokenLogprob& lp : logprobs) {
    v1::TokenLogprob* entry = out.Add();
    entry->set_token_id(lp.token);
    entry->set_logprob(lp.logprob);
    entry->set_rank(lp.rank);
    for (const auto& [token, logprob] : lp.top) {
      v1::TopLogprob* top = entry->add_top_logprobs();
      top->set_token_id(token);
      top->set_logprob(logprob);
    }
  }
}

// The prompt's logprobs, one per prompt token: the first without a logprob, then `entries` (tokens 1..L-1).
void AddPromptLogprobs(const std::vector<int32_t>& prompt, const std::vector<TokenLogprob>& entries,
                       google::protobuf::RepeatedPtrField<v1::TokenLogprob>& out) {
  if (prompt.empty()) return;
  out.Add()->set_token_id(prompt[0]);
  AddLogprobs(entries, out);
}

// The echo delta's prompt logprobs: a completion's TokenDelta has them, a ChatDelta (no echo) does not.
void SetDeltaPromptLogprobs(v1::TokenDelta& delta, const std::vector<int32_t>& prompt,
                            const std::vector<TokenLogprob>& entries) {
  AddPromptLogprobs(prompt, entries, *delta.mutable_prompt_logprobs());
}
void SetDeltaPromptLogprobs(v1::ChatDelta&, const std::vector<int32_t>&, const std::vector<TokenLogprob>&) {}

}  // namespace

// An UNAVAILABLE answer (draining, the group re-forming past --replacement-timeout, not ready yet) tells a
// client's retry policy when to try again (gRPC's grpc-retry-pushback-ms), here or on another replica.
constexpr char kRetryPushbackMs[] = "1000";

grpc::Status ToGrpcStatus(const absl::Status& status, grpc::ServerContext* context) {
  if (status.ok()) return grpc::Status::OK;
  if (context != nullptr && absl::IsUnavailable(status)) {
    context->AddTrailingMetadata("grpc-retry-pushback-ms", kRetryPushbackMs);
  }
  // absl::StatusCode and grpc::StatusCode share the canonical code numbers.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

InferenceService::InferenceService(ServedModel model, std::shared_ptr<const Tokenizer> tokenizer,
                                   Engine& engine, InferenceServiceOptions options,
                                   std::shared_ptr<ChatRenderer> chat, StreamJournalStore* journals)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      chat_(std::move(chat)),
      engine_(engine),
      options_(options),
      journals_(journals),
      id_prefix_(RandomPrefix()) {}

std::string InferenceService::NewRequestId() { return Cat(id_prefix_, "-", next_id_.fetch_add(1)); }

absl::StatusOr<std::string> InferenceService::RenderChat(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages, const nlohmann::ordered_json* tools,
    const std::string& field, const std::string& error_prefix) {
  if (chat_ == nullptr) {
    return absl::FailedPreconditionError(
        Cat("chat prompts need ", model_.dir, "/tokenizer_config.json with a chat_template"));
  }
  nlohmann::ordered_json rendered_messages = nlohmann::ordered_json::array();
  for (int i = 0; i < messages.size(); ++i) {
    const v1::ChatMessage& m = messages[i];
    if (m.role().empty()) return absl::InvalidArgumentError(Cat(field, "[", i, "].role is empty"));
    nlohmann::ordered_json message = {{"role", m.role()}, {"content", m.content()}};
    if (!m.name().empty()) message["name"] = m.name();
    if (!m.tool_call_id().empty()) message["tool_call_id"] = m.tool_call_id();
    rendered_messages.push_back(std::move(message));
  }
  nlohmann::ordered_json request = {{"messages", std::move(rendered_messages)},
                                    {"add_generation_prompt", true}};
  if (tools != nullptr) request["tools"] = *tools;
  absl::StatusOr<std::string> text = chat_->Render(request);
  if (!text.ok() && text.status().code() != absl::StatusCode::kFailedPrecondition)
    return absl::Status(text.status().code(), Cat(error_prefix, ": ", text.status().message()));
  return text;
}

absl::Status InferenceService::CheckResumable(const v1::CompleteRequest& request, bool stream) const {
  if (!request.resumable()) return absl::OkStatus();
  if (journals_ == nullptr) {
    return absl::InvalidArgumentError(
        "resumable: stream resumption is off on this server (--resume-window 0; give it a duration)");
  }
  if (!stream) {
    return absl::InvalidArgumentError(
        "resumable applies to streams (CompleteStream, ChatStream), not to unary calls");
  }
  if (request.has_n() && request.n() != 1) {
    return absl::InvalidArgumentError(Cat("resumable streams need n = 1, got n = ", request.n()));
  }
  if (request.echo()) return absl::InvalidArgumentError("resumable streams cannot echo the prompt (echo)");
  return absl::OkStatus();
}

absl::Status InferenceService::Submit(const v1::CompleteRequest& request, const std::string* rendered_chat,
                                      StreamKind kind, PreparedCompletion& prepared,
                                      std::shared_ptr<CompletionObserver>& observer,
                                      std::shared_ptr<StreamJournal>* journal) {
  RETURN_IF_ERROR(CheckResumable(request, journal != nullptr));
  ASSIGN_OR_RETURN(prepared,
                   PrepareCompletion(request, model_, tokenizer_.get(), options_.limits, rendered_chat));
  GenerationRequest& generation = prepared.request;
  if (generation.id.empty()) generation.id = NewRequestId();
  std::shared_ptr<GenerationObserver> engine_observer;
  if (request.resumable()) {
    StreamInfo info;
    info.kind = kind;
    info.model = model_.id;
    info.created = absl::ToUnixSeconds(absl::Now());
    info.prepared = prepared;
    ASSIGN_OR_RETURN(*journal, journals_->Create(tokenizer_, std::move(info)));
    engine_observer = *journal;
  } else {
    observer = std::make_shared<CompletionObserver>(tokenizer_, generation.n, generation.sampling.min_tokens,
                                                    prepared.stop_strings, generation.stop_token_ids);
    engine_observer = observer;
  }
  GenerationRequest submitted = generation;  // the prepared one keeps its fields for the answer
  absl::Status status = engine_.Submit(std::move(submitted), std::move(engine_observer));
  if (!status.ok() && request.resumable()) {
    journals_->Remove(generation.id);
    journal->reset();
  }
  // Prompt text only with --log-requests (LogRequests()); sizes and the outcome always.
  std::string line =
      Cat("grpc request: ", generation.prompt.size(), " prompt tokens, max_tokens ", generation.max_tokens,
          ", n ", generation.n, ": ", status.ok() ? "queued" : std::string(status.message()));
  if (LogRequests() && tokenizer_ != nullptr) {
    absl::StatusOr<std::string> text = tokenizer_->Decode(generation.prompt, /*skip_special_tokens=*/false);
    if (text.ok()) line += Cat("; prompt: ", *text);
  }
  Log(!status.ok() || LogRequests() ? LogLevel::kInfo : LogLevel::kDebug,
      {.component = "api", .rank = -1, .request_id = generation.id}, line);
  return status;
}

absl::Status InferenceService::StartCompletion(const v1::CompleteRequest& request,
                                               PreparedCompletion& prepared,
                                               std::shared_ptr<CompletionObserver>& observer,
                                               std::shared_ptr<StreamJournal>* journal) {
  if (request.prompt_case() != v1::CompleteRequest::kChat || request.chat().messages().empty()) {
    return Submit(request, nullptr, StreamKind::kCompletion, prepared, observer, journal);
  }
  ASSIGN_OR_RETURN(const std::string rendered,
                   RenderChat(request.chat().messages(), nullptr, "chat.messages", "chat"));
  return Submit(request, &rendered, StreamKind::kCompletion, prepared, observer, journal);
}

absl::Status InferenceService::StartChat(const v1::ChatRequest& request, PreparedCompletion& prepared,
                                         std::shared_ptr<CompletionObserver>& observer,
                                         std::shared_ptr<StreamJournal>* journal) {
  if (absl::Status s = CheckModelName(request.model(), model_, "model"); !s.ok()) {
    return absl::NotFoundError(s.message());  // OpenAI's model_not_found
  }
  if (request.messages().empty()) return absl::InvalidArgumentError("messages is empty");
  std::optional<nlohmann::ordered_json> tools;
  if (!request.tools().empty()) {
    try {
      tools = nlohmann::ordered_json::parse(request.tools());
    } catch (const nlohmann::json::parse_error& e) {
      return absl::InvalidArgumentError(Cat("tools is not valid JSON: ", e.what()));
    }
    if (!tools->is_array()) {
      return absl::InvalidArgumentError(
          Cat("tools must be a JSON array of tool definitions, got a JSON ", tools->type_name()));
    }
  }
  ASSIGN_OR_RETURN(const std::string rendered,
                   RenderChat(request.messages(), tools ? &*tools : nullptr, "messages", "messages"));
  return Submit(CompletionOfChat(request), &rendered, StreamKind::kChat, prepared, observer, journal);
}

grpc::Status InferenceService::Abandon(const grpc::ServerContext& context, const std::string& request_id) {
  (void)engine_.Cancel(request_id);  // NOT_FOUND: it ended meanwhile
  if (context.deadline() <= std::chrono::system_clock::now()) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        Cat("request ", request_id, " ran past its deadline"));
  }
  return grpc::Status(grpc::StatusCode::CANCELLED,
                      Cat("request ", request_id, " was cancelled by the client"));
}

grpc::Status InferenceService::AwaitDone(grpc::ServerContext& context, const std::string& request_id,
                                         CompletionObserver& observer) {
  std::optional<absl::Status> done;
  while (!(done = observer.WaitDone(options_.cancel_poll_interval))) {
    if (context.IsCancelled()) return Abandon(context, request_id);
  }
  return ToGrpcStatus(*done, &context);
}

absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> AdmitCall(ApiKeys* keys, const grpc::ServerContext& context) {
  if (keys == nullptr) return std::unique_ptr<ApiKeys::Admission>();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  return keys->Admit(it == metadata.end() ? std::string_view()
                                          : std::string_view(it->second.data(), it->second.size()));
}

grpc::Status InferenceService::Complete(grpc::ServerContext* context, const v1::CompleteRequest* request,
                                        v1::CompleteResponse* response) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  PreparedCompletion prepared;
  std::shared_ptr<CompletionObserver> observer;
  if (absl::Status s = StartCompletion(*request, prepared, observer); !s.ok()) return ToGrpcStatus(s, context);
  const std::string& id = prepared.request.id;
  if (grpc::Status s = AwaitDone(*context, id, *observer); !s.ok()) return s;

  response->set_request_id(id);
  response->set_model(model_.id);
  const std::vector<CompletionObserver::ChoiceResult> results = observer->Results();
  for (size_t i = 0; i < results.size(); ++i) {
    v1::Choice* choice = response->add_choices();
    choice->set_index(static_cast<int>(i));
    choice->set_text(prepared.echo ? prepared.prompt_text + results[i].text : results[i].text);
    choice->mutable_token_ids()->Add(results[i].token_ids.begin(), results[i].token_ids.end());
    choice->set_finish_reason(ToProto(results[i].finish_reason));
    if (prepared.echo) {
      choice->mutable_prompt_token_ids()->Add(prepared.request.prompt.begin(), prepared.request.prompt.end());
    }
    AddLogprobs(results[i].logprobs, *choice->mutable_logprobs());
    if (prepared.request.sampling.prompt_logprobs) {
      AddPromptLogprobs(prepared.request.prompt, observer->PromptLogprobs(),
                        *choice->mutable_prompt_logprobs());
    }
  }
  FillUsage(static_cast<int>(prepared.request.prompt.size()), observer->CompletionTokens(),
            observer->CachedTokens(), *response->mutable_usage());
  if (*admission != nullptr) (*admission)->Charge(response->usage().total_tokens());
  return grpc::Status::OK;
}

grpc::Status InferenceService::Chat(grpc::ServerContext* context, const v1::ChatRequest* request,
                                    v1::ChatResponse* response) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  PreparedCompletion prepared;
  std::shared_ptr<CompletionObserver> observer;
  if (absl::Status s = StartChat(*request, prepared, observer); !s.ok()) return ToGrpcStatus(s, context);
  const std::string& id = prepared.request.id;
  if (grpc::Status s = AwaitDone(*context, id, *observer); !s.ok()) return s;

  response->set_request_id(id);
  response->set_model(model_.id);
  std::vector<CompletionObserver::ChoiceResult> results = observer->Results();
  for (size_t i = 0; i < results.size(); ++i) {
    v1::ChatChoice* choice = response->add_choices();
    choice->set_index(static_cast<int>(i));
    choice->mutable_message()->set_role("assistant");
    choice->mutable_message()->set_content(std::move(results[i].text));
    choice->set_finish_reason(ToProto(results[i].finish_reason));
    choice->mutable_token_ids()->Add(results[i].token_ids.begin(), results[i].token_ids.end());
    AddLogprobs(results[i].logprobs, *choice->mutable_logprobs());
  }
  FillUsage(static_cast<int>(prepared.request.prompt.size()), observer->CompletionTokens(),
            observer->CachedTokens(), *response->mutable_usage());
  if (*admission != nullptr) (*admission)->Charge(response->usage().total_tokens());
  return grpc::Status::OK;
}

// Writes the messages gathered in one wake-up together (all but the last with a buffer hint) and clears them;
// false when the client is gone.
template <typename StreamResponse>
bool WriteBatch(grpc::ServerWriter<StreamResponse>& writer, std::vector<StreamResponse>& batch) {
  bool ok = true;
  for (size_t i = 0; i < batch.size() && ok; ++i) {
    grpc::WriteOptions options;
    if (i + 1 < batch.size()) options.set_buffer_hint();
    ok = writer.Write(batch[i], options);
  }
  batch.clear();
  return ok;
}

template <typename StreamResponse>
grpc::Status InferenceService::StreamEvents(grpc::ServerContext& context, const PreparedCompletion& prepared,
                                            CompletionObserver& observer,
                                            grpc::ServerWriter<StreamResponse>& writer) {
  const std::string& id = prepared.request.id;
  const int prompt_tokens = static_cast<int>(prepared.request.prompt.size());

  // Messages gathered per wake-up go out together: all but the last with a buffer hint.
  std::vector<StreamResponse> batch;
  const auto flush = [&]() { return WriteBatch(writer, batch); };

  v1::StreamHeader* header = batch.emplace_back().mutable_header();
  header->set_request_id(id);
  header->set_model(model_.id);
  header->set_prompt_tokens(prompt_tokens);
  header->set_num_choices(prepared.request.n);
  // The echo deltas: at once, or with the prompt's logprobs once they came (before any token).
  const bool echo_waits = prepared.echo && prepared.request.sampling.prompt_logprobs;
  const auto echo = [&](const std::vector<TokenLogprob>* prompt_logprobs) {
    for (int i = 0; i < prepared.request.n; ++i) {
      auto* delta = batch.emplace_back().mutable_delta();
      delta->set_index(i);
      SetDeltaText(*delta, prepared.prompt_text);
      if (prompt_logprobs != nullptr)
        SetDeltaPromptLogprobs(*delta, prepared.request.prompt, *prompt_logprobs);
    }
  };
  if (prepared.echo && !echo_waits && !prepared.prompt_text.empty()) echo(nullptr);
  if (!flush()) return Abandon(context, id);

  while (true) {
    if (context.IsCancelled()) return Abandon(context, id);
    CompletionObserver::Events events = observer.Take(options_.cancel_poll_interval);
    if (echo_waits && events.prompt_logprobs != nullptr) echo(events.prompt_logprobs.get());
    for (CompletionObserver::ChoiceEvents& choice : events.choices) {
      if (!choice.token_ids.empty() || !choice.text.empty()) {
        auto* delta = batch.emplace_back().mutable_delta();
        delta->set_index(choice.index);
        delta->mutable_token_ids()->Add(choice.token_ids.begin(), choice.token_ids.end());
        AddLogprobs(choice.logprobs, *delta->mutable_logprobs());
        SetDeltaText(*delta, std::move(choice.text));
      }
      if (choice.end.has_value()) {
        v1::ChoiceEnd* end = batch.emplace_back().mutable_end();
        end->set_index(choice.index);
        end->set_finish_reason(ToProto(*choice.end));
        end->set_completion_tokens(choice.completion_tokens);
      }
    }
    if (events.done.has_value() && events.done->ok()) {
      FillUsage(prompt_tokens, observer.CompletionTokens(), observer.CachedTokens(),
                *batch.emplace_back().mutable_trailer()->mutable_usage());
    }
    if (!flush()) return Abandon(context, id);
    if (events.done.has_value()) return ToGrpcStatus(*events.done, &context);
  }
}

grpc::Status InferenceService::CompleteStream(grpc::ServerContext* context,
                                              const v1::CompleteRequest* request,
                                              grpc::ServerWriter<v1::CompleteStreamResponse>* writer) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  PreparedCompletion prepared;
  std::shared_ptr<CompletionObserver> observer;
  std::shared_ptr<StreamJournal> journal;
  if (absl::Status s = StartCompletion(*request, prepared, observer, &journal); !s.ok())
    return ToGrpcStatus(s, context);
  if (journal != nullptr) return StreamFromJournal(*context, *journal, journal->Attach(nullptr), {}, *writer);
  const grpc::Status status = StreamEvents(*context, prepared, *observer, *writer);
  if (*admission != nullptr) {
    (*admission)->Charge(static_cast<int64_t>(prepared.request.prompt.size()) + observer->CompletionTokens());
  }
  return status;
}

grpc::Status InferenceService::ChatStream(grpc::ServerContext* context, const v1::ChatRequest* request,
                                          grpc::ServerWriter<v1::ChatStreamResponse>* writer) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  PreparedCompletion prepared;
  std::shared_ptr<CompletionObserver> observer;
  std::shared_ptr<StreamJournal> journal;
  if (absl::Status s = StartChat(*request, prepared, observer, &journal); !s.ok()) return ToGrpcStatus(s, context);
  if (journal != nullptr) return StreamFromJournal(*context, *journal, journal->Attach(nullptr), {}, *writer);
  const grpc::Status status = StreamEvents(*context, prepared, *observer, *writer);
  if (*admission != nullptr) {
    (*admission)->Charge(static_cast<int64_t>(prepared.request.prompt.size()) + observer->CompletionTokens());
  }
  return status;
}

template <typename StreamResponse>
grpc::Status InferenceService::StreamFromJournal(grpc::ServerContext& context, StreamJournal& journal,
                                                 uint64_t reader, JournalCursor cursor,
                                                 grpc::ServerWriter<StreamResponse>& writer) {
  const PreparedCompletion& prepared = journal.info().prepared;
  const std::string& id = journal.id();
  const int prompt_tokens = static_cast<int>(prepared.request.prompt.size());
  std::vector<StreamResponse> batch;
  const auto flush = [&]() { return WriteBatch(writer, batch); };
  // The client went away (or its deadline passed): the request goes on into the journal.
  const auto leave = [&]() {
    journal.Detach(reader);
    const bool deadline = context.deadline() <= std::chrono::system_clock::now();
    return grpc::Status(deadline ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED,
                        Cat("the client of request ", id, " left; it goes on and can be resumed"));
  };

  v1::StreamHeader* header = batch.emplace_back().mutable_header();
  header->set_request_id(id);
  header->set_model(model_.id);
  header->set_prompt_tokens(prompt_tokens);
  header->set_num_choices(1);
  if (!flush()) return leave();
  while (true) {
    if (context.IsCancelled()) return leave();
    JournalRead read = journal.Read(reader, cursor, options_.cancel_poll_interval);
    if (read.taken_over) {
      return grpc::Status(grpc::StatusCode::ABORTED, Cat("request ", id, " was resumed by another call"));
    }
    std::string text;
    for (const std::string& t : read.texts) text += t;
    text += read.tail;
    if (!read.token_ids.empty() || !text.empty()) {
      auto* delta = batch.emplace_back().mutable_delta();
      delta->set_index(0);
      delta->mutable_token_ids()->Add(read.token_ids.begin(), read.token_ids.end());
      AddLogprobs(read.logprobs, *delta->mutable_logprobs());
      SetDeltaText(*delta, std::move(text));
    }
    if (read.end.has_value()) {
      v1::ChoiceEnd* end = batch.emplace_back().mutable_end();
      end->set_index(0);
      end->set_finish_reason(ToProto(*read.end));
      end->set_completion_tokens(read.completion_tokens);
    }
    if (read.done.has_value() && read.done->ok()) {
      FillUsage(prompt_tokens, read.completion_tokens, read.cached_tokens,
                *batch.emplace_back().mutable_trailer()->mutable_usage());
    }
    if (!flush()) return leave();
    if (read.done.has_value()) {
      journal.Detach(reader);
      return ToGrpcStatus(*read.done, &context);
    }
  }
}

template <typename StreamResponse>
grpc::Status InferenceService::Resume(grpc::ServerContext& context, const v1::ResumeRequest& request,
                                      StreamKind kind, grpc::ServerWriter<StreamResponse>& writer) {
  if (journals_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "stream resumption is off on this server (--resume-window 0)");
  }
  if (request.request_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id is empty");
  }
  if (request.tokens_received() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        Cat("tokens_received must be >= 0, got ", request.tokens_received()));
  }
  absl::StatusOr<std::shared_ptr<StreamJournal>> journal = journals_->Find(request.request_id());
  if (!journal.ok()) return ToGrpcStatus(journal.status());
  if ((*journal)->info().kind != kind) {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        kind == StreamKind::kChat
            ? Cat("request ", request.request_id(), " is a completion stream: use ResumeStream")
            : Cat("request ", request.request_id(), " is a chat stream: use ResumeChatStream"));
  }
  const size_t produced = (*journal)->tokens();  // only grows
  if (static_cast<uint64_t>(request.tokens_received()) > produced) {
    return grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                        Cat("tokens_received = ", request.tokens_received(), " is more than the ", produced,
                            " tokens request ", request.request_id(), " has produced"));
  }
  JournalCursor cursor;
  cursor.tokens = static_cast<size_t>(request.tokens_received());
  return StreamFromJournal(context, **journal, (*journal)->Attach(nullptr), cursor, writer);
}

grpc::Status InferenceService::ResumeStream(grpc::ServerContext* context, const v1::ResumeRequest* request,
                                            grpc::ServerWriter<v1::CompleteStreamResponse>* writer) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  return Resume(*context, *request, StreamKind::kCompletion, *writer);
}

grpc::Status InferenceService::ResumeChatStream(grpc::ServerContext* context,
                                                const v1::ResumeRequest* request,
                                                grpc::ServerWriter<v1::ChatStreamResponse>* writer) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  return Resume(*context, *request, StreamKind::kChat, *writer);
}

grpc::Status InferenceService::Cancel(grpc::ServerContext* context, const v1::CancelRequest* request,
                                      v1::CancelResponse*) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  if (request->request_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id is empty");
  }
  return ToGrpcStatus(engine_.Cancel(request->request_id()));
}

grpc::Status InferenceService::Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                                        v1::TokenizeResponse* response) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  if (absl::Status s = CheckModelName(request->model(), model_, "model"); !s.ok()) return ToGrpcStatus(s);
  if (tokenizer_ == nullptr) return ToGrpcStatus(MissingTokenizerError(model_, "Tokenize"));
  absl::StatusOr<std::vector<int32_t>> ids =
      tokenizer_->Encode(request->text(), request->add_special_tokens());
  if (!ids.ok())
    return ToGrpcStatus(absl::Status(ids.status().code(), Cat("text: ", ids.status().message())));
  response->mutable_token_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status InferenceService::Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                                          v1::DetokenizeResponse* response) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(options_.api_keys, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  if (absl::Status s = CheckModelName(request->model(), model_, "model"); !s.ok()) return ToGrpcStatus(s);
  if (tokenizer_ == nullptr) return ToGrpcStatus(MissingTokenizerError(model_, "Detokenize"));
  const std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  if (absl::Status s = CheckTokenIds(ids, tokenizer_->vocab_size(), "token_ids"); !s.ok())
    return ToGrpcStatus(s);
  absl::StatusOr<std::string> text = tokenizer_->Decode(ids, request->skip_special_tokens());
  if (!text.ok()) return ToGrpcStatus(text.status());
  response->set_text(*std::move(text));
  return grpc::Status::OK;
}

void ModelService::Describe(v1::Model& out) const {
  out.set_id(model_.id);
  out.set_max_context_length(model_.max_position_embeddings);
  out.set_vocab_size(model_.vocab_size);
  out.set_tp_size(model_.tp_size);
  out.set_pp_size(model_.pp_size);
  out.set_num_layers(model_.num_layers);
  out.set_device(model_.device);
  out.set_ready(engine_.ready());
}

grpc::Status ModelService::ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                      v1::ListModelsResponse* response) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(api_keys_, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  Describe(*response->add_models());
  return grpc::Status::OK;
}

grpc::Status ModelService::GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                                    v1::Model* response) {
  absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admission = AdmitCall(api_keys_, *context);
  if (!admission.ok()) return ToGrpcStatus(admission.status(), context);
  if (request->id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "id is empty (ListModels lists the served models)");
  }
  if (request->id() != model_.id) {
    return grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        Cat("model \"", request->id(), "\" is not served here; this server serves \"", model_.id, "\""));
  }
  Describe(*response);
  return grpc::Status::OK;
}

}  // namespace tessera
