#include "worker/generate_command.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/npy.h"
#include "core/resource_usage.h"
#include "core/status_macros.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/gloo_communicator.h"
#include "parallel/parallel_config.h"
#include "parallel/staged_communicator.h"
#include "worker/model_runner.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

absl::Status ParseTokenIds(const std::string& text, std::vector<int32_t>& ids) {
  ids.clear();
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id) || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id '", part, "' in '", text, "' is not a non-negative integer"));
    }
    ids.push_back(id);
  }
  return absl::OkStatus();
}

namespace {

// What one rank's generation produced (the output rank's is the one that is printed).
struct RankRun {
  std::vector<Sequence> seqs;
  std::vector<float> logits_dump;  // the first prompt's logits, one row per generated token
  int total_prompt = 0;
  double load_s = 0, prefill_s = 0, decode_s = 0;
  int decode_tokens = 0;
  int64_t graph_steps = 0;  // decode steps that replayed a captured graph
};

absl::StatusOr<std::unique_ptr<GlooCommunicator>> JoinGroup(const std::string& store, const std::string& name,
                                                            int rank, int size) {
  GlooOptions gloo;
  gloo.group = name;
  gloo.rank = rank;
  gloo.size = size;
  gloo.store_dir = store;
  gloo.timeout = std::chrono::seconds(60);
  return GlooCommunicator::Create(gloo);
}

// Runs the whole generation on one rank: with tensor / pipeline parallelism every rank runs the same steps,
// the output rank samples and broadcasts the tokens to the others, and every rank takes KV blocks from its
// own BlockAllocator in the same order, so all agree on the block tables (both the coordinator's part in
// serving).
absl::StatusOr<RankRun> GenerateOnRank(const GenerateOptions& options, const ParallelConfig& parallel,
                                       int rank, const std::string& store) {
  const auto t_start = Clock::now();
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(options.model_dir));
  const ModelConfig& config = checkpoint.config();
  const int world = parallel.world_size();
  std::unique_ptr<Backend> backend;
  if (options.device == DeviceKind::kCpu) {
    CpuBackendOptions backend_options;
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    backend_options.num_threads = options.threads > 0 ? options.threads : std::max(1, cores / world);
    backend_options.linear.prefill_precision = options.prefill_precision;
    ASSIGN_OR_RETURN(backend, CpuBackend::Create(backend_options));
  } else {
    BackendOptions backend_options;
    backend_options.device = options.device;
    ASSIGN_OR_RETURN(const int gpus, CountDevices(options.device));
    backend_options.device_index = ParallelConfig::DeviceOfRank(rank, gpus);
    ASSIGN_OR_RETURN(backend, CreateBackend(backend_options));
  }
  // The TP and pipeline groups move the backend's tensors: directly on the CPU, staged through host memory on
  // a GPU (local ranks may share one GPU, which NCCL refuses). The world group moves host ids.
  auto device_group = [&](std::unique_ptr<GlooCommunicator> host) -> std::unique_ptr<Communicator> {
    if (options.device == DeviceKind::kCpu) return host;
    return std::make_unique<StagedCommunicator>(std::move(host), *backend);
  };
  std::unique_ptr<Communicator> tp_group, pp_group;
  std::unique_ptr<GlooCommunicator> world_group;
  if (world > 1) {
    const int tp_rank = parallel.TpRank(rank), pp_rank = parallel.PpRank(rank);
    if (parallel.tp_size() > 1) {
      ASSIGN_OR_RETURN(auto group, JoinGroup(store, parallel.TpGroupName(rank), tp_rank, parallel.tp_size()));
      tp_group = device_group(std::move(group));
    }
    if (parallel.pp_size() > 1) {
      ASSIGN_OR_RETURN(auto group, JoinGroup(store, parallel.PpGroupName(rank), pp_rank, parallel.pp_size()));
      pp_group = device_group(std::move(group));
    }
    ASSIGN_OR_RETURN(world_group, JoinGroup(store, "world", rank, world));
  }

