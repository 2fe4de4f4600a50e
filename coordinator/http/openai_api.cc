// OpenAiApi: OpenAI JSON -> v1::CompleteRequest -> PrepareCompletion, and engine events -> OpenAI JSON.
#include "coordinator/http/openai_api.h"

#include <charconv>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "coordinator/chat_renderer.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

using json = nlohmann::ordered_json;

ApiError BadRequest(std::string message, std::string param) {
  return ApiError{400, std::move(message), std::move(param), "invalid_request_error", ""};
}

const char* FinishName(FinishReason reason) { return reason == FinishReason::kStop ? "stop" : "length"; }

json NullOr(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// `body[name]` when present and not null.
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<ApiError> ReadInt(const json& body, const char* name, std::optional<int64_t>& out) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) return BadRequest(Cat("'", name, "' must be an integer"), name);
  out = v->get<int64_t>();
  return std::nullopt;
}

std::optional<ApiError> ReadNumber(const json& body, const char* name, std::optional<double>& out) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return BadRequest(Cat("'", name, "' must be a number"), name);
  out = v->get<double>();
  return std::nullopt;
}

std::optional<ApiError> ReadBool(const json& body, const char* name, bool& out) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return BadRequest(Cat("'", name, "' must be a boolean"), name);
  out = v->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> ReadInt32(const json& body, const char* name, std::optional<int32_t>& out) {
  std::optional<int64_t> v;
  if (auto e = ReadInt(body, name, v)) return e;
  if (!v) return std::nullopt;
  if (*v < INT32_MIN || *v > INT32_MAX) return BadRequest(Cat("'", name, "' is out of range: ", *v), name);
  out = static_cast<int32_t>(*v);
  return std::nullopt;
}

bool IsIdList(const json& v) {
  if (!v.is_array() || v.empty()) return false;
  for (const json& x : v) {
    if (!x.is_number_integer()) return false;
  }
  return true;
}

std::vector<int32_t> IdList(const json& v) {
  std::vector<int32_t> ids;
  for (const json& x : v) {
    const int64_t id = x.get<int64_t>();
    ids.push_back(id < INT32_MIN || id > INT32_MAX ? -1 : static_cast<int32_t>(id));
  }
  return ids;
}

// The prompts of a completion: a string, strings, token ids, or lists of token ids.
std::optional<ApiError> ReadPrompts(const json& body, std::vector<v1::CompleteRequest>& prompts) {
  const json* p = Field(body, "prompt");
  const char* kShape = "'prompt' must be a string, a list of strings, a list of token ids or a list of them";
  if (p == nullptr) return BadRequest("'prompt' is required", "prompt");
  if (p->is_string()) {
    prompts.emplace_back().set_text(p->get<std::string>());
    return std::nullopt;
  }
  if (!p->is_array() || p->empty()) return BadRequest(kShape, "prompt");
  if (IsIdList(*p)) {
    std::vector<int32_t> ids = IdList(*p);
    prompts.emplace_back().mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
    return std::nullopt;
  }
  for (const json& item : *p) {
    if (item.is_string()) {
      prompts.emplace_back().set_text(item.get<std::string>());
    } else if (IsIdList(item)) {
      std::vector<int32_t> ids = IdList(item);
      prompts.emplace_back().mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
    } else {
      return BadRequest(kShape, "prompt");
    }
  }
  return std::nullopt;
}

// Chat messages as the template takes them: content parts ({"type": "text", "text"}) joined into a string.
std::optional<ApiError> ReadMessages(const json& body, json& messages) {
  const json* m = Field(body, "messages");
  if (m == nullptr) return BadRequest("'messages' is required", "messages");
  if (!m->is_array() || m->empty()) return BadRequest("'messages' must be a non-empty list", "messages");
  messages = json::array();
  for (size_t i = 0; i < m->size(); ++i) {
    const json& in = (*m)[i];
    if (!in.is_object()) return BadRequest(Cat("messages[", i, "] must be an object"), "messages");
    const json* role = Field(in, "role");
    if (role == nullptr || !role->is_string() || role->get<std::string>().empty()) {
      return BadRequest(Cat("messages[", i, "].role must be a non-empty string"), "messages");
    }
    json out = in;
    const json* content = Field(in, "content");
    if (content != nullptr && content->is_array()) {
      std::string text;
      for (const json& part : *content) {
        const json* t = part.is_object() ? Field(part, "text") : nullptr;
        if (t == nullptr || !t->is_string() || part.value("type", "text") != "text") {
          return BadRequest(Cat("messages[", i, "].content: only text parts are supported"), "messages");
        }
        text += t->get<std::string>();
      }
      out["content"] = text;
    } else if (content != nullptr && !content->is_string()) {
      return BadRequest(Cat("messages[", i, "].content must be a string or a list of parts"), "messages");
    }
    messages.push_back(std::move(out));
  }
  return std::nullopt;
}

