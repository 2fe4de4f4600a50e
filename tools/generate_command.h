// `tessera generate`: a client of the serving engine in one command. It starts a LocalEngine (a coordinator
// and its tp x pp `tessera worker` processes, exactly as `tessera serve` does), submits every prompt as a
// request in one batch, prints one JSON line per prompt and stops the engine.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::tools {

struct GenerateOptions {
  std::string model_dir;
  std::vector<std::vector<int32_t>> prompts;  // token ids, one list per prompt
  int max_tokens = 16;
  float temperature = 0.0f;  // 0 = greedy
  uint64_t seed = 0;
  std::string device = "cpu";
  int tp = 1;
  int pp = 1;
  std::vector<int> pp_layers;               // layers per stage; empty = even
  int threads = 0;                          // CPU threads per worker, 0 = the cores split over the workers
  std::string logits_out;                   // .npy of the first prompt's logits, [generated, vocab]
  bool stats = false;                       // one JSON line of the engine's figures on `err`
  std::string prefill_precision = "exact";  // or "bf16" (CPU prefill GEMMs)
  std::string quant_activations = "fp32";   // or "int8" (CPU decode against quantized weights)
  int graph_max_batch = -1;  // decode graphs up to this batch; -1: the device's default, 0: never
  // When set, each output line also carries "text": the generated ids turned into text.
  std::function<absl::StatusOr<std::string>(const std::vector<int32_t>&)> detokenize;
};

// Writes `{"token_ids": [...]}` (plus "text" with a detokenizer) per prompt to `out`, in order; a prompt's
// generation stops after an eos id (config.json's and generation_config.json's, included in the output) or
// max_tokens tokens. With `stats`, one line on `err`: load_s (start to ready), prefill_tokens_per_s,
// decode_tokens_per_s, graph_steps (decode steps that replayed a captured graph) and peak_rss_bytes (the
// largest worker's). The engine's and workers' logs go to files in a temporary directory, kept and named in
// the error when the run fails. Errors: INVALID_ARGUMENT for a bad option, an impossible split (naming the
// numbers) or a prompt id outside the vocabulary (naming the prompt); the model's files' errors; the engine's
// (a worker's failure names its rank).
[[nodiscard]] absl::Status RunGenerate(const GenerateOptions& options, std::ostream& out, std::ostream& err);

}  // namespace tessera::tools
