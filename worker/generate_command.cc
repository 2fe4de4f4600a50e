#include "worker/generate_command.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/backend_factory.h"
#include "kernels/core/npy.h"
#include "kernels/core/status_macros.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/model_runner.h"

namespace tessera {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int64_t PeakRssBytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

}  // namespace

absl::Status ParsePrefillPrecision(const std::string& text, PrefillPrecision& precision) {
  if (text == "exact") {
    precision = PrefillPrecision::kSplitBf16;
  } else if (text == "bf16") {
    precision = PrefillPrecision::kBf16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--prefill-precision '", text, "' is not exact or bf16"));
  }
  return absl::OkStatus();
}

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

absl::Status RunGenerate(const GenerateOptions& options, std::ostream& out, std::ostream& err) {
  if (options.prompts.empty())
    return absl::InvalidArgumentError("--prompt-ids: at least one prompt is required");
  if (options.max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max-tokens=", options.max_tokens, " must be positive"));
  }
  if (options.temperature < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--temperature=", options.temperature, " must be >= 0"));
  }
  const auto t_start = Clock::now();
  ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(options.model_dir));
  const ModelConfig& config = checkpoint.config();
  std::unique_ptr<Backend> backend;
  if (options.device == DeviceKind::kCpu) {
    CpuBackendOptions backend_options;
    backend_options.num_threads = options.threads;
    backend_options.linear.prefill_precision = options.prefill_precision;
    ASSIGN_OR_RETURN(backend, CpuBackend::Create(backend_options));
  } else {
    BackendOptions backend_options;
    backend_options.device = options.device;
    ASSIGN_OR_RETURN(backend, CreateBackend(backend_options));
  }

  std::vector<int32_t> eos = config.eos_token_ids;
  for (int id : checkpoint.generation_config().eos_token_ids) eos.push_back(id);

  int total_prompt = 0, num_blocks = 0;
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
    total_prompt += static_cast<int>(p.size());
    num_blocks += static_cast<int>((context + 15) / 16);
  }
  const int num_seqs = static_cast<int>(options.prompts.size());
  ModelRunnerOptions runner_options;
  runner_options.model.max_num_tokens = std::max(total_prompt, num_seqs);
  runner_options.model.max_num_seqs = num_seqs;
  runner_options.num_kv_blocks = num_blocks;
  ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner,
                   ModelRunner::Create(checkpoint, *backend, runner_options));
  const auto t_loaded = Clock::now();

  std::vector<Sequence> seqs(num_seqs);
  for (int i = 0; i < num_seqs; ++i) {
    seqs[i].tokens = options.prompts[i];
    seqs[i].num_prompt_tokens = static_cast<int>(options.prompts[i].size());
    seqs[i].sampling.temperature = options.temperature;
    seqs[i].sampling.seed = options.seed;
  }
  auto finished = [&](const Sequence& s) {
    int generated = static_cast<int>(s.tokens.size()) - s.num_prompt_tokens;
    return generated >= options.max_tokens ||
           (generated > 0 && std::find(eos.begin(), eos.end(), s.tokens.back()) != eos.end());
  };

  std::vector<float> logits_dump;
  std::vector<float> row(config.vocab_size);
  Clock::time_point t_prefilled;
  int decode_tokens = 0;
  for (int step = 0;; ++step) {
    std::vector<Sequence*> active;
    for (Sequence& s : seqs) {
      if (!finished(s)) active.push_back(&s);
    }
    if (active.empty()) break;
    ASSIGN_OR_RETURN(Tensor logits, runner->Forward(active));
    if (!options.logits_out.empty() && active[0] == &seqs[0]) {
      backend->CopyToHost(row.data(), logits.data(), config.vocab_size * int64_t{4});
      logits_dump.insert(logits_dump.end(), row.begin(), row.end());
    }
    runner->SampleAndAppend(logits, active);
    if (step == 0) {
      t_prefilled = Clock::now();
    } else {
      decode_tokens += static_cast<int>(active.size());
    }
  }
  const auto t_done = Clock::now();

  for (const Sequence& s : seqs) {
    std::vector<int32_t> generated(s.tokens.begin() + s.num_prompt_tokens, s.tokens.end());
    nlohmann::json line = {{"token_ids", generated}};
    if (options.detokenize) {
      ASSIGN_OR_RETURN(std::string text, options.detokenize(generated));
      line["text"] = text;
    }
    out << line.dump() << "\n";
  }
  if (!options.logits_out.empty()) {
    int64_t rows = static_cast<int64_t>(logits_dump.size()) / config.vocab_size;
    RETURN_IF_ERROR(WriteNpyF32(options.logits_out, logits_dump, rows, config.vocab_size));
  }
  if (options.stats) {
    double decode_s = Seconds(t_prefilled, t_done);
    nlohmann::json stats = {
        {"load_s", Seconds(t_start, t_loaded)},
        {"prefill_tokens_per_s", total_prompt / std::max(1e-9, Seconds(t_loaded, t_prefilled))},
        {"decode_tokens_per_s", decode_tokens > 0 ? decode_tokens / std::max(1e-9, decode_s) : 0.0},
        {"peak_rss_bytes", PeakRssBytes()},
    };
    err << stats.dump() << "\n";
  }
  return absl::OkStatus();
}

}  // namespace tessera
