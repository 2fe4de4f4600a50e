// make-model, import-gguf and generate. generate turns --prompt text and --chat messages into ids with the
// coordinator's tokenizer and chat template, runs them on a local engine and decodes the output text.
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "coordinator/chat_template/chat_messages_file.h"
#include "coordinator/chat_template/model_chat_templates.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "core/status_macros.h"
#include "kernels/backend_factory.h"
#include "tools/commands.h"
#include "tools/generate_command.h"
#include "tools/token_ids.h"
#include "worker/checkpoint/gguf_import.h"
#include "worker/checkpoint/make_model.h"
#include "worker/checkpoint/model_presets.h"

namespace tessera::tools {
namespace {

struct GenerateArgs {
  GenerateOptions options;
  std::vector<std::string> prompt_ids, prompts, chats;
  std::shared_ptr<Tokenizer> tokenizer;
};

// Messages of a --chat file (a JSON list of {"role", "content"}) rendered with the model's template and
// encoded as apply_chat_template(tokenize=True) does (the template writes bos itself).
absl::StatusOr<std::vector<int32_t>> ChatPromptIds(const std::string& path, ModelChatTemplates& templates,
                                                   const Tokenizer& tokenizer) {
  ASSIGN_OR_RETURN(nlohmann::ordered_json messages, ReadChatMessagesFile(path));
  nlohmann::ordered_json request = {{"messages", messages}, {"add_generation_prompt", true}};
  auto prompt = templates.Render(request);
  if (!prompt.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", prompt.status().message()));
  return tokenizer.Encode(*prompt, /*add_special_tokens=*/false);
}

// Fills args.options.prompts from --prompt-ids, --prompt and --chat, in that order.
absl::Status CollectPrompts(GenerateArgs& args) {
  for (const std::string& text : args.prompt_ids) {
    std::vector<int32_t> ids;
    RETURN_IF_ERROR(ParseTokenIds(text, ids));
    args.options.prompts.push_back(std::move(ids));
  }
  if (args.prompts.empty() && args.chats.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(args.options.model_dir));
  args.tokenizer = std::move(tokenizer);
  for (const std::string& text : args.prompts) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, args.tokenizer->Encode(text, /*add_special_tokens=*/true));
    args.options.prompts.push_back(std::move(ids));
  }
  if (!args.chats.empty()) {
    ASSIGN_OR_RETURN(ModelChatTemplates templates, ModelChatTemplates::Load(args.options.model_dir));
    for (const std::string& path : args.chats) {
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, ChatPromptIds(path, templates, *args.tokenizer));
      args.options.prompts.push_back(std::move(ids));
    }
  }
  std::shared_ptr<Tokenizer> tokenizer_ref = args.tokenizer;
  args.options.detokenize = [tokenizer_ref](const std::vector<int32_t>& ids) {
    return tokenizer_ref->Decode(ids, /*skip_special_tokens=*/true);
  };
  return absl::OkStatus();
}

}  // namespace

