// HttpServer: the Beast transport. The only translation unit that includes Beast / Asio (template-heavy).
// Each connection is a coroutine on its own strand: read a request, route it, and for a generation wait on a
// timer that the engine's events cancel (they are posted onto the strand), or on the client closing the
// socket, which cancels the request in the engine. With TLS, a connection is the same coroutine over a TLS
// stream (Stream picks one at run time, so the coroutines are compiled once).
#include "coordinator/http/http_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/status_macros.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Request = http::request<http::string_body>;
constexpr auto kTuple = net::as_tuple(net::use_awaitable);
// Bytes of a pipelined next request read while a generation runs; past this the client is no longer watched.
constexpr size_t kMaxReadAhead = 64 << 10;
constexpr auto kIdleTimeout = std::chrono::seconds(120);
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
constexpr auto kCloseNotifyTimeout = std::chrono::seconds(1);
// A request without a valid API key is answered 401 after this long, holding no thread (a timer on the
// connection's strand): a client guessing keys, or a flood of keyless requests, gets at most ~10 refusals a
// second per connection, and the CPU the server spends refusing stays small next to what keyed requests need.
constexpr auto kUnauthenticatedDelay = std::chrono::milliseconds(100);

// A connection's byte stream: plain TCP, or TLS over it. Beast's and Asio's algorithms take it as an
// AsyncReadStream / AsyncWriteStream; each operation goes to the one that is in use.
class Stream {
 public:
  using executor_type = beast::tcp_stream::executor_type;

  // Plain TCP when `tls` is null.
  Stream(tcp::socket socket, std::shared_ptr<ssl::context> tls) : context_(std::move(tls)) {
    if (context_ != nullptr) {
      tls_.emplace(std::move(socket), *context_);
    } else {
      plain_.emplace(std::move(socket));
    }
  }

  executor_type get_executor() { return lowest().get_executor(); }
  beast::tcp_stream& lowest() { return tls_ ? tls_->next_layer() : *plain_; }
  bool is_tls() const { return tls_.has_value(); }
  beast::ssl_stream<beast::tcp_stream>& tls() { return *tls_; }

  template <class Buffers, class Token>
  auto async_read_some(const Buffers& buffers, Token&& token) {
    if (tls_) return tls_->async_read_some(buffers, std::forward<Token>(token));
    return plain_->async_read_some(buffers, std::forward<Token>(token));
  }
  template <class Buffers, class Token>
  auto async_write_some(const Buffers& buffers, Token&& token) {
    if (tls_) return tls_->async_write_some(buffers, std::forward<Token>(token));
    return plain_->async_write_some(buffers, std::forward<Token>(token));
  }

 private:
  std::shared_ptr<ssl::context> context_;  // outlives tls_ (declared first: destroyed last)
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
  std::optional<beast::tcp_stream> plain_;
};

// The server's TLS context, loaded again when the certificate or key file changes. Connections keep the
// context they started with.
class TlsContexts {
 public:
  TlsContexts(TlsFiles files, std::function<void(const std::string&)> log)
      : files_(std::move(files)), log_(std::move(log)) {}

  // Loads the files. Errors: INVALID_ARGUMENT naming the file.
  absl::Status Load() {
    RETURN_IF_ERROR(CheckTlsFiles(files_, "--tls-cert / --tls-key", /*need_identity=*/true));
    auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
    context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                         ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
    beast::error_code ec;
    context->use_certificate_chain_file(files_.cert, ec);
    if (ec) return absl::InvalidArgumentError(Cat("--tls-cert ", files_.cert, ": ", ec.message()));
    context->use_private_key_file(files_.key, ssl::context::pem, ec);
    if (ec) return absl::InvalidArgumentError(Cat("--tls-key ", files_.key, ": ", ec.message()));
    const Stamp stamp = StampOf();
    std::lock_guard lock(mu_);
    context_ = std::move(context);
    stamp_ = stamp;
    return absl::OkStatus();
  }

