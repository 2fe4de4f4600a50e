// The gRPC side of `tessera bench`: streamed InferenceService.CompleteStream calls over one channel, and the
// served model's vocabulary size from ModelService.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tessera/v1/inference.grpc.pb.h"
#include "tools/bench/request.h"

namespace tessera::tools::bench {

class GrpcBenchClient : public BenchClient {
 public:
  // `server` is HOST:PORT; `model` empty means the served one; `api_key` (when set) goes with every call as
  // `authorization: Bearer KEY`; `credentials`: the channel's (core/tls.h; null: plaintext). Connects lazily
  // (failures show per request).
  GrpcBenchClient(const std::string& server, const std::string& model, const std::string& api_key = "",
                  std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);
  RequestResult Send(const BenchRequest& request, Clock::time_point run_start) override;

 private:
  std::string model_;
  std::string authorization_;  // "Bearer KEY", or empty
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::InferenceService::Stub> stub_;  // thread-safe
};

// The served model's vocab_size from ModelService.ListModels (the first model, or the one named `model`).
// UNAVAILABLE and the other gRPC errors pass through as "ListModels on SERVER: message"; NOT_FOUND when the
// server lists no model (or not `model`), FAILED_PRECONDITION when it reports no vocab_size.
[[nodiscard]] absl::StatusOr<int> QueryVocabSize(
    const std::string& server, const std::string& model, const std::string& api_key, absl::Duration timeout,
    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

}  // namespace tessera::tools::bench