// The request field a PrepareCompletion error names, by the prefix of its message.
std::string ParamOf(const absl::Status& status, ApiKind kind, const std::string& max_tokens_name) {
  const std::string_view m(status.message().data(), status.message().size());
  const std::string prompt = kind == ApiKind::kChat ? "messages" : "prompt";
  auto starts = [&](std::string_view p) { return m.substr(0, p.size()) == p; };
  if (starts("max_tokens") || starts("prompt (")) return max_tokens_name;
  if (starts("top_logprobs")) return kind == ApiKind::kChat ? "top_logprobs" : "logprobs";
  for (const char* name : {"temperature", "top_p", "top_k", "stop_token_ids", "model", "min_p", "min_tokens",
                           "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias"}) {
    if (starts(name)) return name;
  }
  if (starts("n must")) return "n";
  if (starts("stop strings")) return "stop";
  if (starts("prompt") || starts("chat") || starts("text prompts")) return prompt;
  return "";
}

}  // namespace

std::string ErrorJson(const ApiError& error) {
  return json{{"error",
               {{"message", error.message},
                {"type", error.type},
                {"param", NullOr(error.param)},
                {"code", NullOr(error.code)}}}}
      .dump(-1, ' ', false, json::error_handler_t::replace);
}

HttpReply ErrorReply(const ApiError& error) {
  return HttpReply{error.status, "application/json", ErrorJson(error)};
}

ApiError ErrorFromStatus(const absl::Status& status, std::string param) {
  ApiError e;
  e.message = std::string(status.message());
  e.param = std::move(param);
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
      e.status = 400;
      break;
    case absl::StatusCode::kNotFound:
      e.status = 404;
      e.type = "not_found_error";
      break;
    case absl::StatusCode::kResourceExhausted:
      e.status = 429;
      e.type = "rate_limit_error";
      break;
    case absl::StatusCode::kUnauthenticated:
      e.status = 401;
      e.type = "authentication_error";
      e.code = "invalid_api_key";
      break;
    case absl::StatusCode::kUnavailable:
      e.status = 503;
      e.type = "service_unavailable";
      break;
    case absl::StatusCode::kCancelled:
      e.status = 499;
      e.type = "cancelled";
      break;
    default:
      e.status = 500;
      e.type = "internal_error";
  }
  return e;
}

// --- ChoiceEventObserver ---

ChoiceEventObserver::ChoiceEventObserver(std::shared_ptr<const Tokenizer> tokenizer, int prompt,
                                         const PreparedCompletion& prepared,
                                         std::function<void(ChoiceEvent)> sink)
    : tokenizer_(std::move(tokenizer)),
      prompt_(prompt),
      ended_(prepared.request.n, false),
      next_logprob_(prepared.request.n),
      has_next_logprob_(prepared.request.n, false),
      sink_(std::move(sink)) {
  texts_.reserve(prepared.request.n);
  for (int i = 0; i < prepared.request.n; ++i) {
    texts_.emplace_back(tokenizer_.get(), prepared.stop_strings, prepared.request.stop_token_ids,
                        prepared.request.sampling.min_tokens);
  }
}

bool ChoiceEventObserver::OnToken(int index, int32_t token) {
  if (index < 0 || index >= static_cast<int>(texts_.size())) return true;
  const bool has_logprob = has_next_logprob_[index];
  has_next_logprob_[index] = false;
  if (ended_[index] || texts_[index].stopped()) return true;
  CompletionText::Delta delta = texts_[index].Add(token);
  ChoiceEvent e;
  e.prompt = prompt_;
  e.choice = index;
  e.text = std::move(delta.text);
  e.new_tokens = 1;
  if (has_logprob) e.logprobs.push_back(std::move(next_logprob_[index]));
  sink_(std::move(e));
  return delta.stop;
}

void ChoiceEventObserver::OnLogprobs(int index, const TokenLogprob& logprob) {
  if (index < 0 || index >= static_cast<int>(texts_.size())) return;
  next_logprob_[index] = logprob;
  has_next_logprob_[index] = true;
}

void ChoiceEventObserver::OnPromptLogprobs(const std::vector<TokenLogprob>& entries) {
  ChoiceEvent e;
  e.prompt = prompt_;
  e.prompt_logprobs = std::make_shared<const std::vector<TokenLogprob>>(entries);
  sink_(std::move(e));
}