  // The context for a new connection: the loaded one, reloaded first when the files changed (looked at no
  // more often than every kTlsReloadSeconds). A change that does not load (a key and certificate written one
  // after the other) keeps the old context and is tried again next time.
  std::shared_ptr<ssl::context> Current() {
    const auto now = std::chrono::steady_clock::now();
    bool check = false;
    {
      std::lock_guard lock(mu_);
      if (now - checked_ >= std::chrono::seconds(kTlsReloadSeconds)) {
        checked_ = now;
        check = true;
      }
    }
    if (check && StampOf() != stamp()) {
      absl::Status s = Load();
      if (log_) {
        log_(s.ok() ? Cat("HTTP: loaded the changed TLS certificate ", files_.cert)
                    : Cat("HTTP: keeping the TLS certificate in use: ", s.message()));
      }
    }
    std::lock_guard lock(mu_);
    return context_;
  }

 private:
  using Stamp = std::pair<std::filesystem::file_time_type, std::filesystem::file_time_type>;
  Stamp StampOf() const {
    std::error_code ignored;
    return {std::filesystem::last_write_time(files_.cert, ignored),
            std::filesystem::last_write_time(files_.key, ignored)};
  }
  Stamp stamp() {
    std::lock_guard lock(mu_);
    return stamp_;
  }

  const TlsFiles files_;
  const std::function<void(const std::string&)> log_;
  std::mutex mu_;
  std::shared_ptr<ssl::context> context_;
  Stamp stamp_;
  std::chrono::steady_clock::time_point checked_ = std::chrono::steady_clock::now();
};

// An io_context whose pending handlers (suspended connection coroutines among them) Stop can destroy; they hold
// EventQueues, which hold the context, so without this they would keep each other alive.
class IoContext : public net::io_context {
 public:
  using net::io_context::io_context;
  using net::io_context::shutdown;
};

// One generation's event queue on the connection's strand. Bounded by the request itself: at most one event
// per generated token, one per choice end and one per prompt done (n * (max_tokens + 1) + prompts).
struct EventQueue {
  EventQueue(std::shared_ptr<IoContext> context, net::any_io_executor strand)
      : ioc(std::move(context)), wake(strand) {}
  const std::shared_ptr<IoContext> ioc;  // outlives `wake` (declared first: destroyed last)
  net::steady_timer wake;                      // cancelled when an event arrives or the watch read ends
  std::deque<ChoiceEvent> events;
  bool reading = false;      // WatchClient's read is pending
  bool client_gone = false;  // it ended with EOF or an error
};

// Reads from the client while a generation runs (a callback on the connection's strand, not a parallel group
// of awaitables): EOF or an error means the client went away; bytes are its next (pipelined) request and stay
// in `buffer`. `buffer` must outlive the read: the caller waits for `reading` to clear before leaving.
void WatchClient(const std::shared_ptr<EventQueue>& queue, Stream& stream, beast::flat_buffer& buffer) {
  if (queue->reading || queue->client_gone || buffer.size() >= kMaxReadAhead) return;
  queue->reading = true;
  stream.async_read_some(buffer.prepare(4096), [queue, &buffer](beast::error_code ec, size_t n) {
    queue->reading = false;
    if (!ec) {
      buffer.commit(n);
    } else if (ec != net::error::operation_aborted) {
      queue->client_gone = true;
    }
    queue->wake.cancel();
  });
}

// Stops WatchClient's read, if one is pending, and waits until it has ended; the bytes it read (if any) stay
// in its buffer.
net::awaitable<void> StopWatching(EventQueue& queue, Stream& stream) {
  if (!queue.reading) co_return;
  beast::error_code ignored;
  stream.lowest().socket().cancel(ignored);
  while (queue.reading) {
    queue.wake.expires_at(net::steady_timer::time_point::max());
    co_await queue.wake.async_wait(kTuple);
  }
}

}  // namespace

struct HttpServer::Impl {
  Impl(const HttpServerOptions& o, std::shared_ptr<const OpenAiApi> a, Engine& e, StreamJournalStore* j)
      : options(o),
        api(std::move(a)),
        engine(e),
        journals(j),
        ioc(std::make_shared<IoContext>(o.threads)),
        acceptor(*ioc) {}

