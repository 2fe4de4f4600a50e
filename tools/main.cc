// The tessera executable: parses the command line and dispatches to a subcommand. Exit codes: 0 success,
// 1 error (one line on stderr naming the culprit), 2 bad usage.
#include <iostream>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  // Debian's Abseil is built with deadlock detection on: every absl::Mutex (gRPC's included) would update a
  // lock graph, a few percent of the gRPC front end's CPU. TSan builds check lock order themselves.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"Tessera: tensor x pipeline parallel inference for Llama-family models"};
  app.require_subcommand(0, 1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");
  std::vector<tessera::tools::Subcommand> commands;
  tessera::tools::AddModelCommands(app, commands);
  tessera::tools::AddServeCommands(app, commands);
  tessera::tools::AddTextCommands(app, commands);
  tessera::tools::AddCompleteCommand(app, commands);
  tessera::tools::AddBenchCommand(app, commands);
  tessera::tools::AddPlanCommand(app, commands);
  CLI::App* help_cmd = app.add_subcommand("help", "Show this help");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  for (const auto& command : commands) {
    if (app.got_subcommand(command.app)) return command.run();
  }
  std::cout << app.help();
  return app.got_subcommand(help_cmd) ? 0 : 2;
}
