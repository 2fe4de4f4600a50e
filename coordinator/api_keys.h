// ApiKeys: who may use the public API (--api-key-file) and how much: each key may carry a request rate, a
// token rate and a number of requests in flight. The gRPC service (metadata `authorization: Bearer KEY`) and
// the HTTP API (header `Authorization: Bearer KEY`) admit each request here first. Keys are compared in
// constant time and never logged.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera {

// A key's limits; 0: unlimited.
struct ApiKeyLimits {
  int64_t requests_per_minute = 0;  // rpm=N
  int64_t tokens_per_minute = 0;    // tpm=N: prompt and generated tokens, charged when a request ends
  int64_t max_streams = 0;          // streams=N: requests in flight at once
};

class ApiKeys {
 public:
  // One key a line: `KEY [rpm=N] [tpm=N] [streams=N]`, fields separated by spaces or tabs; blank lines and
  // lines starting with '#' are skipped. Errors: INVALID_ARGUMENT naming `source` and the line number for an
  // unknown field, a value that is not a non-negative integer, a field given twice, a key listed twice or a
  // file without keys; NOT_FOUND when the file cannot be read.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ApiKeys>> Parse(std::string_view text,
                                                                      const std::string& source);
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& path);

  class Admission;
  // Admits one request presenting `authorization` (the header or metadata value: "Bearer KEY"). Errors:
  // UNAUTHENTICATED when it is missing, not a bearer token or not a key (the message never repeats it);
  // RESOURCE_EXHAUSTED naming the limit reached (rpm, tpm or streams). Thread-safe.
  [[nodiscard]] absl::StatusOr<std::unique_ptr<Admission>> Admit(std::string_view authorization,
                                                                 absl::Time now = absl::Now());

  // A request in flight: holds one of its key's streams until destroyed; Charge adds the tokens it used.
  class Admission {
   public:
    ~Admission();
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;
    void Charge(int64_t tokens, absl::Time now = absl::Now());
    // The key's position in the file (1-based line), for logs that must not show the key.
    int line() const;

   private:
    friend class ApiKeys;
    Admission(ApiKeys& keys, size_t index) : keys_(keys), index_(index) {}
    ApiKeys& keys_;
    size_t index_;
  };

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string key;
    ApiKeyLimits limits;
    int line = 0;
    // Guarded by ApiKeys::mu_: the starts of the requests and the tokens charged within the last minute.
    std::vector<absl::Time> requests;
    std::vector<std::pair<absl::Time, int64_t>> tokens;
    int64_t streams = 0;
  };
  ApiKeys() = default;

  absl::Mutex mu_;
  std::vector<Entry> entries_;  // the list is fixed after Parse; the counters in it are guarded by mu_
};

}  // namespace tessera
