#include "tools/bench/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera::tools::bench {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void SplitHostPort(const std::string& server, std::string& host, std::string& port) {
  const size_t colon = server.rfind(':');
  host = colon == std::string::npos ? server : server.substr(0, colon);
  port = colon == std::string::npos ? "80" : server.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
}

std::string NoAnswer(const std::string& host, const std::string& port, const std::string& what) {
  return absl::StrCat("the server does not answer HTTP at ", host, ":", port, ": ", what);
}

// One client connection: plain TCP, or TLS verifying the server's certificate against a CA file and its host
// name. A SyncReadStream / SyncWriteStream for Beast's algorithms.
class ClientStream {
 public:
  // TLS when `tls_ca` is set.
  ClientStream(asio::io_context& io, const std::string& tls_ca) {
    if (tls_ca.empty()) {
      plain_.emplace(io);
      return;
    }
    context_.emplace(ssl::context::tls_client);
    context_->load_verify_file(tls_ca);  // throws, naming the cause, for a file that is not PEM
    context_->set_verify_mode(ssl::verify_peer);
    tls_.emplace(io, *context_);
  }

  // Connects (and shakes hands) within `timeout`.
  void Connect(const std::string& host, const std::string& port, std::chrono::seconds timeout,
               beast::error_code& ec) {
    tcp::resolver resolver(lowest().get_executor());
    const auto endpoints = resolver.resolve(host, port, ec);
    if (ec) return;
    lowest().expires_after(timeout);
    lowest().connect(endpoints, ec);
    if (ec || !tls_) return;
    SSL_set_tlsext_host_name(tls_->native_handle(), host.c_str());  // SNI
    tls_->set_verify_callback(ssl::host_name_verification(host));
    tls_->handshake(ssl::stream_base::client, ec);
  }
  void NoTimeout() { lowest().expires_never(); }
  void Close() {
    beast::error_code ignored;
    if (tls_) tls_->shutdown(ignored);
    lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
  }

  template <class Buffers>
  size_t read_some(const Buffers& buffers, beast::error_code& ec) {
    return tls_ ? tls_->read_some(buffers, ec) : plain_->read_some(buffers, ec);
  }
  template <class Buffers>
  size_t read_some(const Buffers& buffers) {
    return tls_ ? tls_->read_some(buffers) : plain_->read_some(buffers);
  }
  template <class Buffers>
  size_t write_some(const Buffers& buffers, beast::error_code& ec) {
    return tls_ ? tls_->write_some(buffers, ec) : plain_->write_some(buffers, ec);
  }
  template <class Buffers>
  size_t write_some(const Buffers& buffers) {
    return tls_ ? tls_->write_some(buffers) : plain_->write_some(buffers);
  }

 private:
  beast::tcp_stream& lowest() { return tls_ ? tls_->next_layer() : *plain_; }

  std::optional<ssl::context> context_;  // outlives tls_
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
  std::optional<beast::tcp_stream> plain_;
};

}  // namespace

std::vector<std::string> SseParser::Feed(const std::string& bytes) {
  buffer_ += bytes;
  std::vector<std::string> events;
  std::string data;
  bool has_data = false;
  size_t consumed = 0, pos = 0;
  while (true) {
    const size_t end = buffer_.find('\n', pos);
    if (end == std::string::npos) break;
    std::string line = buffer_.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) {  // the end of an event
      if (has_data) events.push_back(data);
      data.clear();
      has_data = false;
      consumed = pos;
      continue;
    }
    if (line.rfind("data:", 0) != 0) continue;  // comments (":..."), event:, id:, retry:
    std::string value = line.substr(5);
    if (!value.empty() && value.front() == ' ') value.erase(0, 1);
    data = has_data ? absl::StrCat(data, "\n", value) : value;
    has_data = true;
  }
  buffer_.erase(0, consumed);
  return events;
}

HttpBenchClient::HttpBenchClient(const std::string& server, const std::string& model,
                                 const std::string& api_key, const std::string& tls_ca)
    : model_(model), authorization_(api_key.empty() ? "" : "Bearer " + api_key), tls_ca_(tls_ca) {
  SplitHostPort(server, host_, port_);
}