  const HttpServerOptions options;
  const std::shared_ptr<const OpenAiApi> api;
  Engine& engine;
  StreamJournalStore* const journals;  // null: resumption off
  std::shared_ptr<IoContext> ioc;  // shared with observers that may outlive the server
  tcp::acceptor acceptor;
  std::unique_ptr<TlsContexts> tls;  // null: plain HTTP
  std::vector<std::thread> threads;
  int port = 0;
  bool stopped = false;  // touched by Stop's caller only
};

namespace {

using Impl = HttpServer::Impl;

// The header of a server-sent-events reply (chunked, not cached).
http::response<http::empty_body> SseHeader(const Request& req) {
  http::response<http::empty_body> res{http::status::ok, req.version()};
  res.set(http::field::server, "tessera");
  res.set(http::field::content_type, "text/event-stream");
  res.set(http::field::cache_control, "no-cache");
  res.keep_alive(req.keep_alive());
  res.chunked(true);
  return res;
}

net::awaitable<bool> WriteReply(Stream& stream, const Request& req, HttpReply reply) {
  http::response<http::string_body> res;
  res.version(req.version());
  res.result(static_cast<unsigned>(reply.status));
  res.set(http::field::server, "tessera");
  res.set(http::field::content_type, reply.content_type);
  // Not serving (starting, draining, a group re-forming past --replacement-timeout): when to try again.
  if (reply.status == 503) res.set(http::field::retry_after, "1");
  res.keep_alive(req.keep_alive());
  res.body() = std::move(reply.body);
  res.prepare_payload();
  auto [ec, n] = co_await http::async_write(stream, res, kTuple);
  co_return !ec && req.keep_alive();
}

net::awaitable<bool> WriteChunk(Stream& stream, const std::string& data) {
  auto [ec, n] = co_await net::async_write(stream, http::make_chunk(net::buffer(data)), kTuple);
  co_return !ec;
}

// A resumable call's SSE stream read from its journal: the headers, the chat role chunks when `fresh`, then
// chunks as the journal fills, to the request's end. The first `skip` tokens are replayed without being sent
// (the client has them). The client leaving detaches the journal (the request goes on); another connection
// resuming the stream ends this one with an error event. Returns whether the connection may serve another.
net::awaitable<bool> StreamJournalSse(Impl& impl, Stream& stream, beast::flat_buffer& buffer,
                                      const Request& req, const OpenAiCall& call,
                                      std::shared_ptr<StreamJournal> journal, size_t skip, bool fresh) {
  auto queue = std::make_shared<EventQueue>(impl.ioc, co_await net::this_coro::executor);
  // The journal's news wakes this coroutine; every suspension below is followed by a Read, so none is lost.
  const uint64_t reader = journal->Attach(
      [queue, strand = queue->wake.get_executor()] { net::post(strand, [queue] { queue->wake.cancel(); }); });
  OpenAiCallState state(call);
  JournalCursor cursor;
  if (skip > 0) {
    for (ChoiceEvent& e : EventsOfJournalRead(journal->Read(reader, cursor, absl::ZeroDuration(), skip))) {
      state.Replay(e);
    }
  }
  http::response<http::empty_body> res = SseHeader(req);
  http::response_serializer<http::empty_body> serializer{res};
  auto [ec, n] = co_await http::async_write_header(stream, serializer, kTuple);
  bool client_gone = ec.failed();
  if (fresh) {
    const std::string start = state.StreamStart();
    if (!client_gone && !start.empty()) client_gone = !co_await WriteChunk(stream, start);
  }
  bool taken_over = false;
  while (!client_gone) {
    JournalRead read = journal->Read(reader, cursor);
    if (read.taken_over) {
      taken_over = true;
      break;
    }
    std::string out;
    for (ChoiceEvent& e : EventsOfJournalRead(std::move(read))) out += state.Apply(e);
    if (!out.empty()) {
      client_gone = !co_await WriteChunk(stream, out);
      continue;
    }
    if (queue->client_gone) client_gone = true;
    if (client_gone || state.done()) break;
    WatchClient(queue, stream, buffer);
    queue->wake.expires_at(net::steady_timer::time_point::max());
    co_await queue->wake.async_wait(kTuple);  // news, or the watch read ended
  }
  co_await StopWatching(*queue, stream);
  journal->Detach(reader);           // no-op after a take-over
  if (client_gone) co_return false;  // the request goes on; the client may resume it
  if (taken_over) {
    const std::string error = OpenAiCallState::StreamError(
        ApiError{409, Cat("request ", call.id, " was resumed by another connection"), "", "conflict", ""});
    co_await WriteChunk(stream, error);
    co_return false;
  }
  const std::string tail =
      state.status().ok() ? state.StreamEnd() : OpenAiCallState::StreamError(ErrorFromStatus(state.status()));
  if (!co_await WriteChunk(stream, tail)) co_return false;
  auto [ec_last, n_last] = co_await net::async_write(stream, http::make_chunk_last(), kTuple);
  co_return !ec_last && req.keep_alive();
}

// A resumable call: its journal is the engine request's observer, and the stream is read from it.
net::awaitable<bool> GenerateResumable(Impl& impl, Stream& stream, beast::flat_buffer& buffer,
                                       const Request& req, const OpenAiCall& call) {
  StreamInfo info;
  info.kind = call.kind == ApiKind::kChat ? StreamKind::kChat : StreamKind::kCompletion;
  info.model = call.model;
  info.created = call.created;
  info.include_usage = call.include_usage;
  info.prepared = call.prompts[0];
  absl::StatusOr<std::shared_ptr<StreamJournal>> journal = impl.journals->Create(impl.api->tokenizer(), info);
  absl::Status status = journal.status();
  if (status.ok()) {
    GenerationRequest request = call.prompts[0].request;
    status = impl.engine.Submit(std::move(request), *journal);
    if (!status.ok()) impl.journals->Remove(call.prompts[0].request.id);
  }
  if (!status.ok()) {
    HttpReply reply = ErrorReply(ErrorFromStatus(status));
    co_return co_await WriteReply(stream, req, std::move(reply));
  }
  co_return co_await StreamJournalSse(impl, stream, buffer, req, call, *std::move(journal), 0,
                                      /*fresh=*/true);
}

// GET /v1/completions/{id}/stream?tokens_received=N (and /v1/chat/completions/...): the rest of a resumable
// stream after the client's first N tokens.
net::awaitable<bool> Resume(Impl& impl, Stream& stream, beast::flat_buffer& buffer, const Request& req,
                            ApiKind kind, const std::string& id, std::string_view query) {
  std::optional<ApiError> error;
  int64_t tokens_received = 0;
  std::shared_ptr<StreamJournal> journal;
  for (std::string_view rest = query; !rest.empty() && !error;) {
    const size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.substr(0, pair.find('=')) != "tokens_received") continue;
    const std::string_view value =
        pair.find('=') == std::string_view::npos ? "" : pair.substr(pair.find('=') + 1);
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), tokens_received);
    if (ec != std::errc() || end != value.data() + value.size() || tokens_received < 0) {
      error = ApiError{400, Cat("'tokens_received' must be an integer >= 0, got '", value, "'"),
                       "tokens_received", "invalid_request_error", ""};
    }
  }
  if (!error && impl.journals == nullptr) {
    error = ApiError{400, "stream resumption is off on this server (--resume-window 0)", "",
                     "invalid_request_error", ""};
  }
  if (!error) {
    absl::StatusOr<std::shared_ptr<StreamJournal>> found = impl.journals->Find(id);
    if (!found.ok()) {
      error = ErrorFromStatus(found.status());
    } else if (((*found)->info().kind == StreamKind::kChat) != (kind == ApiKind::kChat)) {
      error = ApiError{400,
                       Cat("request ", id, " is a ", kind == ApiKind::kChat ? "completion" : "chat",
                           " stream: resume it at /v1/", kind == ApiKind::kChat ? "" : "chat/",
                           "completions/", id, "/stream"),
                       "", "invalid_request_error", ""};
    } else if (static_cast<uint64_t>(tokens_received) > (*found)->tokens()) {
      error = ApiError{400,
                       Cat("tokens_received = ", tokens_received, " is more than the ", (*found)->tokens(),
                           " tokens request ", id, " has produced"),
                       "tokens_received", "invalid_request_error", ""};
    } else {
      journal = *std::move(found);
    }
  }
  if (error) {
    HttpReply reply = ErrorReply(*error);
    co_return co_await WriteReply(stream, req, std::move(reply));
  }
  const OpenAiCall call = impl.api->CallOfJournal(*journal);
  co_return co_await StreamJournalSse(impl, stream, buffer, req, call, std::move(journal),
                                      static_cast<size_t>(tokens_received), /*fresh=*/false);
}

