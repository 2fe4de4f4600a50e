// Structured logs: one JSON object per line, e.g.
//   {"ts":"2026-12-02T12:00:00.123Z","level":"info","component":"coordinator","rank":3,"request_id":"r-1","msg":"..."}
// Every long-running process (coordinator, worker) writes its log this way; `--log-level` drops the levels
// below it, and prompt text is logged only with `--log-requests` (LogRequests()). Thread-safe: lines from
// several threads never interleave.
#pragma once

#include <ostream>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tessera {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning" (or "warn"), "error". Errors: INVALID_ARGUMENT naming the value.
[[nodiscard]] absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);

// What a line is about; empty / negative fields are left out of the line.
struct LogContext {
  std::string_view component;   // "coordinator", "worker", "scheduler", "serve", ...
  int rank = -1;                // a worker's rank
  std::string_view request_id;  // the request the line is about
};

// The process-wide settings (set once at start-up, read by every thread).
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
void SetLogRequests(bool on);  // whether prompt and output text may be logged
bool LogRequests();

// One line as written: the JSON object and a newline. Exposed for tests.
std::string FormatLogLine(LogLevel level, const LogContext& context, std::string_view message);

// Writes FormatLogLine to `out` in one write when `level` passes the process's level; serialized across
// threads by one lock (a leaf: nothing is called under it).
void WriteLog(std::ostream& out, LogLevel level, const LogContext& context, std::string_view message);
// The same on stderr.
void Log(LogLevel level, const LogContext& context, std::string_view message);

}  // namespace tessera
