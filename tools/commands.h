// The subcommands of the tessera executable. Each Add* function registers its subcommands on `app` and
// appends how to run them; the options they parse live as long as the returned closures.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera::tools {

struct Subcommand {
  CLI::App* app;
  std::function<int()> run;  // exit code: 0 success, 1 error (one line on stderr), 2 bad usage
};

// make-model, import-gguf, generate.
void AddModelCommands(CLI::App& app, std::vector<Subcommand>& commands);
// serve, coordinator, worker.
void AddServeCommands(CLI::App& app, std::vector<Subcommand>& commands);
// tokenize, detokenize, chat-template.
void AddTextCommands(CLI::App& app, std::vector<Subcommand>& commands);
// complete: a client of a running server.
void AddCompleteCommand(CLI::App& app, std::vector<Subcommand>& commands);
// bench: a load generator against a running server (tools/bench_command.h).
void AddBenchCommand(CLI::App& app, std::vector<Subcommand>& commands);
// plan: the tp x pp layouts of a model on a GPU type and how to run the best (tools/planner.h).
void AddPlanCommand(CLI::App& app, std::vector<Subcommand>& commands);

// Prints "tessera COMMAND: message" on stderr and returns 1.
int Fail(const std::string& command, const absl::Status& status);

}  // namespace tessera::tools
