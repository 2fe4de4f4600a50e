// The tessera executable: parses the command line and dispatches to a subcommand. Exit codes: 0 success,
// 1 error (one line on stderr naming the culprit), 2 bad usage.
#include <CLI/CLI.hpp>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/checkpoint/make_model.h"
#include "worker/checkpoint/model_presets.h"
#include "worker/generate_command.h"

namespace {

int Fail(const std::string& command, const absl::Status& status) {
  std::cerr << "tessera " << command << ": " << status.message() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tessera: tensor x pipeline parallel inference for Llama-family models"};
  app.require_subcommand(0, 1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");

  // make-model
  tessera::MakeModelOptions make;
  std::string presets;
  for (const std::string& p : tessera::PresetNames()) presets += (presets.empty() ? "" : ", ") + p;
  CLI::App* make_cmd = app.add_subcommand("make-model", "Write a random-weight Hugging Face Llama checkpoint");
  auto* preset_opt = make_cmd->add_option("--preset", make.preset, "Model shape: " + presets);
  auto* config_opt = make_cmd->add_option("--config", make.config_path, "Use this config.json instead of a preset");
  preset_opt->excludes(config_opt);
  make_cmd->add_option("--out", make.out_dir, "Output directory")->required();
  make_cmd->add_option("--seed", make.seed, "Random seed")->capture_default_str();
  make_cmd->add_option("--tokenizer", make.tokenizer_dir, "Copy tokenizer.json, tokenizer_config.json (and NOTICE / LICENSE) from DIR");
  make_cmd->add_flag("--config-only", make.config_only, "Write config.json and generation_config.json only");

  // generate
  tessera::GenerateOptions gen;
  std::vector<std::string> prompt_ids;
  CLI::App* gen_cmd = app.add_subcommand("generate", "Generate from token-id prompts, batched, on the CPU");
  gen_cmd->add_option("--model", gen.model_dir, "Hugging Face model directory")->required();
  gen_cmd->add_option("--prompt-ids", prompt_ids, "Comma-separated token ids; repeat for more prompts")
      ->required()
      ->take_all();
  gen_cmd->add_option("--max-tokens", gen.max_tokens, "Tokens to generate per prompt")->capture_default_str();
  gen_cmd->add_option("--temperature", gen.temperature, "0 = greedy")->capture_default_str();
  gen_cmd->add_option("--seed", gen.seed, "Sampling seed")->capture_default_str();
  gen_cmd->add_option("--threads", gen.threads, "CPU threads (0 = all cores)")->capture_default_str();
  gen_cmd->add_option("--logits-out", gen.logits_out, "Write the first prompt's logits as float32 .npy");
  gen_cmd->add_flag("--stats", gen.stats, "Print timings as one JSON line on stderr");
  std::string prefill_precision = "exact";
  gen_cmd
      ->add_option("--prefill-precision", prefill_precision,
                   "exact: prefill GEMMs keep fp32 activations (bf16 hi+lo split); bf16: round them (~2x faster)")
      ->capture_default_str();

  CLI::App* help_cmd = app.add_subcommand("help", "Show this help");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (app.got_subcommand(help_cmd) || app.get_subcommands().empty()) {
    std::cout << app.help();
    return app.get_subcommands().empty() ? 2 : 0;
  }
  if (app.got_subcommand(make_cmd)) {
    if (make.preset.empty() && make.config_path.empty()) {
      std::cerr << "tessera make-model: one of --preset or --config is required\n";
      return 2;
    }
    absl::Status s = tessera::MakeModel(make);
    return s.ok() ? 0 : Fail("make-model", s);
  }
  if (app.got_subcommand(gen_cmd)) {
    if (absl::Status s = tessera::ParsePrefillPrecision(prefill_precision, gen.prefill_precision); !s.ok()) {
      return Fail("generate", s);
    }
    for (const std::string& text : prompt_ids) {
      std::vector<int32_t> ids;
      if (absl::Status s = tessera::ParseTokenIds(text, ids); !s.ok()) return Fail("generate", s);
      gen.prompts.push_back(std::move(ids));
    }
    absl::Status s = tessera::RunGenerate(gen, std::cout, std::cerr);
    return s.ok() ? 0 : Fail("generate", s);
  }
  return 0;
}
