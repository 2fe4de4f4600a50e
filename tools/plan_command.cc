// plan: which tp x pp layouts of a model fit a GPU type (memory per GPU, roofline speed), the one to run, and
// the command line and Kubernetes overlay that run it. The arithmetic lives in tools/planner.h.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "tools/commands.h"
#include "tools/planner.h"
#include "tools/step_model.h"
#include "worker/checkpoint/model_presets.h"

namespace tessera::tools {
namespace {

struct PlanArgs {
  std::string model;
  std::string gpu;
  int gpus_per_node = 0;
  int nodes = 0;
  int max_model_len = 0;
  std::string kv_cache_dtype = "bf16";
  double gpu_memory_utilization = 0.90;
  double network_gbps = 400;
  int max_num_batched_tokens = 2048;
  int max_num_seqs = 256;
  int prompt_len = 2048;
  bool json = false;
  // --step: the step model (tools/step_model.h) of one step, before and after issue 17's decode redesign.
  bool step = false;
  int tp = 0;  // 0: the recommended layout's
  int pp = 0;  // 0: the recommended layout's (1 when --tp is given)
  int batch = 1;
  int tokens = 0;  // 0: a decode step (one token per sequence)
  int context = 1024;
};

constexpr const char* kRule =
    "the fewest nodes; then the largest tp (tensor parallelism inside a node divides every step's time, a "
    "pipeline stage adds a hop); then the fewest pipeline stages (GPUs left over serve another replica)";

// The model of --model: a directory holding config.json, a config.json file, or a make-model preset.
// `model_dir` is what the printed commands take as --model.
absl::StatusOr<ModelConfig> LoadModel(const std::string& arg, std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(arg, ec)) {
    model_dir = arg;
    return ModelConfig::Load((fs::path(arg) / "config.json").string());
  }
  if (fs::exists(arg, ec)) {
    model_dir = fs::path(arg).parent_path().string();
    if (model_dir.empty()) model_dir = ".";
    return ModelConfig::Load(arg);
  }
  absl::StatusOr<ModelConfig> preset = PresetConfig(arg);
  if (!preset.ok()) {
    return absl::NotFoundError(Cat("--model \"", arg,
                                   "\" is not a directory, a config.json file or a preset (",
                                   absl::StrJoin(PresetNames(), ", "), ")"));
  }
  model_dir = "MODEL_DIR";
  return preset;
}

bool SameShape(const ModelConfig& a, const ModelConfig& b) {
  return a.hidden_size == b.hidden_size && a.num_hidden_layers == b.num_hidden_layers &&
         a.num_attention_heads == b.num_attention_heads && a.num_key_value_heads == b.num_key_value_heads &&
         a.intermediate_size == b.intermediate_size && a.vocab_size == b.vocab_size;
}

// The overlays deploy/kubernetes/overlays holds (docs/plan.md): one LeaderWorkerSet group per replica.
struct Overlay {
  const char* name;
  const char* preset;  // the model shape it serves
  int size, tp, pp;
};
constexpr Overlay kOverlays[] = {{"llama-3.3-70b", "llama3-70b", 1, 8, 1},
                                 {"llama-3.1-405b", "llama3.1-405b", 2, 8, 2}};

std::string GiB(int64_t bytes) { return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1 << 30)); }
std::string MiBFlag(int64_t bytes) { return Cat(bytes >> 20, "MiB"); }

std::string LayoutName(const Layout& l) { return Cat("tp ", l.tp, " pp ", l.pp); }

// The command lines that run `l`: serve on one node; coordinator (node 0) and workers otherwise.
std::vector<std::string> Commands(const Plan& plan, const Layout& l, const std::string& model_dir) {
  const PlanOptions& o = plan.options;
  const std::string common =
      Cat("--device cuda --tp ", l.tp, " --pp ", l.pp, " --kv-cache-memory ", MiBFlag(l.kv_cache_bytes),
          " --max-model-len ", o.max_model_len, " --max-num-seqs ", o.max_num_seqs,
          " --max-num-batched-tokens ", o.max_num_batched_tokens);
  if (l.nodes == 1) return {Cat("tessera serve --model ", model_dir, " ", common)};
  std::vector<std::string> lines = {Cat("node 0: tessera coordinator --model ", model_dir, " ", common,
                                        " --local-ranks ", l.ranks_per_node,
                                        " --advertise-host NODE0_ADDRESS")};
  for (int node = 1; node < l.nodes; ++node) {
    lines.push_back(Cat("node ", node, ": tessera worker --coordinator NODE0_ADDRESS:50051 --device cuda",
                        " --local-ranks ", l.ranks_per_node, " --rank ", node * l.ranks_per_node,
                        " --listen-host NODE", node, "_ADDRESS"));
  }
  return lines;
}