RequestResult HttpBenchClient::Send(const BenchRequest& request, Clock::time_point run_start) {
  nlohmann::json body = {{"model", model_},
                         {"max_tokens", request.max_tokens},
                         {"temperature", 0},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  if (request.text.has_value()) {
    body["prompt"] = *request.text;
  } else {
    body["prompt"] = request.token_ids;
  }
  if (request.ignore_eos) body["ignore_eos"] = true;  // vLLM's extension of the OpenAI API

  RequestResult result;
  result.input_tokens = request.text.has_value() ? 0 : static_cast<int>(request.token_ids.size());
  const Clock::time_point sent = Clock::now();
  result.start_s = Seconds(sent - run_start);
  auto fail = [&](const std::string& code, const std::string& message) {
    result.e2e_s = Seconds(Clock::now() - sent);
    result.code = code;
    result.error = absl::StrCat(code, ": ", message);
    return result;
  };
  try {
    asio::io_context io;
    ClientStream stream(io, tls_ca_);
    beast::error_code ec;
    stream.Connect(host_, port_, std::chrono::seconds(30), ec);
    if (ec) return fail("UNAVAILABLE", NoAnswer(host_, port_, ec.message()));
    stream.NoTimeout();

    http::request<http::string_body> req(http::verb::post, "/v1/completions", 11);
    req.set(http::field::host, host_);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::accept, "text/event-stream");
    if (!authorization_.empty()) req.set(http::field::authorization, authorization_);
    req.body() = body.dump();
    req.prepare_payload();
    http::write(stream, req, ec);
    if (ec) return fail("UNAVAILABLE", NoAnswer(host_, port_, ec.message()));

    beast::flat_buffer buffer;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(boost::none);
    http::read_header(stream, buffer, parser, ec);
    if (ec) return fail("UNAVAILABLE", NoAnswer(host_, port_, ec.message()));
    const unsigned status = parser.get().result_int();
    SseParser sse;
    std::string raw;  // the body as read, for an error message
    bool any_token = false, done = false;
    Clock::time_point last_token;
    int counted_chunks = 0, usage_tokens = -1;
    char chunk[8192];
    while (!parser.is_done() && !done) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof(chunk);
      http::read_some(stream, buffer, parser, ec);
      if (ec == http::error::need_buffer) ec = {};
      if (ec)
        return fail("UNAVAILABLE",
                    absl::StrCat("reading the stream from ", host_, ":", port_, ": ", ec.message()));
      const std::string bytes(chunk, sizeof(chunk) - parser.get().body().size);
      const Clock::time_point now = Clock::now();
      if (status != 200) {
        raw += bytes;
        continue;
      }
      for (const std::string& data : sse.Feed(bytes)) {
        if (data == "[DONE]") {
          done = true;
          break;
        }
        const nlohmann::json event = nlohmann::json::parse(data, nullptr, false);
        if (event.is_discarded() || !event.is_object()) {
          return fail("INTERNAL", absl::StrCat("a stream event is not JSON: ", data.substr(0, 200)));
        }
        if (event.contains("error")) return fail("INTERNAL", event["error"].dump());
        if (event.contains("usage") && event["usage"].is_object() &&
            event["usage"].contains("completion_tokens")) {
          usage_tokens = event["usage"].value("completion_tokens", 0);
          if (event["usage"].contains("prompt_tokens")) {
            result.input_tokens = event["usage"].value("prompt_tokens", result.input_tokens);
          }
        }
        if (!event.contains("choices") || !event["choices"].is_array() || event["choices"].empty()) continue;
        const nlohmann::json& choice = event["choices"][0];
        if (!choice.contains("text") || !choice["text"].is_string() ||
            choice["text"].get_ref<const std::string&>().empty()) {
          continue;
        }
        if (!any_token) {
          result.ttft_s = Seconds(now - sent);
        } else {
          result.itl_s.push_back(Seconds(now - last_token));
        }
        any_token = true;
        last_token = now;
        ++counted_chunks;
      }
    }
    if (status != 200) {
      return fail(absl::StrCat("HTTP_", status), raw.substr(0, 500));
    }
    result.e2e_s = Seconds(Clock::now() - sent);
    result.output_tokens = usage_tokens >= 0 ? usage_tokens : counted_chunks;
    if (!any_token) result.ttft_s = result.e2e_s;
    result.ok = true;
    stream.Close();
    return result;
  } catch (const std::exception& e) {  // Beast and nlohmann throw; nothing crosses this edge
    return fail("INTERNAL", e.what());
  }
}

absl::StatusOr<std::string> QueryHttpModel(const std::string& server, const std::string& api_key,
                                           const std::string& tls_ca) {
  std::string host, port;
  SplitHostPort(server, host, port);
  try {
    asio::io_context io;
    ClientStream stream(io, tls_ca);
    beast::error_code ec;
    stream.Connect(host, port, std::chrono::seconds(10), ec);
    http::request<http::empty_body> req(http::verb::get, "/v1/models", 11);
    req.set(http::field::host, host);
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    if (!ec) http::write(stream, req, ec);
    beast::flat_buffer buffer;
    http::response<http::string_body> response;
    if (!ec) http::read(stream, buffer, response, ec);
    if (ec) return absl::UnavailableError(NoAnswer(host, port, ec.message()));
    if (response.result_int() != 200) {
      return absl::UnavailableError(
          NoAnswer(host, port, absl::StrCat("GET /v1/models answered ", response.result_int())));
    }
    const nlohmann::json models = nlohmann::json::parse(response.body(), nullptr, false);
    if (models.is_object() && models.contains("data") && models["data"].is_array() &&
        !models["data"].empty() && models["data"][0].contains("id") && models["data"][0]["id"].is_string()) {
      return models["data"][0]["id"].get<std::string>();
    }
    return absl::InternalError(absl::StrCat("GET /v1/models on ", server, " names no model id"));
  } catch (const std::exception& e) {
    return absl::UnavailableError(NoAnswer(host, port, e.what()));
  }
}

}  // namespace tessera::tools::bench