// Runs one /v1/completions or /v1/chat/completions call. Returns whether the connection may serve another.
net::awaitable<bool> Generate(Impl& impl, Stream& stream, beast::flat_buffer& buffer, const Request& req,
                              ApiKind kind, ApiKeys::Admission* admission) {
  OpenAiCall call;
  // Replies are named locals before co_await: GCC 12 destroys some temporaries in co_await expressions twice.
  if (std::optional<ApiError> e = impl.api->Prepare(kind, req.body(), call)) {
    HttpReply reply = ErrorReply(*e);
    co_return co_await WriteReply(stream, req, std::move(reply));
  }
  if (call.resumable) co_return co_await GenerateResumable(impl, stream, buffer, req, call);
  auto queue = std::make_shared<EventQueue>(impl.ioc, co_await net::this_coro::executor);
  auto sink = [queue, strand = queue->wake.get_executor()](ChoiceEvent event) {
    net::post(strand, [queue, event = std::move(event)]() mutable {
      queue->events.push_back(std::move(event));
      queue->wake.cancel();
    });
  };
  std::vector<std::string> ids;
  for (size_t p = 0; p < call.prompts.size(); ++p) {
    auto observer = std::make_shared<ChoiceEventObserver>(impl.api->tokenizer(), static_cast<int>(p),
                                                          call.prompts[p], sink);
    GenerationRequest request = call.prompts[p].request;
    if (absl::Status s = impl.engine.Submit(std::move(request), std::move(observer)); !s.ok()) {
      for (const std::string& id : ids) (void)impl.engine.Cancel(id);
      HttpReply reply = ErrorReply(ErrorFromStatus(s));
      co_return co_await WriteReply(stream, req, std::move(reply));
    }
    ids.push_back(call.prompts[p].request.id);
  }

  OpenAiCallState state(call);
  bool client_gone = false;
  if (call.stream) {
    http::response<http::empty_body> res = SseHeader(req);
    http::response_serializer<http::empty_body> serializer{res};
    auto [ec, n] = co_await http::async_write_header(stream, serializer, kTuple);
    client_gone = ec.failed();
    const std::string start = state.StreamStart();
    if (!client_gone && !start.empty()) client_gone = !co_await WriteChunk(stream, start);
  }
  while (!client_gone) {
    std::string out;
    for (; !queue->events.empty(); queue->events.pop_front()) out += state.Apply(queue->events.front());
    if (!out.empty()) {
      client_gone = !co_await WriteChunk(stream, out);
      continue;  // events may have come while writing
    }
    if (queue->client_gone) client_gone = true;
    if (client_gone || state.done()) break;
    WatchClient(queue, stream, buffer);
    queue->wake.expires_at(net::steady_timer::time_point::max());
    co_await queue->wake.async_wait(kTuple);  // an event, or the watch read ended
  }
  co_await StopWatching(*queue, stream);
  if (admission != nullptr) admission->Charge(state.TokensUsed());
  if (client_gone) {
    for (const std::string& id : ids) (void)impl.engine.Cancel(id);  // NOT_FOUND: it ended meanwhile
    co_return false;
  }
  if (!call.stream) {
    HttpReply reply = state.status().ok() ? state.UnaryReply() : ErrorReply(ErrorFromStatus(state.status()));
    co_return co_await WriteReply(stream, req, std::move(reply));
  }
  const std::string tail =
      state.status().ok() ? state.StreamEnd() : OpenAiCallState::StreamError(ErrorFromStatus(state.status()));
  if (!co_await WriteChunk(stream, tail)) co_return false;
  auto [ec, n] = co_await net::async_write(stream, http::make_chunk_last(), kTuple);
  co_return !ec && req.keep_alive();
}