// The Kubernetes part of the recommendation.
nlohmann::ordered_json Kubernetes(const Plan& plan, const Layout& l) {
  const Overlay* same_model = nullptr;
  for (const Overlay& overlay : kOverlays) {
    if (SameShape(plan.model, *PresetConfig(overlay.preset))) same_model = &overlay;
  }
  const std::string base = "deploy/kubernetes/overlays/";
  nlohmann::ordered_json k;
  nlohmann::ordered_json config = {{"TESSERA_KV_CACHE_MEMORY", MiBFlag(l.kv_cache_bytes)},
                                   {"TESSERA_MAX_MODEL_LEN", std::to_string(plan.options.max_model_len)}};
  if (same_model != nullptr && same_model->size == l.nodes && same_model->tp == l.tp &&
      same_model->pp == l.pp) {
    k["overlay"] = base + same_model->name;
    k["matches"] = true;
    k["command"] = "kubectl apply -k " + base + same_model->name;
    k["check"] = config;
    return k;
  }
  const Overlay& start = same_model != nullptr ? *same_model : (l.nodes == 1 ? kOverlays[0] : kOverlays[1]);
  k["overlay"] = base + start.name;
  k["matches"] = false;
  nlohmann::ordered_json change = {{"size", l.nodes},
                                   {"TESSERA_TP", std::to_string(l.tp)},
                                   {"TESSERA_PP", std::to_string(l.pp)},
                                   {"TESSERA_LOCAL_RANKS", std::to_string(l.ranks_per_node)},
                                   {"nvidia.com/gpu", l.ranks_per_node}};
  if (same_model == nullptr) change["TESSERA_MODEL"] = "/models/<your model directory>";
  change.update(config);
  k["change"] = change;
  return k;
}

nlohmann::ordered_json LayoutJson(const Layout& l) {
  nlohmann::ordered_json decode = nlohmann::ordered_json::array();
  for (const DecodePoint& d : l.decode) {
    decode.push_back({{"batch", d.batch},
                      {"token_latency_ms", d.token_latency_s * 1e3},
                      {"tokens_per_s", d.tokens_per_s}});
  }
  return {{"event", "layout"},
          {"tp", l.tp},
          {"pp", l.pp},
          {"gpus", l.tp * l.pp},
          {"nodes", l.nodes},
          {"ranks_per_node", l.ranks_per_node},
          {"stage_layers", l.stage_layers},
          {"weight_bytes", l.weight_bytes},
          {"activation_bytes", l.activation_bytes},
          {"kv_cache_bytes", l.kv_cache_bytes},
          {"kv_bytes_per_token", l.kv_bytes_per_token},
          {"kv_tokens", l.kv_tokens},
          {"max_batch", l.max_batch},
          {"decode", decode},
          {"prefill_ms", l.prefill_s * 1e3}};
}

