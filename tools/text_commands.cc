// tokenize, detokenize, chat-template: the model directory's tokenizer and chat template, no weights.
#include <iostream>
#include <memory>

#include "coordinator/chat_template_command.h"
#include "coordinator/tokenize_command.h"
#include "tools/commands.h"
#include "tools/token_ids.h"

namespace tessera::tools {

void AddTextCommands(CLI::App& app, std::vector<Subcommand>& commands) {
  auto tok = std::make_shared<TokenizeOptions>();
  CLI::App* tok_cmd = app.add_subcommand("tokenize", "Encode text with the model's tokenizer.json");
  tok_cmd->add_option("--model", tok->model_dir, "Model directory (tokenizer files only)")->required();
  auto* text = tok_cmd->add_option("--text", tok->text, "One text: prints {\"ids\": [...]}");
  auto* jsonl =
      tok_cmd->add_option("--input-jsonl", tok->input_jsonl, "Lines of {\"text\": ...}: one {\"ids\"} each");
  auto* file = tok_cmd->add_option("--file", tok->file, "A whole file as one text: prints {\"count\": N}");
  text->excludes(jsonl)->excludes(file);
  jsonl->excludes(file);
  tok_cmd->add_flag("--add-special-tokens", tok->add_special_tokens, "Add bos as the post-processor says");
  tok_cmd->add_flag("--stats", tok->stats, "Print load_s, encode_s and mb_per_s as JSON on stderr");
  commands.push_back(
      {tok_cmd, [tok, text, jsonl, file] {
         if (text->count() + jsonl->count() + file->count() != 1) {
           std::cerr << "tessera tokenize: give exactly one of --text, --input-jsonl, --file\n";
           return 2;
         }
         absl::Status s = RunTokenize(*tok, std::cout, std::cerr);
         return s.ok() ? 0 : Fail("tokenize", s);
       }});

  auto detok = std::make_shared<DetokenizeOptions>();
  auto ids = std::make_shared<std::string>();
  CLI::App* detok_cmd = app.add_subcommand("detokenize", "Decode token ids to text: prints {\"text\": ...}");
  detok_cmd->add_option("--model", detok->model_dir, "Model directory (tokenizer files only)")->required();
  detok_cmd->add_option("--ids", *ids, "Comma-separated token ids")->required();
  detok_cmd->add_flag("--skip-special-tokens", detok->skip_special_tokens, "Leave special tokens out");
  commands.push_back({detok_cmd, [detok, ids] {
                        if (absl::Status s = ParseTokenIds(*ids, detok->ids); !s.ok())
                          return Fail("detokenize", s);
                        absl::Status s = RunDetokenize(*detok, std::cout);
                        return s.ok() ? 0 : Fail("detokenize", s);
                      }});

  auto chat = std::make_shared<ChatTemplateOptions>();
  CLI::App* chat_cmd =
      app.add_subcommand("chat-template", "Render the model's chat template for each JSON line of a file");
  chat_cmd->add_option("--model", chat->model_dir, "Model directory (tokenizer_config.json)")->required();
  chat_cmd
      ->add_option("--input-jsonl", chat->input_jsonl,
                   "Lines of {\"messages\": [...], \"add_generation_prompt\": bool}: prints {\"prompt\"} or "
                   "{\"error\"}")
      ->required();
  commands.push_back({chat_cmd, [chat] {
                        absl::Status s = RunChatTemplate(*chat, std::cout);
                        return s.ok() ? 0 : Fail("chat-template", s);
                      }});
}

}  // namespace tessera::tools