HttpReply NotFound(const std::string& target) {
  return ErrorReply(ApiError{404, Cat("no route for ", target), "", "not_found_error", ""});
}

net::awaitable<bool> Route(Impl& impl, Stream& stream, beast::flat_buffer& buffer, const Request& req) {
  std::string target(req.target());
  std::string query;
  if (size_t q = target.find('?'); q != std::string::npos) {
    query = target.substr(q + 1);
    target.resize(q);
  }
  const bool get = req.method() == http::verb::get, post = req.method() == http::verb::post;
  // API keys: everything but the probes (and /metrics unless protected) needs one; the admission is held while
  // the request runs (its key's streams) and charged with the tokens it used.
  std::unique_ptr<ApiKeys::Admission> admission;
  const bool open = target == "/health" || (target == "/metrics" && !impl.options.protect_metrics);
  if (impl.options.api_keys != nullptr && !open) {
    const auto header = req.find(http::field::authorization);
    const std::string_view authorization =
        header == req.end() ? std::string_view() : std::string_view(header->value().data(), header->value().size());
    absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> admitted = impl.options.api_keys->Admit(authorization);
    if (!admitted.ok()) {
      if (absl::IsUnauthenticated(admitted.status())) {
        net::steady_timer delay(co_await net::this_coro::executor, kUnauthenticatedDelay);
        co_await delay.async_wait(kTuple);
      }
      HttpReply reply = ErrorReply(ErrorFromStatus(admitted.status()));
      co_return co_await WriteReply(stream, req, std::move(reply));
    }
    admission = std::move(admitted).value();
  }
  // GET /v1/completions/{id}/stream, GET /v1/chat/completions/{id}/stream: resume a stream.
  for (const auto& [prefix, kind] :
       {std::pair<std::string_view, ApiKind>{"/v1/completions/", ApiKind::kCompletion},
        std::pair<std::string_view, ApiKind>{"/v1/chat/completions/", ApiKind::kChat}}) {
    constexpr std::string_view kSuffix = "/stream";
    if (get && target.size() > prefix.size() + kSuffix.size() && target.starts_with(prefix) &&
        target.ends_with(kSuffix)) {
      const std::string id = target.substr(prefix.size(), target.size() - prefix.size() - kSuffix.size());
      co_return co_await Resume(impl, stream, buffer, req, kind, id, query);
    }
  }
  if (target == "/v1/completions" && post)
    co_return co_await Generate(impl, stream, buffer, req, ApiKind::kCompletion, admission.get());
  if (target == "/v1/chat/completions" && post)
    co_return co_await Generate(impl, stream, buffer, req, ApiKind::kChat, admission.get());
  HttpReply reply;
  if (target == "/health" && get) {
    reply = impl.engine.ready()
                ? HttpReply{200, "application/json", "{}"}
                : ErrorReply(ApiError{503, "the engine is not serving", "", "service_unavailable", ""});
  } else if (target == "/v1/models" && get) {
    reply = impl.api->Models();
  } else if (target == "/metrics" && get) {
    reply = HttpReply{200, "text/plain; version=0.0.4; charset=utf-8",
                      impl.options.metrics ? impl.options.metrics() : std::string()};
  } else if (target == "/tokenize" && post) {
    reply = impl.api->Tokenize(req.body());
  } else if (target == "/detokenize" && post) {
    reply = impl.api->Detokenize(req.body());
  } else if (target == "/v1/completions" || target == "/v1/chat/completions" || target == "/health" ||
             target == "/v1/models" || target == "/metrics" || target == "/tokenize" ||
             target == "/detokenize") {
    reply = ErrorReply(ApiError{405, Cat(std::string(req.method_string()), " is not allowed on ", target), "",
                                "invalid_request_error", ""});
  } else {
    reply = NotFound(target);
  }
  co_return co_await WriteReply(stream, req, std::move(reply));
}