  std::vector<int32_t> eos = config.eos_token_ids;
  for (int id : checkpoint.generation_config().eos_token_ids) eos.push_back(id);
  RankRun run;
  int num_blocks = 0;
  for (size_t i = 0; i < options.prompts.size(); ++i) {
    const auto& p = options.prompts[i];
    if (p.empty()) return absl::InvalidArgumentError(absl::StrCat("prompt ", i, " is empty"));
    for (int32_t id : p) {
      if (id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "prompt ", i, ": token id ", id, " is outside the vocabulary [0, ", config.vocab_size, ")"));
      }
    }
    int64_t context = static_cast<int64_t>(p.size()) + options.max_tokens;
    if (context > config.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt ", i, ": ", p.size(), " tokens + --max-tokens=", options.max_tokens,
                       " exceed max_position_embeddings=", config.max_position_embeddings));
    }
    run.total_prompt += static_cast<int>(p.size());
    num_blocks += static_cast<int>((context + 15) / 16);
  }
  const int num_seqs = static_cast<int>(options.prompts.size());
  ModelRunnerOptions runner_options;
  runner_options.model.max_num_tokens = std::max(run.total_prompt, num_seqs);
  runner_options.model.max_num_seqs = num_seqs;
  runner_options.model.parallel = &parallel;
  runner_options.model.rank = rank;
  runner_options.model.tp_group = tp_group.get();
  runner_options.pp_group = pp_group.get();
  runner_options.graph_max_batch = options.graph_max_batch;
  ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner,
                   ModelRunner::Create(checkpoint, *backend, runner_options));
  RETURN_IF_ERROR(runner->AllocateKvCache(num_blocks));
  RETURN_IF_ERROR(runner->CaptureGraphs());
  BlockAllocator blocks(num_blocks);  // every rank allocates the same ids in the same order
  const auto t_loaded = Clock::now();
  run.load_s = Seconds(t_start, t_loaded);

  run.seqs.resize(num_seqs);
  for (int i = 0; i < num_seqs; ++i) {
    run.seqs[i].id = static_cast<uint64_t>(i);
    run.seqs[i].tokens = options.prompts[i];
    run.seqs[i].num_prompt_tokens = static_cast<int>(options.prompts[i].size());
    run.seqs[i].sampling.temperature = options.temperature;
    run.seqs[i].sampling.seed = options.seed;
  }
  auto finished = [&](const Sequence& s) {
    int generated = static_cast<int>(s.tokens.size()) - s.num_prompt_tokens;
    return generated >= options.max_tokens ||
           (generated > 0 && std::find(eos.begin(), eos.end(), s.tokens.back()) != eos.end());
  };
  const bool output_rank = rank == parallel.output_rank();
  std::vector<float> row(config.vocab_size);
  std::vector<int32_t> sampled;
  Clock::time_point t_prefilled;
  for (int step = 0;; ++step) {
    std::vector<Sequence*> active;
    for (Sequence& s : run.seqs) {
      if (!finished(s)) active.push_back(&s);
    }
    if (active.empty()) break;
    for (Sequence* s : active) {
      RETURN_IF_ERROR(blocks.Cover(static_cast<int64_t>(s->tokens.size()), s->block_table));
    }
    ASSIGN_OR_RETURN(Tensor logits, runner->Forward(active));
    sampled.assign(active.size(), 0);
    if (output_rank) {
      if (!options.logits_out.empty() && active[0] == &run.seqs[0]) {
        backend->CopyToHost(row.data(), logits.data(), config.vocab_size * int64_t{4});
        run.logits_dump.insert(run.logits_dump.end(), row.begin(), row.end());
      }
      runner->SampleAndAppend(logits, active);
      for (size_t i = 0; i < active.size(); ++i) sampled[i] = active[i]->tokens.back();
    }
    if (world_group != nullptr) {
      Tensor ids(sampled.data(), DType::kI32, {static_cast<int64_t>(sampled.size())});
      RETURN_IF_ERROR(world_group->Broadcast(ids, parallel.output_rank()));
      if (!output_rank) {
        for (size_t i = 0; i < active.size(); ++i) active[i]->tokens.push_back(sampled[i]);
      }
    }
    if (step == 0) {
      t_prefilled = Clock::now();
    } else {
      run.decode_tokens += static_cast<int>(active.size());
    }
  }
  run.prefill_s = Seconds(t_loaded, t_prefilled);
  run.decode_s = Seconds(t_prefilled, Clock::now());
  run.graph_steps = runner->graph_steps();
  return run;
}

