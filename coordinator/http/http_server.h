// HttpServer: the OpenAI-compatible HTTP/1.1 front end (Boost.Beast), next to the gRPC API in the
// coordinator. One io_context run by a few threads; each connection is a C++20 coroutine on its own strand,
// and engine events are posted onto that strand, so thousands of streaming connections need no thread each.
// Request parsing and response bodies live in OpenAiApi; this header keeps Boost out of its includers.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/api_keys.h"
#include "coordinator/engine.h"
#include "coordinator/http/openai_api.h"
#include "coordinator/stream_journal_store.h"
#include "core/tls.h"

namespace tessera {

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;                          // 0: the OS picks a free one
  int threads = 2;                       // io_context threads
  size_t max_body_bytes = 16 << 20;      // larger request bodies: 413
  std::function<std::string()> metrics;  // GET /metrics (Prometheus text); empty: an empty page
  // When set (it must outlive the server), every route but /health and /metrics needs `Authorization: Bearer
  // KEY` of one of these keys: 401 without, 429 over the key's limits. protect_metrics: /metrics too.
  ApiKeys* api_keys = nullptr;
  bool protect_metrics = false;
  // HTTPS with this certificate and key (TLS 1.2 or later), re-read when the files change (checked at most
  // every kTlsReloadSeconds, on a new connection); empty: plain HTTP.
  TlsFiles tls;
  // Receives one line (no newline) when a changed certificate is loaded or cannot be; may be empty.
  std::function<void(const std::string&)> log;
};

class HttpServer {
 public:
  // Listens and starts serving `api` over `engine` (both must outlive the server). `journals` keeps resumable
  // streams ("resumable": true; GET /v1/completions/{id}/stream and /v1/chat/completions/{id}/stream resume
  // them); null: resumption off. It must outlive the server. Errors: UNAVAILABLE naming the address when it
  // cannot listen; INVALID_ARGUMENT naming the file when options.tls cannot be used.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const HttpServerOptions& options, std::shared_ptr<const OpenAiApi> api, Engine& engine,
      StreamJournalStore* journals = nullptr);
  ~HttpServer();  // Stop()

  int port() const;
  // Closes the listener and every connection (their requests are cancelled in the engine) and joins the
  // threads. Idempotent; not to be called from a server thread.
  void Stop();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
