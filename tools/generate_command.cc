#include "tools/generate_command.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "absl/synchronization/mutex.h"
#include "coordinator/chat_template/model_chat_templates.h"
#include "coordinator/engine.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "core/npy.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "tools/local_engine.h"

namespace tessera::tools {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// When the batch's requests got their first token and when the last one ended.
class BatchProgress {
 public:
  explicit BatchProgress(int size) : size_(size) {}

  void FirstToken() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (++first_tokens_ == size_) prefilled_ = Clock::now();
  }
  void Done(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = status;
    if (++done_ == size_) finished_ = Clock::now();
  }
  // Waits for every request; returns the first error.
  absl::Status Wait() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](BatchProgress* self)
             ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) { return self->done_ == self->size_; },
        this));
    return status_;
  }
  Clock::time_point prefilled() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return prefilled_;
  }
  Clock::time_point finished() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return finished_;
  }

 private:
  const int size_;
  absl::Mutex mu_;
  int first_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  Clock::time_point prefilled_ ABSL_GUARDED_BY(mu_);
  Clock::time_point finished_ ABSL_GUARDED_BY(mu_);
};

// One prompt's request. The engine calls it one event at a time; its tokens are read after
// BatchProgress::Wait.
class PromptObserver final : public GenerationObserver {
 public:
  explicit PromptObserver(BatchProgress& progress) : progress_(progress) {}

  bool OnToken(int, int32_t token) override {
    tokens.push_back(token);
    if (tokens.size() == 1) progress_.FirstToken();
    return false;
  }
  void OnLogits(int, const float* values, int64_t size) override {
    logits.insert(logits.end(), values, values + size);
  }
  void OnChoiceEnd(int, FinishReason) override {}
  void OnDone(const absl::Status& status) override { progress_.Done(status); }

  std::vector<int32_t> tokens;
  std::vector<float> logits;  // with return_logits: one vocabulary row per token

 private:
  BatchProgress& progress_;
};

// The engine's settings for this batch: every prompt prefilled in one step, decoded together, a KV cache of
// just what they need, workers on this node only.
absl::StatusOr<CoordinatorOptions> BatchEngineOptions(const GenerateOptions& o) {
  ServeArgs args;
  args.model_dir = o.model_dir;
  args.tp = o.tp;
  args.pp = o.pp;
  args.pp_layers = o.pp_layers;
  args.device = o.device;
  args.host = "127.0.0.1";
  args.grpc_port = 0;
  args.threads_per_worker = o.threads;
  args.prefill_precision = o.prefill_precision;
  args.quant_activations = o.quant_activations;
  args.graph_max_batch = o.graph_max_batch;
  args.comm_timeout = "60s";
  ASSIGN_OR_RETURN(CoordinatorOptions options, MakeCoordinatorOptions(args));
  RETURN_IF_ERROR(ParallelConfig::Create(options.shape, o.tp, o.pp, o.pp_layers).status());
  const ServedModel& model = options.model;
  int64_t total_prompt = 0, blocks = 0;
  for (size_t i = 0; i < o.prompts.size(); ++i) {
    const std::vector<int32_t>& p = o.prompts[i];
    if (p.empty()) return absl::InvalidArgumentError(Cat("prompt ", i, " is empty"));
    for (int32_t id : p) {
      if (id >= model.vocab_size) {
        return absl::InvalidArgumentError(
            Cat("prompt ", i, ": token id ", id, " is outside the vocabulary [0, ", model.vocab_size, ")"));
      }
    }
    const int64_t context = static_cast<int64_t>(p.size()) + o.max_tokens;
    if (context > model.max_position_embeddings) {
      return absl::InvalidArgumentError(
          Cat("prompt ", i, ": ", p.size(), " tokens + --max-tokens=", o.max_tokens,
              " exceed max_position_embeddings=", model.max_position_embeddings));
    }
    total_prompt += static_cast<int64_t>(p.size());
    blocks += (context + 15) / 16;
  }
  const int num_prompts = static_cast<int>(o.prompts.size());
  options.listen_address = "127.0.0.1:0";
  options.single_node = true;
  options.kv_cache_memory = 0;  // each worker's default budget, of which the batch takes what it needs
  options.max_kv_blocks = static_cast<int>(blocks);
  options.scheduler.max_num_seqs = num_prompts;
  options.scheduler.max_num_batched_tokens = static_cast<int>(std::max<int64_t>(total_prompt, num_prompts));
  options.scheduler.max_queued_requests = num_prompts;
  return options;
}

struct BatchRun {
  std::vector<std::shared_ptr<PromptObserver>> prompts;
  double load_s = 0, prefill_s = 0, decode_s = 0;
  int64_t total_prompt = 0, decode_tokens = 0, graph_steps = 0, peak_rss_bytes = 0;
};