void ChoiceEventObserver::OnCachedTokens(int cached_tokens) {
  ChoiceEvent e;
  e.prompt = prompt_;
  e.cached_tokens = cached_tokens;
  sink_(std::move(e));
}

void ChoiceEventObserver::OnChoiceEnd(int index, FinishReason reason) {
  if (index < 0 || index >= static_cast<int>(texts_.size()) || ended_[index]) return;
  ended_[index] = true;
  ChoiceEvent e;
  e.prompt = prompt_;
  e.choice = index;
  e.text = texts_[index].Finish();
  e.end = texts_[index].stopped() ? FinishReason::kStop : reason;
  sink_(std::move(e));
}

void ChoiceEventObserver::OnDone(const absl::Status& status) {
  ChoiceEvent e;
  e.prompt = prompt_;
  e.done = status;
  sink_(std::move(e));
}

// --- OpenAiCallState ---

OpenAiCallState::OpenAiCallState(const OpenAiCall& call)
    : call_(call), choices_(call.prompts.size() * call.n), prompt_logprobs_(call.prompts.size()) {
  for (size_t p = 0; p < call.prompts.size(); ++p) {
    if (!call.prompts[p].echo) continue;
    for (int i = 0; i < call.n; ++i) choices_[p * call.n + i].text = call.prompts[p].prompt_text;
  }
}

// --- logprobs ---

namespace {

// OpenAI's JSON has no -inf: vLLM sends -9999.0 instead.
json LogprobValue(float logprob) { return std::max(logprob, -9999.0f); }

int CodePoints(const std::string& s) {
  int count = 0;
  for (unsigned char c : s) count += (c & 0xC0) != 0x80;
  return count;
}

}  // namespace

// How a logprob's token is spelled: the tokenizer's decode of the id alone, special tokens kept (vLLM's
// spelling; a byte-level piece that is not whole UTF-8 on its own decodes to U+FFFD), and its raw bytes.
static std::string TokenText(const Tokenizer* tokenizer, int32_t id) {
  if (tokenizer == nullptr) return Cat("token_id:", id);
  absl::StatusOr<std::string> text = tokenizer->Decode({id}, /*skip_special_tokens=*/false);
  return text.ok() ? *std::move(text) : Cat("token_id:", id);
}

static json TokenBytes(const Tokenizer* tokenizer, int32_t id) {
  json bytes = json::array();
  std::string raw;
  if (tokenizer != nullptr) {
    absl::StatusOr<std::string_view> piece = tokenizer->DecodedBytes(id, /*skip_special_tokens=*/false);
    if (piece.ok()) raw = std::string(*piece);
  }
  if (raw.empty()) raw = TokenText(tokenizer, id);
  for (unsigned char c : raw) bytes.push_back(static_cast<int>(c));
  return bytes;
}

