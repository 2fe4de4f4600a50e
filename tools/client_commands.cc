// complete: a client of a running Tessera server's gRPC API.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "absl/time/time.h"
#include "coordinator/complete_command.h"
#include "tools/commands.h"
#include "tools/token_ids.h"

namespace tessera::tools {
namespace {

// The flags of `tessera complete` as parsed; CompleteOptions' optional fields are filled from those given.
struct CompleteArgs {
  CompleteOptions options;
  std::string prompt, prompt_ids, chat, timeout;
  int max_tokens = 0, top_k = 0;
  float temperature = 0, top_p = 1;
  uint64_t seed = 0;
  CLI::Option *prompt_opt = nullptr, *prompt_ids_opt = nullptr, *chat_opt = nullptr,
              *max_tokens_opt = nullptr, *temperature_opt = nullptr, *top_k_opt = nullptr,
              *top_p_opt = nullptr, *seed_opt = nullptr, *timeout_opt = nullptr;
};

// Fills args.options from the flags given. Returns 0, or 2 after a line on stderr for a bad value.
int ResolveCompleteArgs(CompleteArgs& args) {
  CompleteOptions& o = args.options;
  if (args.prompt_opt->count() + args.prompt_ids_opt->count() + args.chat_opt->count() != 1) {
    std::cerr << "tessera complete: give exactly one of --prompt, --prompt-ids and --chat\n";
    return 2;
  }
  if (args.chat_opt->count()) {
    absl::StatusOr<nlohmann::ordered_json> messages = ReadChatMessagesFile(args.chat);
    absl::StatusOr<std::vector<ChatMessageText>> chat =
        messages.ok() ? ChatMessagesAsText(*messages, args.chat) : messages.status();
    if (!chat.ok()) {
      std::cerr << "tessera complete: --chat: " << chat.status().message() << "\n";
      return chat.status().code() == absl::StatusCode::kNotFound ? 1 : 2;
    }
    o.chat = *std::move(chat);
  }
  if (args.prompt_opt->count()) o.prompt = args.prompt;
  if (args.prompt_ids_opt->count()) {
    std::vector<int32_t> ids;
    if (absl::Status s = ParseTokenIds(args.prompt_ids, ids); !s.ok()) {
      std::cerr << "tessera complete: --prompt-ids: " << s.message() << "\n";
      return 2;
    }
    o.prompt_ids = std::move(ids);
  }
  if (args.max_tokens_opt->count()) o.max_tokens = args.max_tokens;
  if (args.temperature_opt->count()) o.temperature = args.temperature;
  if (args.top_k_opt->count()) o.top_k = args.top_k;
  if (args.top_p_opt->count()) o.top_p = args.top_p;
  if (args.seed_opt->count()) o.seed = args.seed;
  if (args.timeout_opt->count()) {
    absl::Duration timeout;
    if (!absl::ParseDuration(args.timeout, &timeout) || timeout <= absl::ZeroDuration()) {
      std::cerr << "tessera complete: --timeout \"" << args.timeout
                << "\" is not a positive duration (e.g. 500ms, 30s, 2m)\n";
      return 2;
    }
    o.timeout = timeout;
  }
  return 0;
}

}  // namespace

void AddCompleteCommand(CLI::App& app, std::vector<Subcommand>& commands) {
  auto args = std::make_shared<CompleteArgs>();
  CompleteOptions& o = args->options;
  CLI::App* cmd = app.add_subcommand("complete", "Ask a running Tessera server for a completion (gRPC)");
  cmd->add_option("--server", o.server, "The server's gRPC address, HOST:PORT")->required();
  cmd->add_option("--model", o.model, "Model name (default: the served model)");
  cmd->add_option("--api-key", o.api_key, "The server's API key (prefer the environment variable: a flag shows in ps)")
      ->envname("TESSERA_API_KEY");
  cmd->add_option("--tls-ca", o.tls_ca, "TLS: the PEM CA bundle the server's certificate chains to")
      ->envname("TESSERA_TLS_CA");
  args->prompt_opt = cmd->add_option("--prompt", args->prompt, "Prompt text (the server adds bos)");
  args->prompt_ids_opt =
      cmd->add_option("--prompt-ids", args->prompt_ids, "Comma-separated prompt token ids");
  args->chat_opt =
      cmd->add_option("--chat", args->chat,
                      "A JSON file holding a list of {\"role\", \"content\"} messages, rendered by "
                      "the server with the model's chat template");
  args->prompt_opt->excludes(args->prompt_ids_opt);
  args->max_tokens_opt =
      cmd->add_option("--max-tokens", args->max_tokens, "Tokens to generate (default: up to the context)");
  args->temperature_opt = cmd->add_option("--temperature", args->temperature,
                                          "0 = greedy (default: the model's generation_config.json)");
  args->top_k_opt = cmd->add_option("--top-k", args->top_k, "0 = off");
  args->top_p_opt = cmd->add_option("--top-p", args->top_p, "In (0, 1]");
  args->seed_opt = cmd->add_option("--seed", args->seed, "Sampling seed (default: random)");
  cmd->add_option("--stop", o.stop, "A stop string, not returned; repeat for more");
  cmd->add_flag("--stream", o.stream, "Stream the text as it is generated");
  cmd->add_flag(
      "--json", o.json,
      "Print {\"token_ids\": [...], \"text\": ..., \"finish_reason\": \"stop\"|\"length\"} per choice");
  args->timeout_opt =
      cmd->add_option("--timeout", args->timeout, "Deadline of the call, e.g. 30s (default: none)");
  commands.push_back({cmd, [args] {
                        if (int code = ResolveCompleteArgs(*args); code != 0) return code;
                        return RunComplete(args->options, std::cout, std::cerr);
                      }});
}

}  // namespace tessera::tools
