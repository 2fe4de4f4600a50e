#include "tools/bench/grpc_client.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tessera/v1/model.grpc.pb.h"

namespace tessera::tools::bench {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace

GrpcBenchClient::GrpcBenchClient(const std::string& server, const std::string& model,
                                 const std::string& api_key,
                                 std::shared_ptr<grpc::ChannelCredentials> credentials)
    : model_(model),
      authorization_(api_key.empty() ? "" : "Bearer " + api_key),
      channel_(grpc::CreateChannel(server, credentials ? credentials : grpc::InsecureChannelCredentials())),
      stub_(v1::InferenceService::NewStub(channel_)) {}

RequestResult GrpcBenchClient::Send(const BenchRequest& request, Clock::time_point run_start) {
  v1::CompleteRequest proto;
  proto.set_model(model_);
  if (request.text.has_value()) {
    proto.set_text(*request.text);
  } else {
    proto.mutable_token_ids()->mutable_ids()->Add(request.token_ids.begin(), request.token_ids.end());
  }
  proto.set_max_tokens(request.max_tokens);
  proto.set_temperature(0);
  proto.set_ignore_eos(request.ignore_eos);

  RequestResult result;
  result.input_tokens = request.text.has_value() ? 0 : static_cast<int>(request.token_ids.size());
  grpc::ClientContext context;
  if (!authorization_.empty()) context.AddMetadata("authorization", authorization_);
  const Clock::time_point sent = Clock::now();
  result.start_s = Seconds(sent - run_start);
  std::unique_ptr<grpc::ClientReader<v1::CompleteStreamResponse>> reader =
      stub_->CompleteStream(&context, proto);
  v1::CompleteStreamResponse event;
  Clock::time_point last_token;
  bool any_token = false;
  int ended_tokens = -1;
  while (reader->Read(&event)) {
    const Clock::time_point now = Clock::now();
    switch (event.event_case()) {
      case v1::CompleteStreamResponse::kHeader:
        result.input_tokens = event.header().prompt_tokens();
        break;
      case v1::CompleteStreamResponse::kDelta:
        if (event.delta().token_ids_size() == 0) break;
        if (!any_token) {
          result.ttft_s = Seconds(now - sent);
        } else {
          result.itl_s.push_back(Seconds(now - last_token));
        }
        any_token = true;
        last_token = now;
        result.output_tokens += event.delta().token_ids_size();
        break;
      case v1::CompleteStreamResponse::kEnd:
        ended_tokens = std::max(ended_tokens, 0) + event.end().completion_tokens();
        break;
      default:
        break;
    }
  }
  const grpc::Status status = reader->Finish();
  result.e2e_s = Seconds(Clock::now() - sent);
  if (!status.ok()) {
    result.code = CodeName(status.error_code());
    result.error = absl::StrCat(result.code, ": ", status.error_message());
    return result;
  }
  if (ended_tokens >= 0) result.output_tokens = ended_tokens;
  if (!any_token) result.ttft_s = result.e2e_s;
  result.ok = true;
  return result;
}

absl::StatusOr<int> QueryVocabSize(const std::string& server, const std::string& model,
                                   const std::string& api_key, absl::Duration timeout,
                                   std::shared_ptr<grpc::ChannelCredentials> credentials) {
  auto stub = v1::ModelService::NewStub(
      grpc::CreateChannel(server, credentials ? credentials : grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::ListModelsResponse response;
  const grpc::Status status = stub->ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("ListModels on ", server, ": ", status.error_message()));
  }
  for (const v1::Model& m : response.models()) {
    if (!model.empty() && m.id() != model) continue;
    if (m.vocab_size() <= 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("model ", m.id(), " on ", server, " reports no vocab_size"));
    }
    return m.vocab_size();
  }
  return absl::NotFoundError(absl::StrCat("ListModels on ", server, " lists no model",
                                          model.empty() ? "" : absl::StrCat(" named ", model)));
}

}  // namespace tessera::tools::bench
