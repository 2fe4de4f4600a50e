#include "parallel/grpc_store.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/secret.h"
#include "parallel/timeout_error.h"

namespace tessera {
namespace {

// Every call: a deadline, waiting for the coordinator while it starts, and the store token.
void Prepare(grpc::ClientContext& context, std::chrono::milliseconds timeout, const std::string& token) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  context.set_wait_for_ready(true);  // the coordinator may still be starting
  if (!token.empty()) context.AddMetadata(kStoreTokenMetadata, token);
}

// TimeoutError when the call ran past its deadline, gloo::IoException otherwise.
[[noreturn]] void Throw(const std::string& op, const std::string& what, const std::string& address,
                        const grpc::Status& status) {
  const bool timed_out = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  const std::string message = absl::StrCat("rendezvous ", op, " of ", what, " at ", address, ": ",
                                           timed_out ? "timed out: " : "", status.error_message());
  if (timed_out) throw TimeoutError(message);
  throw gloo::IoException(message);
}

}  // namespace

GrpcStore::GrpcStore(const std::string& address, std::chrono::milliseconds timeout, std::string token,
                     const TlsFiles& tls)
    : address_(address), timeout_(timeout), token_(std::move(token)) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      GrpcChannelCredentials(tls, "the rendezvous store's channel");
  if (!credentials.ok()) throw gloo::IoException(std::string(credentials.status().message()));
  stub_ = control::v1::Rendezvous::NewStub(grpc::CreateChannel(address, *credentials));
}

void GrpcStore::set(const std::string& key, const std::vector<char>& data) {
  grpc::ClientContext context;
  Prepare(context, timeout_, token_);
  control::v1::SetRequest request;
  request.set_key(key);
  request.set_value(std::string(data.begin(), data.end()));
  control::v1::SetResponse response;
  grpc::Status status = stub_->Set(&context, request, &response);
  if (!status.ok()) Throw("set", key, address_, status);
}

std::vector<char> GrpcStore::get(const std::string& key) {
  grpc::ClientContext context;
  Prepare(context, timeout_, token_);
  control::v1::GetRequest request;
  request.set_key(key);
  control::v1::GetResponse response;
  grpc::Status status = stub_->Get(&context, request, &response);
  if (!status.ok()) Throw("get", key, address_, status);
  return std::vector<char>(response.value().begin(), response.value().end());
}

void GrpcStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void GrpcStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  grpc::ClientContext context;
  Prepare(context, timeout, token_);
  control::v1::WaitRequest request;
  for (const std::string& key : keys) request.add_keys(key);
  control::v1::WaitResponse response;
  grpc::Status status = stub_->Wait(&context, request, &response);
  if (!status.ok()) Throw("wait", absl::StrCat(keys.size(), " keys"), address_, status);
}

}  // namespace tessera