void PrintText(const Plan& plan, const std::string& model_arg, const std::string& model_dir,
               std::ostream& out) {
  const ModelConfig& m = plan.model;
  const PlanOptions& o = plan.options;
  const GpuSpec& g = o.gpu;
  const int64_t usable = static_cast<int64_t>(static_cast<double>(g.memory_bytes) * o.gpu_memory_utilization);
  out << absl::StrFormat(
      "model   %s: %.2f B parameters (%s in bf16); %d layers, hidden %d, %d heads, %d KV heads, "
      "head_dim %d, MLP %d, vocab %d%s\n",
      model_arg, plan.num_parameters / 1e9, GiB(plan.num_parameters * 2), m.num_hidden_layers, m.hidden_size,
      m.num_attention_heads, m.num_key_value_heads, m.head_dim, m.intermediate_size, m.vocab_size,
      m.tie_word_embeddings ? ", tied embeddings" : "");
  out << absl::StrFormat(
      "gpu     %s x %d per node, up to %d node(s): %s (%s usable at %.2f), HBM %.2f TB/s, %.0f "
      "TFLOPS bf16 dense, NVLink %.0f GB/s per direction; network %.0f GB/s per GPU\n",
      g.description, o.gpus_per_node, o.nodes, GiB(g.memory_bytes), GiB(usable), o.gpu_memory_utilization,
      g.hbm_bytes_per_s / 1e12, g.bf16_flops / 1e12, g.nvlink_bytes_per_s / 1e9, o.network_bytes_per_s / 1e9);
  out << absl::StrFormat(
      "context --max-model-len %d, KV cache %s; decode with %d tokens of context per sequence\n\n",
      o.max_model_len, o.kv_cache_dtype == KvCacheDtype::kFp8 ? "fp8" : "bf16", o.prompt_len);

  out << absl::StrFormat("Memory per GPU (the largest over ranks; KV cache: the smallest)\n");
  out << absl::StrFormat("%-12s %5s %5s %10s %12s %10s %11s %9s\n", "layout", "GPUs", "nodes", "weights",
                         "activations", "KV cache", "KV tokens", Cat("seqs@", o.max_model_len));
  int not_fitting = 0;
  for (const Layout& l : plan.layouts) {
    if (!l.fits) {
      ++not_fitting;
      continue;
    }
    out << absl::StrFormat("%-12s %5d %5d %10s %12s %10s %11d %9d\n", LayoutName(l), l.tp * l.pp, l.nodes,
                           GiB(l.weight_bytes), GiB(l.activation_bytes), GiB(l.kv_cache_bytes), l.kv_tokens,
                           l.max_batch);
  }
  if (not_fitting > 0)
    out << "(" << not_fitting << " other valid layouts leave no room for one full-length sequence)\n";

  out << absl::StrFormat(
      "\nRoofline (a lower bound on time): prefill of one %d-token prompt; decode time per token "
      "and tokens/s at batch B\n",
      o.prompt_len);
  for (const Layout& l : plan.layouts) {
    if (!l.fits) continue;
    std::string line = absl::StrFormat("%-12s prefill %7.1f ms  ", LayoutName(l), l.prefill_s * 1e3);
    for (const DecodePoint& d : l.decode) {
      absl::StrAppend(&line, absl::StrFormat(" | B=%d %.2f ms %.0f tok/s", d.batch, d.token_latency_s * 1e3,
                                             d.tokens_per_s));
    }
    out << line << "\n";
  }

  const Layout& best = plan.layouts[plan.recommended];
  out << absl::StrFormat("\nRecommended: %s on %d node(s), %d GPUs each\n", LayoutName(best), best.nodes,
                         best.ranks_per_node);
  out << "  rule: " << kRule << "\n";
  for (const std::string& line : Commands(plan, best, model_dir)) out << "  run:  " << line << "\n";
  const nlohmann::ordered_json k = Kubernetes(plan, best);
  std::vector<std::string> values;
  if (k["matches"].get<bool>()) {
    out << "  kubernetes: " << k["command"].get<std::string>() << "\n";
    for (const auto& [key, value] : k["check"].items())
      values.push_back(Cat(key, "=", value.get<std::string>()));
    out << "    (check in its tessera-config: " << absl::StrJoin(values, ", ") << ")\n";
  } else {
    for (const auto& [key, value] : k["change"].items()) {
      values.push_back(Cat(key, "=", value.is_string() ? value.get<std::string>() : value.dump()));
    }
    out << "  kubernetes: start from " << k["overlay"].get<std::string>() << " and set "
        << absl::StrJoin(values, ", ") << "\n";
  }
  if (o.kv_cache_dtype == KvCacheDtype::kFp8) {
    out << "  note: tessera serve stores the KV cache in bf16 today; the fp8 figures are what an fp8 cache "
           "would "
           "hold\n";
  }
}

