#include "core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace tessera {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> g_log_requests{false};

absl::Mutex& WriteMutex() {
  static absl::Mutex* mu = new absl::Mutex();
  return *mu;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

// A JSON string literal (quotes included); bytes that are not valid UTF-8 pass through, control characters
// are escaped.
void AppendJsonString(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

std::string Timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm utc;
  gmtime_r(&seconds, &utc);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &utc);
  return absl::StrFormat("%s.%03dZ", buf, millis);
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warning" || lower == "warn") return LogLevel::kWarning;
  if (lower == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(absl::StrCat("log level '", absl::string_view(name.data(), name.size()),
                                                 "' is not debug, info, warning or error"));
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }
void SetLogRequests(bool on) { g_log_requests.store(on); }
bool LogRequests() { return g_log_requests.load(); }

std::string FormatLogLine(LogLevel level, const LogContext& context, std::string_view message) {
  std::string line = "{\"ts\":\"" + Timestamp() + "\",\"level\":\"" + LevelName(level) + "\"";
  if (!context.component.empty()) {
    line += ",\"component\":";
    AppendJsonString(line, context.component);
  }
  if (context.rank >= 0) absl::StrAppend(&line, ",\"rank\":", context.rank);
  if (!context.request_id.empty()) {
    line += ",\"request_id\":";
    AppendJsonString(line, context.request_id);
  }
  line += ",\"msg\":";
  AppendJsonString(line, message);
  line += "}\n";
  return line;
}

void WriteLog(std::ostream& out, LogLevel level, const LogContext& context, std::string_view message) {
  if (static_cast<int>(level) < g_level.load()) return;
  const std::string line = FormatLogLine(level, context, message);
  absl::MutexLock lock(&WriteMutex());
  out << line << std::flush;
}

void Log(LogLevel level, const LogContext& context, std::string_view message) {
  WriteLog(std::cerr, level, context, message);
}

}  // namespace tessera