void AddModelCommands(CLI::App& app, std::vector<Subcommand>& commands) {
  auto make = std::make_shared<MakeModelOptions>();
  std::string presets;
  for (const std::string& p : PresetNames()) presets += (presets.empty() ? "" : ", ") + p;
  CLI::App* make_cmd =
      app.add_subcommand("make-model", "Write a random-weight Hugging Face Llama checkpoint");
  auto* preset_opt = make_cmd->add_option("--preset", make->preset, "Model shape: " + presets);
  auto* config_opt =
      make_cmd->add_option("--config", make->config_path, "Use this config.json instead of a preset");
  preset_opt->excludes(config_opt);
  make_cmd->add_option("--out", make->out_dir, "Output directory")->required();
  make_cmd->add_option("--seed", make->seed, "Random seed")->capture_default_str();
  make_cmd->add_option("--tokenizer", make->tokenizer_dir,
                       "Copy tokenizer.json, tokenizer_config.json (and NOTICE / LICENSE) from DIR");
  make_cmd->add_flag("--config-only", make->config_only, "Write config.json and generation_config.json only");
  commands.push_back({make_cmd, [make] {
                        if (make->preset.empty() && make->config_path.empty()) {
                          std::cerr << "tessera make-model: one of --preset or --config is required\n";
                          return 2;
                        }
                        absl::Status s = MakeModel(*make);
                        return s.ok() ? 0 : Fail("make-model", s);
                      }});

  auto import = std::make_shared<ImportGgufOptions>();
  auto import_dtype = std::make_shared<std::string>("bf16");
  CLI::App* import_cmd =
      app.add_subcommand("import-gguf", "Convert a llama GGUF file into a Hugging Face snapshot directory");
  import_cmd->add_option("--gguf", import->gguf_path, "The GGUF file")->required();
  import_cmd->add_option("--out", import->out_dir, "Output directory (absent or empty)")->required();
  import_cmd->add_option("--dtype", *import_dtype, "Weight dtype: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  import_cmd->add_option("--max-shard-bytes", import->max_shard_bytes, "Largest safetensors file")
      ->capture_default_str();
  import_cmd->add_flag("--keep-quantized", import->keep_quantized,
                       "Keep Q8_0 / Q4_0 / Q4_1 weights as their blocks (CPU quantized kernels: less memory, "
                       "faster decode) instead of dequantizing them to --dtype");
  commands.push_back({import_cmd, [import, import_dtype] {
                        import->dtype = *import_dtype == "f32" ? DType::kF32 : DType::kBF16;
                        const auto start = std::chrono::steady_clock::now();
                        absl::StatusOr<ImportGgufResult> r = ImportGguf(*import);
                        if (!r.ok()) return Fail("import-gguf", r.status());
                        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
                        const nlohmann::ordered_json line = {
                            {"event", "imported"},
                            {"out", import->out_dir},
                            {"tensors", r->tensors},
                            {"quantized", r->quantized},
                            {"bytes", r->bytes},
                            {"shards", r->shards},
                            {"seconds", std::round(took.count() * 1000) / 1000}};
                        std::cout << line.dump(-1, ' ', false,
                                               nlohmann::ordered_json::error_handler_t::replace)
                                  << std::endl;
                        return 0;
                      }});

  auto gen = std::make_shared<GenerateArgs>();
  CLI::App* gen_cmd =
      app.add_subcommand("generate", "Generate from prompts run together as one batch on a local engine");
  gen_cmd->add_option("--model", gen->options.model_dir, "Hugging Face model directory")->required();
  gen_cmd->add_option("--prompt-ids", gen->prompt_ids, "Comma-separated token ids; repeat for more prompts");
  gen_cmd->add_option("--prompt", gen->prompts, "Prompt text (bos added); repeat for more prompts");
  gen_cmd->add_option("--chat", gen->chats,
                      "A JSON file holding a list of messages, rendered with the model's "
                      "chat template; repeat for more prompts");
  gen_cmd->add_option("--max-tokens", gen->options.max_tokens, "Tokens to generate per prompt")
      ->capture_default_str();
  gen_cmd->add_option("--temperature", gen->options.temperature, "0 = greedy")->capture_default_str();
  gen_cmd->add_option("--seed", gen->options.seed, "Sampling seed")->capture_default_str();
  gen_cmd->add_option("--tp", gen->options.tp, "Tensor-parallel ranks (local processes)")
      ->capture_default_str();
  gen_cmd->add_option("--pp", gen->options.pp, "Pipeline stages (local processes)")->capture_default_str();
  gen_cmd
      ->add_option("--pp-layers", gen->options.pp_layers, "Layers per stage, e.g. 10,11,11 (default: even)")
      ->delimiter(',');
  gen_cmd->add_option("--device", gen->options.device, "cpu, cuda or null")->capture_default_str();
  gen_cmd
      ->add_option("--threads", gen->options.threads,
                   "CPU threads per worker (0 = the cores split over them)")
      ->capture_default_str();
  gen_cmd->add_option("--logits-out", gen->options.logits_out,
                      "Write the first prompt's logits as float32 .npy");
  gen_cmd->add_flag("--stats", gen->options.stats, "Print timings as one JSON line on stderr");
  gen_cmd
      ->add_option("--graph-max-batch", gen->options.graph_max_batch,
                   "Decode steps of up to this many prompts replay captured graphs (-1: CUDA graphs on CUDA, "
                   "none on the CPU; 0: none; N on the CPU: recorded call lists, for testing)")
      ->capture_default_str();
  gen_cmd
      ->add_option(
          "--prefill-precision", gen->options.prefill_precision,
          "exact: prefill GEMMs keep fp32 activations (bf16 hi+lo split); bf16: round them (~2x faster)")
      ->capture_default_str();
  gen_cmd
      ->add_option("--quant-activations", gen->options.quant_activations,
                   "fp32: decode against quantized weights keeps fp32 activations (exact); int8: quantizes "
                   "them as llama.cpp does (faster on 4-bit weights; needs AVX-512 VNNI)")
      ->capture_default_str();
  commands.push_back(
      {gen_cmd, [gen] {
         if (gen->prompt_ids.empty() && gen->prompts.empty() && gen->chats.empty()) {
           std::cerr << "tessera generate: give at least one --prompt-ids, --prompt or --chat\n";
           return 2;
         }
         if (absl::Status s = CollectPrompts(*gen); !s.ok()) return Fail("generate", s);
         absl::Status s = RunGenerate(gen->options, std::cout, std::cerr);
         return s.ok() ? 0 : Fail("generate", s);
       }});
}

}  // namespace tessera::tools