// --step: the step model's table (or with --json one object per design) for one step of tp x pp.
int RunStep(const PlanArgs& a, const ModelConfig& model, const GpuSpec& gpu, int tp, int pp) {
  const StepShape shape = {.tp = tp,
                           .pp = pp,
                           .batch = a.batch,
                           .tokens = a.tokens > 0 ? a.tokens : a.batch,
                           .context = a.context,
                           .graph_max_batch = std::min(256, a.max_num_seqs)};
  const StepHardware hw = StepHardwareFor(gpu);
  std::vector<StepCost> costs;
  for (StepDesign design : {StepDesign::kBefore, StepDesign::kAfter}) {
    absl::StatusOr<StepCost> cost = ModelStep(model, shape, design, hw);
    if (!cost.ok()) return Fail("plan", cost.status());
    costs.push_back(*cost);
  }
  if (a.json) {
    for (const StepCost& c : costs) {
      nlohmann::ordered_json launches;
      for (int k = 0; k < kNumLaunchKinds; ++k)
        launches[LaunchKindName(static_cast<LaunchKind>(k))] = c.launches.count[k];
      const nlohmann::ordered_json j = {{"event", "step"},
                                        {"design", StepDesignName(c.design)},
                                        {"tp", tp},
                                        {"pp", pp},
                                        {"pp_rank", c.pp_rank},
                                        {"batch", shape.batch},
                                        {"tokens", shape.tokens},
                                        {"context", shape.context},
                                        {"graph", c.graph},
                                        {"launches", launches},
                                        {"graph_segments", c.graph_segments},
                                        {"host_round_trips", c.host_round_trips},
                                        {"hbm_bytes", c.hbm_bytes},
                                        {"nvlink_bytes", c.nvlink_bytes},
                                        {"pp_send_bytes", c.pp_send_bytes},
                                        {"flops", c.flops},
                                        {"estimated_us", c.estimated_us},
                                        {"hbm_us", c.hbm_us},
                                        {"compute_us", c.compute_us},
                                        {"launch_us", c.launch_us},
                                        {"round_trip_us", c.round_trip_us},
                                        {"collective_us", c.collective_us},
                                        {"pipeline_us", c.pipeline_us},
                                        {"hbm_roofline_fraction", c.RooflineFraction()}};
      std::cout << j.dump() << "\n";
    }
    return 0;
  }
  std::cout << absl::StrFormat(
      "step model of %s on %s, tp %d pp %d, per rank: TP rank 0 of stage %d (the slowest; %lld layers). A "
      "model, not a measurement (docs/plan.md, \"The step model\")\n",
      a.model, gpu.description, tp, pp, costs[1].pp_rank, static_cast<long long>(costs[1].layers));
  std::cout << StepTableHeader();
  for (const StepCost& c : costs) std::cout << StepTableRow(StepLabel(shape), c);
  std::cout << absl::StrFormat("speed-up %.2fx\n", costs[0].estimated_us / costs[1].estimated_us);
  return 0;
}

int RunPlan(const PlanArgs& a) {
  std::string model_dir;
  absl::StatusOr<ModelConfig> model = LoadModel(a.model, model_dir);
  if (!model.ok()) return Fail("plan", model.status());
  absl::StatusOr<GpuSpec> gpu = FindGpu(a.gpu);
  if (!gpu.ok()) return Fail("plan", gpu.status());
  absl::StatusOr<KvCacheDtype> kv_dtype = ParseKvCacheDtype(a.kv_cache_dtype);
  if (!kv_dtype.ok()) return Fail("plan", kv_dtype.status());
  PlanOptions options;
  options.gpu = *gpu;
  options.gpus_per_node = a.gpus_per_node;
  options.nodes = a.nodes;
  options.max_model_len = a.max_model_len;
  options.kv_cache_dtype = *kv_dtype;
  options.gpu_memory_utilization = a.gpu_memory_utilization;
  options.network_bytes_per_s = a.network_gbps * 1e9 / 8;
  options.max_num_batched_tokens = a.max_num_batched_tokens;
  options.max_num_seqs = a.max_num_seqs;
  options.prompt_len = a.prompt_len;
  absl::StatusOr<Plan> plan = MakePlan(*model, options);
  if (a.step && a.tp > 0) return RunStep(a, *model, *gpu, a.tp, a.pp > 0 ? a.pp : 1);
  if (!plan.ok())
    return Fail("plan", absl::Status(plan.status().code(), Cat(a.model, ": ", plan.status().message())));
  if (a.step) {
    const Layout& best = plan->layouts[plan->recommended];
    return RunStep(a, *model, *gpu, best.tp, a.pp > 0 ? a.pp : best.pp);
  }
  if (!a.json) {
    PrintText(*plan, a.model, model_dir, std::cout);
    return 0;
  }
  for (const Layout& l : plan->layouts) {
    if (l.fits) std::cout << LayoutJson(l).dump() << "\n";
  }
  const Layout& best = plan->layouts[plan->recommended];
  nlohmann::ordered_json rec = {{"event", "recommendation"},
                                {"tp", best.tp},
                                {"pp", best.pp},
                                {"nodes", best.nodes},
                                {"ranks_per_node", best.ranks_per_node},
                                {"max_model_len", plan->options.max_model_len},
                                {"kv_cache_memory", MiBFlag(best.kv_cache_bytes)},
                                {"rule", kRule},
                                {"commands", Commands(*plan, best, model_dir)},
                                {"kubernetes", Kubernetes(*plan, best)}};
  std::cout << rec.dump() << std::endl;
  return 0;
}

}  // namespace