// Starts one process per rank other than `self` (fork, before any thread exists). Each runs GenerateOnRank
// and exits 0, or 1 after one line on stderr naming its rank.
std::vector<pid_t> StartOtherRanks(const GenerateOptions& options, const ParallelConfig& parallel, int self,
                                   const std::string& store) {
  std::vector<pid_t> pids;
  for (int rank = 0; rank < parallel.world_size(); ++rank) {
    if (rank == self) continue;
    pid_t pid = fork();
    if (pid == 0) {
      auto run = GenerateOnRank(options, parallel, rank, store);
      if (!run.ok()) std::fprintf(stderr, "rank %d: %s\n", rank, std::string(run.status().message()).c_str());
      std::fflush(nullptr);
      _exit(run.ok() ? 0 : 1);
    }
    if (pid > 0) pids.push_back(pid);
  }
  return pids;
}

}  // namespace

absl::Status RunGenerate(const GenerateOptions& options, std::ostream& out, std::ostream& err) {
  if (options.prompts.empty()) return absl::InvalidArgumentError("at least one prompt is required");
  if (options.max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max-tokens=", options.max_tokens, " must be positive"));
  }
  if (options.temperature < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--temperature=", options.temperature, " must be >= 0"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::Load(options.model_dir + "/config.json"));
  ASSIGN_OR_RETURN(ParallelConfig parallel,
                   ParallelConfig::Create({.num_layers = config.num_hidden_layers,
                                           .num_heads = config.num_attention_heads,
                                           .num_kv_heads = config.num_key_value_heads,
                                           .intermediate_size = config.intermediate_size,
                                           .vocab_size = config.vocab_size},
                                          options.tp, options.pp, options.pp_layers));
  // This process is the output rank; the other ranks are its children, meeting through files in `store`.
  const int self = parallel.output_rank();
  std::string store;
  std::vector<pid_t> children;
  if (parallel.world_size() > 1) {
    char dir[] = "/tmp/tessera-generate-XXXXXX";
    if (mkdtemp(dir) == nullptr) return absl::InternalError("cannot create a rendezvous directory in /tmp");
    store = dir;
    children = StartOtherRanks(options, parallel, self, store);
  }
  absl::StatusOr<RankRun> result = GenerateOnRank(options, parallel, self, store);
  bool children_ok = true;
  for (pid_t pid : children) {
    if (!result.ok()) kill(pid, SIGTERM);  // they would only wait for this rank until their timeout
    int status = 0;
    waitpid(pid, &status, 0);
    children_ok = children_ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  if (!store.empty()) std::filesystem::remove_all(store);
  if (!result.ok()) return result.status();
  if (!children_ok) return absl::UnavailableError("a rank process failed (its error is on stderr)");
  const RankRun& run = *result;

  for (const Sequence& s : run.seqs) {
    std::vector<int32_t> generated(s.tokens.begin() + s.num_prompt_tokens, s.tokens.end());
    nlohmann::json line = {{"token_ids", generated}};
    if (options.detokenize) {
      ASSIGN_OR_RETURN(std::string text, options.detokenize(generated));
      line["text"] = text;
    }
    out << line.dump() << "\n";
  }
  if (!options.logits_out.empty()) {
    int64_t rows = static_cast<int64_t>(run.logits_dump.size()) / config.vocab_size;
    RETURN_IF_ERROR(WriteNpyF32(options.logits_out, run.logits_dump, rows, config.vocab_size));
  }
  if (options.stats) {
    nlohmann::json stats = {
        {"load_s", run.load_s},
        {"prefill_tokens_per_s", run.total_prompt / std::max(1e-9, run.prefill_s)},
        {"decode_tokens_per_s",
         run.decode_tokens > 0 ? run.decode_tokens / std::max(1e-9, run.decode_s) : 0.0},
        {"graph_steps", run.graph_steps},
        {"peak_rss_bytes", PeakRssBytes()},
    };
    err << stats.dump() << "\n";
  }
  return absl::OkStatus();
}

}  // namespace tessera
