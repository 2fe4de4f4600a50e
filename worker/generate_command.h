// `tessera generate`: loads a checkpoint on a backend (the CPU, or a CUDA GPU) and generates from token-id
// prompts run together as one batch; prints one JSON line per prompt.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/linear.h"

namespace tessera {

struct GenerateOptions {
  std::string model_dir;
  std::vector<std::vector<int32_t>> prompts;  // token ids, one list per prompt
  int max_tokens = 16;
  float temperature = 0.0f;  // 0 = greedy
  uint64_t seed = 0;
  DeviceKind device = DeviceKind::kCpu;
  // Tensor x pipeline parallelism over tp * pp local processes (Gloo; this process is the output rank).
  int tp = 1;
  int pp = 1;
  std::vector<int> pp_layers;  // layers per stage; empty = even
  int threads = 0;             // CPU threads, 0 = all cores
  std::string logits_out;      // .npy of the first prompt's logits, [generated, vocab]
  bool stats = false;          // one JSON line of timings on `err`
  // How prefill-sized GEMMs treat fp32 activations: kSplitBf16 is exact to ~3e-6 (the default), kBf16 rounds
  // them to bf16 (about twice as fast, errors ~1e-3).
  PrefillPrecision prefill_precision = PrefillPrecision::kSplitBf16;
  // Decode steps replay captured graphs up to this batch (ModelRunnerOptions::graph_max_batch; -1: the
  // device's default, 0: never).
  int graph_max_batch = -1;
  // When set, each output line also carries "text": the generated ids turned into text by this function (the
  // caller's tokenizer; the worker library has none).
  std::function<absl::StatusOr<std::string>(const std::vector<int32_t>&)> detokenize;
};

// Runs the generation (on tp * pp processes when asked: the others are forked children that exit with it).
// Writes `{"token_ids": [...]}` (plus "text" when options.detokenize is set) per prompt
// to `out`, in order; generation of a prompt
// stops after an eos id (config.json's and generation_config.json's) or max_tokens tokens. Errors: the
// checkpoint's, INVALID_ARGUMENT for a bad option, an impossible split (naming the numbers) or a prompt id
// outside the vocabulary (naming the prompt); UNAVAILABLE when a rank fails.
[[nodiscard]] absl::Status RunGenerate(const GenerateOptions& options, std::ostream& out, std::ostream& err);

// Parses "128000,9906,11" into ids. Errors: INVALID_ARGUMENT naming the bad element.
[[nodiscard]] absl::Status ParseTokenIds(const std::string& text, std::vector<int32_t>& ids);

}  // namespace tessera
