// RunComplete: one Complete or CompleteStream call through the generated gRPC stub.
#include "coordinator/complete_command.h"

#include <grpcpp/grpcpp.h>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "core/tls.h"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera {
namespace {

struct ChoiceOutput {
  std::vector<int32_t> token_ids;
  std::string text;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
};

v1::CompleteRequest BuildRequest(const CompleteOptions& options) {
  v1::CompleteRequest request;
  request.set_model(options.model);
  if (options.prompt.has_value()) {
    request.set_text(*options.prompt);
  } else if (options.chat.has_value()) {
    for (const ChatMessageText& m : *options.chat) {
      v1::ChatMessage* message = request.mutable_chat()->add_messages();
      message->set_role(m.role);
      message->set_content(m.content);
    }
  } else {
    request.mutable_token_ids()->mutable_ids()->Add(options.prompt_ids->begin(), options.prompt_ids->end());
  }
  if (options.max_tokens) request.set_max_tokens(*options.max_tokens);
  if (options.temperature) request.set_temperature(*options.temperature);
  if (options.top_k) request.set_top_k(*options.top_k);
  if (options.top_p) request.set_top_p(*options.top_p);
  if (options.seed) request.set_seed(*options.seed);
  for (const std::string& stop : options.stop) request.add_stop(stop);
  return request;
}

int Failed(const grpc::Status& status, std::ostream& err) {
  err << absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())) << ": "
      << status.error_message() << "\n";
  return 1;
}

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return nullptr;
  }
}

void PrintJson(const std::vector<ChoiceOutput>& choices, std::ostream& out) {
  for (const ChoiceOutput& choice : choices) {
    nlohmann::ordered_json line = {{"token_ids", choice.token_ids}, {"text", choice.text}};
    const char* reason = FinishReasonName(choice.finish_reason);
    line["finish_reason"] = reason != nullptr ? nlohmann::ordered_json(reason) : nlohmann::ordered_json();
    // Text from the server is valid UTF-8; replace rather than throw if it ever is not.
    out << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  }
}

int RunUnary(v1::InferenceService::Stub& stub, grpc::ClientContext& context, const CompleteOptions& options,
             const v1::CompleteRequest& request, std::ostream& out, std::ostream& err) {
  v1::CompleteResponse response;
  grpc::Status status = stub.Complete(&context, request, &response);
  if (!status.ok()) return Failed(status, err);
  std::vector<ChoiceOutput> choices;
  for (const v1::Choice& choice : response.choices()) {
    choices.push_back(
        {{choice.token_ids().begin(), choice.token_ids().end()}, choice.text(), choice.finish_reason()});
  }
  if (options.json) {
    PrintJson(choices, out);
  } else {
    for (const ChoiceOutput& choice : choices) out << choice.text << "\n";
  }
  out.flush();
  return 0;
}

int RunStream(v1::InferenceService::Stub& stub, grpc::ClientContext& context, const CompleteOptions& options,
              const v1::CompleteRequest& request, std::ostream& out, std::ostream& err) {
  std::unique_ptr<grpc::ClientReader<v1::CompleteStreamResponse>> reader =
      stub.CompleteStream(&context, request);
  std::vector<ChoiceOutput> choices;
  v1::CompleteStreamResponse event;
  while (reader->Read(&event)) {
    switch (event.event_case()) {
      case v1::CompleteStreamResponse::kHeader:
        choices.resize(std::max(0, event.header().num_choices()));
        break;
      case v1::CompleteStreamResponse::kDelta: {
        const v1::TokenDelta& delta = event.delta();
        if (delta.index() < 0 || delta.index() >= static_cast<int>(choices.size())) break;
        ChoiceOutput& choice = choices[delta.index()];
        choice.token_ids.insert(choice.token_ids.end(), delta.token_ids().begin(), delta.token_ids().end());
        choice.text += delta.text();
        if (!options.json && choices.size() == 1 && !delta.text().empty()) out << delta.text() << std::flush;
        break;
      }
      case v1::CompleteStreamResponse::kEnd:
        if (event.end().index() >= 0 && event.end().index() < static_cast<int>(choices.size())) {
          choices[event.end().index()].finish_reason = event.end().finish_reason();
        }
        break;
      default:
        break;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    if (!options.json && choices.size() == 1 && !choices[0].text.empty()) out << "\n" << std::flush;
    return Failed(status, err);
  }
  if (options.json) {
    PrintJson(choices, out);
  } else if (choices.size() == 1) {
    out << "\n";
  } else {
    for (const ChoiceOutput& choice : choices) out << choice.text << "\n";
  }
  out.flush();
  return 0;
}

}  // namespace

int RunComplete(const CompleteOptions& options, std::ostream& out, std::ostream& err) {
  if (options.prompt.has_value() + options.prompt_ids.has_value() + options.chat.has_value() != 1) {
    err << "tessera complete: give exactly one of --prompt, --prompt-ids and --chat\n";
    return 2;
  }
  if (options.timeout <= absl::ZeroDuration()) {
    err << "tessera complete: --timeout must be positive, got " << absl::FormatDuration(options.timeout)
        << "\n";
    return 2;
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      GrpcChannelCredentials(TlsFiles{.cert = "", .key = "", .ca = options.tls_ca}, "--tls-ca");
  if (!credentials.ok()) {
    err << "tessera complete: " << credentials.status().message() << "\n";
    return 2;
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(options.server, *credentials);
  std::unique_ptr<v1::InferenceService::Stub> stub = v1::InferenceService::NewStub(channel);
  grpc::ClientContext context;
  if (!options.api_key.empty()) context.AddMetadata("authorization", "Bearer " + options.api_key);
  if (options.timeout != absl::InfiniteDuration()) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  }
  const v1::CompleteRequest request = BuildRequest(options);
  return options.stream ? RunStream(*stub, context, options, request, out, err)
                        : RunUnary(*stub, context, options, request, out, err);
}

}  // namespace tessera