net::awaitable<void> Session(Impl& impl, tcp::socket socket) {
  Stream stream(std::move(socket), impl.tls != nullptr ? impl.tls->Current() : nullptr);
  if (stream.is_tls()) {
    stream.lowest().expires_after(kHandshakeTimeout);
    auto [ec] = co_await stream.tls().async_handshake(ssl::stream_base::server, kTuple);
    if (ec) co_return;  // not TLS, an untrusted certificate, a timeout: the socket closes
  }
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(impl.options.max_body_bytes);
    stream.lowest().expires_after(kIdleTimeout);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, kTuple);
    stream.lowest().expires_never();
    if (ec == http::error::body_limit) {
      Request req;
      req.version(11);
      req.keep_alive(false);
      HttpReply reply =
          ErrorReply(ApiError{413, Cat("the request body is over ", impl.options.max_body_bytes, " bytes"),
                              "", "invalid_request_error", ""});
      co_await WriteReply(stream, req, std::move(reply));
      break;
    }
    if (ec) break;
    const Request req = parser.release();
    if (!co_await Route(impl, stream, buffer, req)) break;
  }
  if (stream.is_tls()) {  // close_notify, so that the client can tell the end from a cut
    stream.lowest().expires_after(kCloseNotifyTimeout);
    co_await stream.tls().async_shutdown(kTuple);
  }
  beast::error_code ignored;
  stream.lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
}

