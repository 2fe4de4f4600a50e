#include "coordinator/api_keys.h"

#include <charconv>
#include <fstream>
#include <sstream>

#include "core/secret.h"
#include "core/str_cat.h"

namespace tessera {
namespace {

constexpr absl::Duration kWindow = absl::Minutes(1);

std::vector<std::string_view> Fields(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
    if (j > i) fields.push_back(line.substr(i, j - i));
    i = j;
  }
  return fields;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Parse(std::string_view text, const std::string& source) {
  std::unique_ptr<ApiKeys> keys(new ApiKeys());
  int number = 0;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(begin, end - begin);
    begin = end + 1;
    ++number;
    const std::vector<std::string_view> fields = Fields(line);
    if (fields.empty() || fields[0].starts_with('#')) continue;
    const std::string where = Cat(source, ":", number);
    Entry entry;
    entry.key = std::string(fields[0]);
    entry.line = number;
    for (const Entry& other : keys->entries_) {
      if (other.key == entry.key)
        return absl::InvalidArgumentError(Cat(where, ": the key of line ", other.line, " again"));
    }
    bool seen[3] = {false, false, false};
    for (size_t f = 1; f < fields.size(); ++f) {
      const std::string_view field = fields[f];
      const size_t eq = field.find('=');
      const std::string_view name = field.substr(0, eq);
      int which = name == "rpm" ? 0 : name == "tpm" ? 1 : name == "streams" ? 2 : -1;
      if (eq == std::string_view::npos || which < 0) {
        return absl::InvalidArgumentError(
            Cat(where, ": field '", name, "' is not rpm=N, tpm=N or streams=N"));
      }
      if (seen[which]) return absl::InvalidArgumentError(Cat(where, ": ", name, " is given twice"));
      seen[which] = true;
      const std::string_view value = field.substr(eq + 1);
      int64_t n = -1;
      const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() || n < 0) {
        return absl::InvalidArgumentError(
            Cat(where, ": ", name, "='", value, "' is not a non-negative integer"));
      }
      (which == 0   ? entry.limits.requests_per_minute
       : which == 1 ? entry.limits.tokens_per_minute
                    : entry.limits.max_streams) = n;
    }
    keys->entries_.push_back(std::move(entry));
  }
  if (keys->entries_.empty()) return absl::InvalidArgumentError(Cat(source, ": holds no API key"));
  return keys;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(Cat("--api-key-file ", path, " cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  return Parse(text.str(), path);
}

absl::StatusOr<std::unique_ptr<ApiKeys::Admission>> ApiKeys::Admit(std::string_view authorization,
                                                                   absl::Time now) {
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.empty()) {
    return absl::UnauthenticatedError("an API key is required: send `Authorization: Bearer KEY`");
  }
  if (!authorization.starts_with(kBearer)) {
    return absl::UnauthenticatedError("the authorization is not `Bearer KEY`");
  }
  const std::string_view presented = authorization.substr(kBearer.size());
  size_t found = entries_.size();
  for (size_t i = 0; i < entries_.size();
       ++i) {  // every key is compared: the time does not tell which matched
    if (ConstantTimeEquals(presented, entries_[i].key) && found == entries_.size()) found = i;
  }
  if (found == entries_.size()) return absl::UnauthenticatedError("the API key is not valid");
  absl::MutexLock lock(&mu_);
  Entry& e = entries_[found];
  const absl::Time since = now - kWindow;
  std::erase_if(e.requests, [&](absl::Time t) { return t <= since; });
  std::erase_if(e.tokens, [&](const std::pair<absl::Time, int64_t>& c) { return c.first <= since; });
  const ApiKeyLimits& limits = e.limits;
  if (limits.max_streams > 0 && e.streams >= limits.max_streams) {
    return absl::ResourceExhaustedError(Cat(
        "this API key has ", e.streams, " requests in flight, its limit (streams=", limits.max_streams, ")"));
  }
  if (limits.requests_per_minute > 0 &&
      static_cast<int64_t>(e.requests.size()) >= limits.requests_per_minute) {
    return absl::ResourceExhaustedError(
        Cat("this API key made ", e.requests.size(),
            " requests within the last minute, its limit (rpm=", limits.requests_per_minute, ")"));
  }
  if (limits.tokens_per_minute > 0) {
    int64_t used = 0;
    for (const auto& c : e.tokens) used += c.second;
    if (used >= limits.tokens_per_minute) {
      return absl::ResourceExhaustedError(
          Cat("this API key used ", used,
              " tokens within the last minute, its limit (tpm=", limits.tokens_per_minute, ")"));
    }
  }
  e.requests.push_back(now);
  ++e.streams;
  return std::unique_ptr<Admission>(new Admission(*this, found));
}

ApiKeys::Admission::~Admission() {
  absl::MutexLock lock(&keys_.mu_);
  --keys_.entries_[index_].streams;
}

void ApiKeys::Admission::Charge(int64_t tokens, absl::Time now) {
  if (tokens <= 0) return;
  absl::MutexLock lock(&keys_.mu_);
  keys_.entries_[index_].tokens.emplace_back(now, tokens);
}

int ApiKeys::Admission::line() const { return keys_.entries_[index_].line; }

}  // namespace tessera