void AddPlanCommand(CLI::App& app, std::vector<Subcommand>& commands) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand(
      "plan",
      "Every tp x pp layout of a model that fits a GPU type, its roofline speed, and how to run the best");
  std::string gpus;
  for (const GpuSpec& g : KnownGpus()) gpus += (gpus.empty() ? "" : ", ") + g.name;
  cmd->add_option(
         "--model", a->model,
         "Model directory, its config.json, or a preset (" + absl::StrJoin(PresetNames(), ", ") + ")")
      ->required();
  cmd->add_option("--gpu", a->gpu, "GPU type: " + gpus)->required();
  cmd->add_option("--gpus-per-node", a->gpus_per_node, "GPUs in each node")->required();
  cmd->add_option("--nodes", a->nodes, "Most nodes to use (0: the fewest on which some layout fits)")
      ->capture_default_str();
  cmd->add_option("--max-model-len", a->max_model_len,
                  "Longest sequence (0: the model's max_position_embeddings)")
      ->capture_default_str();
  cmd->add_option("--kv-cache-dtype", a->kv_cache_dtype, "bf16 or fp8")->capture_default_str();
  cmd->add_option("--gpu-memory-utilization", a->gpu_memory_utilization,
                  "Share of each GPU's memory for weights, activations and KV cache")
      ->capture_default_str();
  cmd->add_option("--network-gbps", a->network_gbps,
                  "Network between nodes, Gb/s per GPU (InfiniBand NDR: one 400 Gb/s NIC per GPU)")
      ->capture_default_str();
  cmd->add_option("--max-num-batched-tokens", a->max_num_batched_tokens, "Tokens in one step (as serve)")
      ->capture_default_str();
  cmd->add_option("--max-num-seqs", a->max_num_seqs, "Sequences in one step (as serve)")
      ->capture_default_str();
  cmd->add_option("--prompt-len", a->prompt_len,
                  "Prompt of the prefill figure; context of the decode figures")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "One JSON object per line: the layouts, then the recommendation");
  cmd->add_flag("--step", a->step,
                "Instead of the layouts: the step model of one step, before and after the decode redesign");
  cmd->add_option("--tp", a->tp, "--step: tensor parallelism (0: the recommended layout's)")
      ->capture_default_str();
  cmd->add_option("--pp", a->pp, "--step: pipeline stages (0: the recommended layout's, 1 with --tp)")
      ->capture_default_str();
  cmd->add_option("--batch", a->batch, "--step: sequences in the step")->capture_default_str();
  cmd->add_option("--tokens", a->tokens,
                  "--step: new tokens in the step (0: one per sequence, a decode step)")
      ->capture_default_str();
  cmd->add_option("--context", a->context, "--step: tokens each sequence holds before the step")
      ->capture_default_str();
  commands.push_back({cmd, [a] { return RunPlan(*a); }});
}

}  // namespace tessera::tools
