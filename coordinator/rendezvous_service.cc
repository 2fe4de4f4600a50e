#include "coordinator/rendezvous_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/secret.h"

namespace tessera {
namespace {

// A call without a deadline still gives up after this long (a worker that never arrives must not pin a thread
// forever).
constexpr absl::Duration kLongestWait = absl::Minutes(10);

}  // namespace

void RendezvousService::SetToken(const std::string& token) {
  absl::MutexLock lock(&mu_);
  token_ = token;
}

grpc::Status RendezvousService::CheckToken(const grpc::ServerContext& context) {
  std::string expected;
  {
    absl::MutexLock lock(&mu_);
    expected = token_;
  }
  if (expected.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(kStoreTokenMetadata);
  const std::string_view given = it == metadata.end() ? std::string_view()
                                                      : std::string_view(it->second.data(), it->second.size());
  if (ConstantTimeEquals(given, expected)) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "the rendezvous store answers only the registered workers of the current epoch (" +
                          std::string(kStoreTokenMetadata) + (it == metadata.end() ? " missing)" : " wrong)"));
}

grpc::Status RendezvousService::Set(grpc::ServerContext* context, const control::v1::SetRequest* request,
                                    control::v1::SetResponse*) {
  if (grpc::Status s = CheckToken(*context); !s.ok()) return s;
  if (request->key().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key is empty");
  absl::MutexLock lock(&mu_);
  values_[request->key()] = request->value();
  return grpc::Status::OK;
}

bool RendezvousService::AwaitKeys(grpc::ServerContext* context, const std::vector<std::string>& keys,
                                  grpc::Status* status) {
  const absl::Time deadline = std::min(absl::FromChrono(context->deadline()), absl::Now() + kLongestWait);
  auto retired = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const std::string& key : keys) {
      if (!key.starts_with(live_prefix_)) return true;
    }
    return false;
  };
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (shutting_down_ || retired()) return true;
    for (const std::string& key : keys) {
      if (!values_.contains(key)) return false;
    }
    return true;
  };
  absl::MutexLock lock(&mu_);
  // Wake up every 100 ms to notice a cancelled call (its client gave up or went away).
  while (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100))) {
    if (context->IsCancelled()) {
      *status = grpc::Status(grpc::StatusCode::CANCELLED, "the waiting call was cancelled");
      return false;
    }
    if (absl::Now() >= deadline) {
      std::string missing;
      for (const std::string& key : keys) {
        if (!values_.contains(key)) absl::StrAppend(&missing, missing.empty() ? "" : ", ", key);
      }
      *status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                             absl::StrCat("rendezvous keys never set: ", missing));
      return false;
    }
  }
  if (shutting_down_) {
    *status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down");
    return false;
  }
  if (retired()) {
    *status = grpc::Status(grpc::StatusCode::ABORTED,
                           absl::StrCat("the group was re-formed under ", live_prefix_, "; this one is gone"));
    return false;
  }
  return true;
}

void RendezvousService::RetireAllBut(const std::string& live_prefix) {
  absl::MutexLock lock(&mu_);
  live_prefix_ = live_prefix;
  for (auto it = values_.begin(); it != values_.end();) {
    it = it->first.starts_with(live_prefix) ? std::next(it) : values_.erase(it);
  }
}

grpc::Status RendezvousService::Wait(grpc::ServerContext* context, const control::v1::WaitRequest* request,
                                     control::v1::WaitResponse*) {
  if (grpc::Status s = CheckToken(*context); !s.ok()) return s;
  grpc::Status status;
  std::vector<std::string> keys(request->keys().begin(), request->keys().end());
  return AwaitKeys(context, keys, &status) ? grpc::Status::OK : status;
}

grpc::Status RendezvousService::Get(grpc::ServerContext* context, const control::v1::GetRequest* request,
                                    control::v1::GetResponse* response) {
  if (grpc::Status s = CheckToken(*context); !s.ok()) return s;
  grpc::Status status;
  if (!AwaitKeys(context, {request->key()}, &status)) return status;
  absl::MutexLock lock(&mu_);
  response->set_value(values_[request->key()]);
  return grpc::Status::OK;
}

void RendezvousService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
}

void RendezvousService::EraseGroup(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  for (auto it = values_.lower_bound(prefix); it != values_.end() && it->first.starts_with(prefix);) {
    it = values_.erase(it);
  }
}

}  // namespace tessera