// Brings the engine up, runs the batch on it and collects the engine's figures.
absl::Status RunBatch(const GenerateOptions& o, LocalEngine& engine, Clock::time_point start, BatchRun& run) {
  RETURN_IF_ERROR(engine.BringUp());
  const Clock::time_point ready = Clock::now();
  run.load_s = Seconds(start, ready);
  const ServedModel& model = engine.coordinator().options().model;
  BatchProgress progress(static_cast<int>(o.prompts.size()));
  std::vector<GenerationRequest> requests;
  std::vector<std::shared_ptr<GenerationObserver>> observers;
  for (size_t i = 0; i < o.prompts.size(); ++i) {
    GenerationRequest& r = requests.emplace_back();
    r.id = Cat("prompt-", i);
    r.prompt = o.prompts[i];
    r.max_tokens = o.max_tokens;
    r.sampling.temperature = o.temperature;
    r.sampling.seed = o.seed;
    r.stop_token_ids = model.eos_token_ids;
    r.return_logits = i == 0 && !o.logits_out.empty();
    run.total_prompt += static_cast<int64_t>(r.prompt.size());
    run.prompts.push_back(std::make_shared<PromptObserver>(progress));
    observers.push_back(run.prompts.back());
  }
  const Clock::time_point submitted = Clock::now();
  RETURN_IF_ERROR(engine.coordinator().scheduler().SubmitBatch(std::move(requests), std::move(observers)));
  RETURN_IF_ERROR(progress.Wait());
  run.prefill_s = Seconds(submitted, progress.prefilled());
  run.decode_s = Seconds(progress.prefilled(), progress.finished());
  for (const auto& p : run.prompts) run.decode_tokens += std::max<int64_t>(0, std::ssize(p->tokens) - 1);
  run.graph_steps = engine.coordinator().scheduler().stats().graph_steps;
  ASSIGN_OR_RETURN(std::vector<control::v1::Ack> drained,
                   engine.coordinator().DrainWorkers(std::chrono::seconds(60)));
  for (const control::v1::Ack& ack : drained)
    run.peak_rss_bytes = std::max(run.peak_rss_bytes, ack.peak_rss_bytes());
  return absl::OkStatus();
}

absl::Status WriteOutput(const GenerateOptions& o, int vocab_size, const BatchRun& run, std::ostream& out,
                         std::ostream& err) {
  for (const auto& p : run.prompts) {
    nlohmann::json line = {{"token_ids", p->tokens}};
    if (o.detokenize) {
      ASSIGN_OR_RETURN(std::string text, o.detokenize(p->tokens));
      line["text"] = text;
    }
    out << line.dump() << "\n";
  }
  if (!o.logits_out.empty()) {
    const std::vector<float>& rows = run.prompts[0]->logits;
    RETURN_IF_ERROR(WriteNpyF32(o.logits_out, rows, std::ssize(rows) / vocab_size, vocab_size));
  }
  if (o.stats) {
    err << nlohmann::json{{"load_s", run.load_s},
                          {"prefill_tokens_per_s", run.total_prompt / std::max(1e-9, run.prefill_s)},
                          {"decode_tokens_per_s",
                           run.decode_tokens > 0 ? run.decode_tokens / std::max(1e-9, run.decode_s) : 0.0},
                          {"graph_steps", run.graph_steps},
                          {"peak_rss_bytes", run.peak_rss_bytes}}
               .dump()
        << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunGenerate(const GenerateOptions& o, std::ostream& out, std::ostream& err) {
  if (o.prompts.empty()) return absl::InvalidArgumentError("at least one prompt is required");
  if (o.max_tokens <= 0)
    return absl::InvalidArgumentError(Cat("--max-tokens=", o.max_tokens, " must be positive"));
  if (o.temperature < 0)
    return absl::InvalidArgumentError(Cat("--temperature=", o.temperature, " must be >= 0"));
  const Clock::time_point start = Clock::now();
  ASSIGN_OR_RETURN(CoordinatorOptions options, BatchEngineOptions(o));
  std::string dir = (std::filesystem::temp_directory_path() / "tessera-generate-XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) return absl::InternalError(Cat("cannot create a directory like ", dir));
  absl::Status status;
  BatchRun run;
  {
    std::ofstream log(dir + "/coordinator.log");
    absl::StatusOr<std::unique_ptr<LocalEngine>> engine = LocalEngine::Start(
        options, /*local_ranks=*/-1, {"--log-file", dir + "/workers.log"}, nullptr, nullptr, log);
    status = engine.ok() ? RunBatch(o, **engine, start, run) : engine.status();
    if (engine.ok()) (*engine)->Shutdown(std::chrono::milliseconds(3000));
  }
  if (!status.ok()) {
    return absl::Status(status.code(), Cat(status.message(), " (the engine's logs are in ", dir, ")"));
  }
  std::filesystem::remove_all(dir);
  return WriteOutput(o, options.model.vocab_size, run, out, err);
}

}  // namespace tessera::tools