json OpenAiCallState::LogprobsJson(int index, const std::vector<TokenLogprob>* prompt_logprobs,
                                   const std::vector<TokenLogprob>& logprobs, size_t begin, size_t end,
                                   int& text_offset) const {
  const PreparedCompletion& prepared = call_.prompts[index / call_.n];
  if (!prepared.request.sampling.logprobs) return nullptr;
  const Tokenizer* tokenizer = call_.tokenizer.get();
  if (call_.kind == ApiKind::kChat) {
    // {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}
    json content = json::array();
    for (size_t k = begin; k < end; ++k) {
      const TokenLogprob& lp = logprobs[k];
      json top = json::array();
      for (const auto& [id, logprob] : lp.top) {
        top.push_back({{"token", TokenText(tokenizer, id)},
                       {"logprob", LogprobValue(logprob)},
                       {"bytes", TokenBytes(tokenizer, id)}});
      }
      content.push_back({{"token", TokenText(tokenizer, lp.token)},
                         {"logprob", LogprobValue(lp.logprob)},
                         {"bytes", TokenBytes(tokenizer, lp.token)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  // {tokens, token_logprobs, top_logprobs, text_offset}; top_logprobs[i] maps the most likely tokens and the
  // sampled one (OpenAI's "up to logprobs + 1") to their logprobs.
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       offsets = json::array();
  auto add = [&](int32_t id, json logprob, json top) {
    std::string text = TokenText(tokenizer, id);
    offsets.push_back(text_offset);
    text_offset += CodePoints(text);
    tokens.push_back(std::move(text));
    token_logprobs.push_back(std::move(logprob));
    top_logprobs.push_back(std::move(top));
  };
  auto add_entry = [&](const TokenLogprob& lp) {
    json top = json::object();
    for (const auto& [id, logprob] : lp.top) {
      std::string text = TokenText(tokenizer, id);
      if (!top.contains(text)) top[text] = LogprobValue(logprob);  // two ids may spell the same
    }
    std::string sampled = TokenText(tokenizer, lp.token);
    if (!top.contains(sampled)) top[sampled] = LogprobValue(lp.logprob);
    add(lp.token, LogprobValue(lp.logprob), std::move(top));
  };
  if (prompt_logprobs != nullptr && !prepared.request.prompt.empty()) {
    add(prepared.request.prompt[0], nullptr, nullptr);  // the first prompt token has no logprob
    for (const TokenLogprob& lp : *prompt_logprobs) add_entry(lp);
  }
  for (size_t k = begin; k < end; ++k) add_entry(logprobs[k]);
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(offsets)}};
}

std::string OpenAiCallState::Chunk(int index, const std::string& text, std::optional<FinishReason> end,
                                   json logprobs, const std::vector<int32_t>* token_ids) const {
  json choice = {{"index", index}};
  if (call_.kind == ApiKind::kChat) {
    json delta = json::object();
    if (!text.empty() || !end) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = end ? json(FinishName(*end)) : json(nullptr);
  if (token_ids != nullptr) choice["token_ids"] = *token_ids;
  json chunk = {{"id", call_.id},
                {"object", call_.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion"},
                {"created", call_.created},
                {"model", call_.model},
                {"choices", json::array({std::move(choice)})}};
  if (call_.include_usage) chunk["usage"] = nullptr;
  return Cat("data: ", chunk.dump(-1, ' ', false, json::error_handler_t::replace), "\n\n");
}

std::string OpenAiCallState::StreamStart() const {
  std::string out;
  for (size_t p = 0; p < call_.prompts.size(); ++p) {
    for (int i = 0; i < call_.n; ++i) {
      const int index = static_cast<int>(p) * call_.n + i;
      if (call_.kind == ApiKind::kChat) {
        std::string chunk = Chunk(index, "", std::nullopt, nullptr);
        // The first delta carries the role: {"content": ""} -> {"role": "assistant", "content": ""}.
        const std::string plain = R"("delta":{"content":""})";
        chunk.replace(chunk.find(plain), plain.size(), R"("delta":{"role":"assistant","content":""})");
        out += chunk;
      } else if (call_.prompts[p].echo && !call_.prompts[p].prompt_text.empty() &&
                 !call_.prompts[p].request.sampling.prompt_logprobs) {
        out += Chunk(index, call_.prompts[p].prompt_text, std::nullopt, nullptr);
      }
    }
  }
  return out;
}

std::string OpenAiCallState::Apply(const ChoiceEvent& event) {
  if (event.done) {
    ++prompts_done_;
    if (!event.done->ok() && status_.ok()) status_ = *event.done;
    return "";
  }
  if (event.cached_tokens) {
    cached_tokens_ += *event.cached_tokens;
    return "";
  }
  if (event.prompt_logprobs) {
    if (event.prompt < 0 || event.prompt >= static_cast<int>(call_.prompts.size())) return "";
    prompt_logprobs_[event.prompt] = *event.prompt_logprobs;
    const PreparedCompletion& prepared = call_.prompts[event.prompt];
    if (!call_.stream || !prepared.echo || call_.kind != ApiKind::kCompletion) return "";
    std::string out;  // the echo chunks StreamStart held back
    for (int i = 0; i < call_.n; ++i) {
      const int index = event.prompt * call_.n + i;
      json logprobs =
          LogprobsJson(index, &prompt_logprobs_[event.prompt], {}, 0, 0, choices_[index].text_offset);
      out += Chunk(index, prepared.prompt_text, std::nullopt, std::move(logprobs));
    }
    return out;
  }
  const int index = event.prompt * call_.n + event.choice;
  if (event.prompt < 0 || index < 0 || index >= static_cast<int>(choices_.size())) return "";
  Choice& c = choices_[index];
  c.text += event.text;
  c.tokens += event.new_tokens;
  c.logprobs.insert(c.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
  c.unsent_token_ids.insert(c.unsent_token_ids.end(), event.token_ids.begin(), event.token_ids.end());
  if (event.end) c.end = event.end;
  if (!call_.stream || (event.text.empty() && !event.end)) return "";
  json logprobs = LogprobsJson(index, nullptr, c.logprobs, c.logprobs_sent, c.logprobs.size(), c.text_offset);
  c.logprobs_sent = c.logprobs.size();
  std::string chunk = Chunk(index, event.text, event.end, std::move(logprobs),
                            call_.resumable ? &c.unsent_token_ids : nullptr);
  c.unsent_token_ids.clear();
  return chunk;
}

void OpenAiCallState::Replay(const ChoiceEvent& event) {
  const int index = event.prompt * call_.n + event.choice;
  if (event.done || event.cached_tokens || event.prompt_logprobs || event.prompt < 0 || index < 0 ||
      index >= static_cast<int>(choices_.size())) {
    (void)Apply(event);
    return;
  }
  Choice& c = choices_[index];
  c.text += event.text;
  c.tokens += event.new_tokens;
  c.logprobs.insert(c.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
  if (event.end) c.end = event.end;
  // As if sent: completions' text_offset moves past these tokens' spellings.
  (void)LogprobsJson(index, nullptr, c.logprobs, c.logprobs_sent, c.logprobs.size(), c.text_offset);
  c.logprobs_sent = c.logprobs.size();
  c.unsent_token_ids.clear();
}

int OpenAiCallState::PromptTokens() const {
  int tokens = 0;
  for (const PreparedCompletion& p : call_.prompts) tokens += static_cast<int>(p.request.prompt.size());
  return tokens;
}

int OpenAiCallState::CompletionTokens() const {
  int tokens = 0;
  for (const Choice& c : choices_) tokens += c.tokens;
  return tokens;
}

static json UsageJson(int prompt_tokens, int completion_tokens, int cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

std::string OpenAiCallState::StreamEnd() const {
  std::string out;
  if (call_.include_usage) {
    json chunk = {{"id", call_.id},
                  {"object", call_.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion"},
                  {"created", call_.created},
                  {"model", call_.model},
                  {"choices", json::array()},
                  {"usage", UsageJson(PromptTokens(), CompletionTokens(), cached_tokens_)}};
    out = Cat("data: ", chunk.dump(), "\n\n");
  }
  return out + "data: [DONE]\n\n";
}

std::string OpenAiCallState::StreamError(const ApiError& error) {
  return Cat("data: ", ErrorJson(error), "\n\ndata: [DONE]\n\n");
}

HttpReply OpenAiCallState::UnaryReply() const {
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    json choice = {{"index", i}};
    if (call_.kind == ApiKind::kChat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    const int p = static_cast<int>(i) / call_.n;
    const PreparedCompletion& prepared = call_.prompts[p];
    const bool with_prompt =
        call_.kind == ApiKind::kCompletion && prepared.echo && prepared.request.sampling.prompt_logprobs;
    int text_offset = 0;
    choice["logprobs"] = LogprobsJson(static_cast<int>(i), with_prompt ? &prompt_logprobs_[p] : nullptr,
                                      c.logprobs, 0, c.logprobs.size(), text_offset);
    choice["finish_reason"] = FinishName(c.end.value_or(FinishReason::kLength));
    choices.push_back(std::move(choice));
  }
  json body = {{"id", call_.id},
               {"object", call_.kind == ApiKind::kChat ? "chat.completion" : "text_completion"},
               {"created", call_.created},
               {"model", call_.model},
               {"choices", std::move(choices)},
               {"usage", UsageJson(PromptTokens(), CompletionTokens(), cached_tokens_)}};
  return HttpReply{200, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

std::vector<ChoiceEvent> EventsOfJournalRead(JournalRead read) {
  std::vector<ChoiceEvent> events;
  for (size_t k = 0; k < read.token_ids.size(); ++k) {
    ChoiceEvent& e = events.emplace_back();
    e.text = std::move(read.texts[k]);
    e.new_tokens = 1;
    e.token_ids = {read.token_ids[k]};
    if (k < read.logprobs.size()) e.logprobs.push_back(std::move(read.logprobs[k]));
  }
  if (read.end) {
    ChoiceEvent& e = events.emplace_back();
    e.text = std::move(read.tail);
    e.end = read.end;
  }
  if (read.done) {
    events.emplace_back().cached_tokens = read.cached_tokens;
    events.emplace_back().done = read.done;
  }
  return events;
}

// --- OpenAiApi ---

static std::string RandomHex() {
  std::random_device device;
  return absl::StrFormat("%08x%08x", device(), device());
}

OpenAiApi::OpenAiApi(ServedModel model, std::shared_ptr<const Tokenizer> tokenizer,
                     std::shared_ptr<ChatRenderer> chat, OpenAiApiOptions options)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      chat_(std::move(chat)),
      options_(options),
      id_prefix_(RandomHex()) {}

OpenAiCall OpenAiApi::CallOfJournal(const StreamJournal& journal) const {
  const StreamInfo& info = journal.info();
  OpenAiCall call;
  call.kind = info.kind == StreamKind::kChat ? ApiKind::kChat : ApiKind::kCompletion;
  call.id = journal.id();
  call.created = info.created;
  call.model = info.model;
  call.stream = true;
  call.include_usage = info.include_usage;
  call.n = 1;
  call.prompts = {info.prepared};
  call.tokenizer = tokenizer_;
  call.resumable = true;
  return call;
}

std::string OpenAiApi::NewId(ApiKind kind) const {
  return Cat(kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-", id_prefix_, next_id_.fetch_add(1));
}

std::optional<ApiError> OpenAiApi::Prepare(ApiKind kind, std::string_view body_text, OpenAiCall& call) const {
  const json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return BadRequest("the request body must be a JSON object", "");
  }
  call.kind = kind;
  call.model = model_.id;
  if (const json* m = Field(body, "model")) {
    if (!m->is_string()) return BadRequest("'model' must be a string", "model");
    const std::string name = m->get<std::string>();
    if (!name.empty() && name != model_.id) {
      return ApiError{404, Cat("The model `", name, "` does not exist; this server serves `", model_.id, "`"),
                      "model", "invalid_request_error", "model_not_found"};
    }
  }

  // The fields every prompt shares, into one template request.
  v1::CompleteRequest shared;
  std::string max_tokens_name = "max_tokens";
  std::optional<int32_t> max_tokens;
  if (kind == ApiKind::kChat) {
    if (auto e = ReadInt32(body, "max_completion_tokens", max_tokens)) return e;
    if (max_tokens) max_tokens_name = "max_completion_tokens";
  }
  if (!max_tokens) {
    if (auto e = ReadInt32(body, "max_tokens", max_tokens)) return e;
  }
  if (max_tokens) shared.set_max_tokens(*max_tokens);
  std::optional<double> temperature, top_p;
  if (auto e = ReadNumber(body, "temperature", temperature)) return e;
  if (auto e = ReadNumber(body, "top_p", top_p)) return e;
  if (temperature) shared.set_temperature(static_cast<float>(*temperature));
  if (top_p) shared.set_top_p(static_cast<float>(*top_p));
  std::optional<int32_t> top_k, n;
  if (auto e = ReadInt32(body, "top_k", top_k)) return e;
  if (top_k) shared.set_top_k(*top_k == -1 ? 0 : *top_k);  // vLLM's -1 = off
  if (auto e = ReadInt32(body, "n", n)) return e;
  if (n) shared.set_n(*n);
  std::optional<int64_t> seed;
  if (auto e = ReadInt(body, "seed", seed)) return e;
  if (seed) shared.set_seed(static_cast<uint64_t>(*seed));
  if (const json* stop = Field(body, "stop")) {
    if (stop->is_string()) {
      shared.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) return BadRequest("'stop' must be a string or a list of strings", "stop");
        shared.add_stop(s.get<std::string>());
      }
    } else {
      return BadRequest("'stop' must be a string or a list of strings", "stop");
    }
  }
  if (const json* ids = Field(body, "stop_token_ids")) {  // vLLM's extension
    if (!ids->is_array() || (!ids->empty() && !IsIdList(*ids))) {
      return BadRequest("'stop_token_ids' must be a list of token ids", "stop_token_ids");
    }
    std::vector<int32_t> list = IdList(*ids);
    shared.mutable_stop_token_ids()->Add(list.begin(), list.end());
  }
  bool ignore_eos = false, echo = false;
  if (auto e = ReadBool(body, "ignore_eos", ignore_eos)) return e;
  shared.set_ignore_eos(ignore_eos);
  if (kind == ApiKind::kCompletion) {
    if (auto e = ReadBool(body, "echo", echo)) return e;
    shared.set_echo(echo);
  }
  if (auto e = ReadBool(body, "stream", call.stream)) return e;
  if (const json* options = Field(body, "stream_options")) {
    if (!options->is_object()) return BadRequest("'stream_options' must be an object", "stream_options");
    if (auto e = ReadBool(*options, "include_usage", call.include_usage)) {
      e->param = "stream_options";
      return e;
    }
    if (!call.stream)
      return BadRequest("'stream_options' is only allowed with 'stream': true", "stream_options");
  }
  // Log probabilities. Completions: `logprobs` is the number of alternatives (0..20); chat: `logprobs` is a
  // boolean and `top_logprobs` the number.
  if (kind == ApiKind::kCompletion) {
    if (const json* lp = Field(body, "logprobs"); lp != nullptr && !(lp->is_boolean() && !lp->get<bool>())) {
      if (!lp->is_number_integer() || lp->get<int64_t>() < 0 || lp->get<int64_t>() > kMaxTopLogprobs) {
        return BadRequest(Cat("'logprobs' must be an integer in [0, ", kMaxTopLogprobs,
                              "] (the number of alternatives per token), got ", lp->dump()),
                          "logprobs");
      }
      shared.set_logprobs(true);
      shared.set_top_logprobs(lp->get<int32_t>());
    }
  } else {
    bool logprobs = false;
    if (auto e = ReadBool(body, "logprobs", logprobs)) return e;
    shared.set_logprobs(logprobs);
    std::optional<int32_t> top_logprobs;
    if (auto e = ReadInt32(body, "top_logprobs", top_logprobs)) return e;
    if (top_logprobs) shared.set_top_logprobs(*top_logprobs);
  }
  // OpenAI's penalties and logit_bias, vLLM's min_p, repetition_penalty, min_tokens and priority.
  for (const auto& [name, setter] :
       std::initializer_list<std::pair<const char*, void (v1::CompleteRequest::*)(float)>>{
           {"presence_penalty", &v1::CompleteRequest::set_presence_penalty},
           {"frequency_penalty", &v1::CompleteRequest::set_frequency_penalty},
           {"repetition_penalty", &v1::CompleteRequest::set_repetition_penalty},
           {"min_p", &v1::CompleteRequest::set_min_p}}) {
    std::optional<double> value;
    if (auto e = ReadNumber(body, name, value)) return e;
    if (value) (shared.*setter)(static_cast<float>(*value));
  }
  std::optional<int32_t> min_tokens, priority;
  if (auto e = ReadInt32(body, "min_tokens", min_tokens)) return e;
  if (min_tokens) shared.set_min_tokens(*min_tokens);
  if (auto e = ReadInt32(body, "priority", priority)) return e;
  if (priority) shared.set_priority(*priority);
  if (const json* bias = Field(body, "logit_bias")) {
    const char* kShape = "'logit_bias' must be an object mapping token ids (as strings) to numbers";
    if (!bias->is_object()) return BadRequest(kShape, "logit_bias");
    for (const auto& [key, value] : bias->items()) {
      int64_t id = 0;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || key.empty()) {
        return BadRequest(Cat(kShape, "; \"", key, "\" is not a token id"), "logit_bias");
      }
      if (!value.is_number())
        return BadRequest(Cat(kShape, "; \"", key, "\" maps to ", value.dump()), "logit_bias");
      if (id < INT32_MIN || id > INT32_MAX) {
        return BadRequest(
            Cat("logit_bias token id ", key, " is outside the vocabulary [0, ", model_.vocab_size, ")"),
            "logit_bias");
      }
      (*shared.mutable_logit_bias())[static_cast<int32_t>(id)] = static_cast<float>(value.get<double>());
    }
  }
  if (const json* user = Field(body, "user"); user != nullptr && !user->is_string()) {
    return BadRequest("'user' must be a string", "user");
  }
  if (auto e = ReadBool(body, "resumable", call.resumable)) return e;  // Tessera's extension
  if (call.resumable) {
    if (!options_.resumable_streams) {
      return BadRequest("'resumable': stream resumption is off on this server (--resume-window 0)",
                        "resumable");
    }
    if (!call.stream) return BadRequest("'resumable' needs 'stream': true", "resumable");
    if (n.value_or(1) != 1) return BadRequest(Cat("'resumable' streams need 'n': 1, got ", *n), "n");
    if (echo) return BadRequest("'resumable' streams cannot 'echo' the prompt", "echo");
  }

  std::vector<v1::CompleteRequest> prompts;
  std::string rendered;
  if (kind == ApiKind::kChat) {
    json messages;
    if (auto e = ReadMessages(body, messages)) return e;
    json render = {{"messages", messages}, {"add_generation_prompt", true}};
    if (const json* tools = Field(body, "tools")) {
      if (!tools->is_array()) return BadRequest("'tools' must be a list", "tools");
      if (!tools->empty()) render["tools"] = *tools;
    }
    if (chat_ == nullptr)
      return ErrorFromStatus(absl::FailedPreconditionError("this model has no chat template"), "messages");
    absl::StatusOr<std::string> text = chat_->Render(render);
    if (!text.ok()) return ErrorFromStatus(text.status(), "messages");
    rendered = *std::move(text);
    v1::CompleteRequest& request = prompts.emplace_back();
    v1::ChatMessage* first = request.mutable_chat()->add_messages();  // PrepareCompletion encodes `rendered`
    first->set_role(messages[0]["role"].get<std::string>());
  } else {
    if (auto e = ReadPrompts(body, prompts)) return e;
    if (call.resumable && prompts.size() != 1) {
      return BadRequest(Cat("'resumable' streams need one prompt, got ", prompts.size()), "prompt");
    }
  }

  call.id = NewId(kind);
  call.created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  call.n = n.value_or(1);
  call.tokenizer = tokenizer_;
  call.prompts.clear();
  for (size_t p = 0; p < prompts.size(); ++p) {
    v1::CompleteRequest request = shared;
    request.MergeFrom(prompts[p]);
    absl::StatusOr<PreparedCompletion> prepared = PrepareCompletion(
        request, model_, tokenizer_.get(), options_.limits, kind == ApiKind::kChat ? &rendered : nullptr);
    if (!prepared.ok()) {
      ApiError e = ErrorFromStatus(prepared.status(), ParamOf(prepared.status(), kind, max_tokens_name));
      if (prompts.size() > 1) e.message = Cat("prompt[", p, "]: ", e.message);
      return e;
    }
    prepared->request.id = prompts.size() > 1 ? Cat(call.id, "-", p) : call.id;
    call.prompts.push_back(*std::move(prepared));
  }
  return std::nullopt;
}

HttpReply OpenAiApi::Models() const {
  json model = {{"id", model_.id},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "tessera"},
                {"max_model_len", model_.max_position_embeddings}};
  return HttpReply{200, "application/json", json{{"object", "list"}, {"data", json::array({model})}}.dump()};
}

HttpReply OpenAiApi::Tokenize(std::string_view body_text) const {
  const json body = json::parse(body_text, nullptr, false);
  if (body.is_discarded() || !body.is_object())
    return ErrorReply(BadRequest("the request body must be a JSON object", ""));
  if (tokenizer_ == nullptr) {
    return ErrorReply(ErrorFromStatus(MissingTokenizerError(model_, "tokenize"), ""));
  }
  std::string text;
  bool add_special_tokens = true;
  if (const json* m = Field(body, "model");
      m != nullptr &&
      (!m->is_string() || (!m->get<std::string>().empty() && m->get<std::string>() != model_.id))) {
    return ErrorReply(
        ApiError{404, "model is not served here", "model", "invalid_request_error", "model_not_found"});
  }
  if (Field(body, "messages") != nullptr) {
    json messages;
    if (auto e = ReadMessages(body, messages)) return ErrorReply(*e);
    bool add_generation_prompt = true;
    if (auto e = ReadBool(body, "add_generation_prompt", add_generation_prompt)) return ErrorReply(*e);
    if (chat_ == nullptr) return ErrorReply(BadRequest("this model has no chat template", "messages"));
    absl::StatusOr<std::string> rendered =
        chat_->Render({{"messages", messages}, {"add_generation_prompt", add_generation_prompt}});
    if (!rendered.ok()) return ErrorReply(ErrorFromStatus(rendered.status(), "messages"));
    text = *std::move(rendered);
    add_special_tokens = false;
  } else {
    const json* p = Field(body, "prompt");
    if (p == nullptr || !p->is_string()) return ErrorReply(BadRequest("'prompt' must be a string", "prompt"));
    text = p->get<std::string>();
  }
  if (auto e = ReadBool(body, "add_special_tokens", add_special_tokens)) return ErrorReply(*e);
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(text, add_special_tokens);
  if (!ids.ok()) return ErrorReply(ErrorFromStatus(ids.status(), "prompt"));
  json out = {{"count", ids->size()}, {"max_model_len", model_.max_position_embeddings}, {"tokens", *ids}};
  return HttpReply{200, "application/json", out.dump()};
}

HttpReply OpenAiApi::Detokenize(std::string_view body_text) const {
  const json body = json::parse(body_text, nullptr, false);
  if (body.is_discarded() || !body.is_object())
    return ErrorReply(BadRequest("the request body must be a JSON object", ""));
  if (tokenizer_ == nullptr) {
    return ErrorReply(ErrorFromStatus(MissingTokenizerError(model_, "detokenize"), ""));
  }
  const json* tokens = Field(body, "tokens");
  if (tokens == nullptr || !tokens->is_array() || (!tokens->empty() && !IsIdList(*tokens))) {
    return ErrorReply(BadRequest("'tokens' must be a list of token ids", "tokens"));
  }
  const std::vector<int32_t> ids = IdList(*tokens);
  if (absl::Status s = CheckTokenIds(ids, model_.vocab_size, "tokens"); !s.ok()) {
    return ErrorReply(ErrorFromStatus(s, "tokens"));
  }
  absl::StatusOr<std::string> text = tokenizer_->Decode(ids, /*skip_special_tokens=*/false);
  if (!text.ok()) return ErrorReply(ErrorFromStatus(text.status(), "tokens"));
  return HttpReply{200, "application/json",
                   json{{"prompt", *text}}.dump(-1, ' ', false, json::error_handler_t::replace)};
}

}  // namespace tessera