net::awaitable<void> Accept(Impl& impl) {
  for (;;) {
    auto [ec, socket] = co_await impl.acceptor.async_accept(net::make_strand(*impl.ioc), kTuple);
    if (ec) {
      if (!impl.acceptor.is_open() || ec == net::error::operation_aborted) co_return;
      continue;  // e.g. out of file descriptors: that client is dropped
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto executor = socket.get_executor();
    net::co_spawn(executor, Session(impl, std::move(socket)), [](std::exception_ptr) {});
  }
}

}  // namespace

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::port() const { return impl_->port; }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              std::shared_ptr<const OpenAiApi> api,
                                                              Engine& engine, StreamJournalStore* journals) {
  auto impl = std::make_unique<Impl>(options, std::move(api), engine, journals);
  if (!options.tls.empty()) {
    impl->tls = std::make_unique<TlsContexts>(options.tls, options.log);
    RETURN_IF_ERROR(impl->tls->Load());
  }
  const std::string where = Cat(options.host, ":", options.port);
  beast::error_code ec;
  const net::ip::address address = net::ip::make_address(options.host, ec);
  if (ec) return absl::InvalidArgumentError(Cat("HTTP host ", options.host, " is not an IP address"));
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(options.port));
  tcp::acceptor& acceptor = impl->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(Cat("cannot listen for HTTP on ", where, ": ", ec.message()));
  impl->port = acceptor.local_endpoint().port();
  net::co_spawn(*impl->ioc, Accept(*impl), [](std::exception_ptr) {});
  for (int i = 0; i < std::max(1, options.threads); ++i) {
    impl->threads.emplace_back([ioc = impl->ioc] { ioc->run(); });
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

void HttpServer::Stop() {
  if (impl_ == nullptr || impl_->stopped) return;
  impl_->stopped = true;
  impl_->ioc->stop();
  for (std::thread& t : impl_->threads) t.join();
  beast::error_code ignored;
  impl_->acceptor.close(ignored);
  impl_->ioc->shutdown();  // destroys the connections left (closing their sockets)
}

}  // namespace tessera
